"""Jittered copies of a lab's few fitting cells, so adaptation sees more than the cells themselves.

Each copy is a random crop of 75-100% of the prepared image's area (aspect 0.9-1.1) resized
back to its side, with brightness, contrast and saturation each scaled within +-20% and the hue
turned within +-0.03 of a full turn: the small differences in framing, focus of the staining and
lamp between one lab's slides. The copies are drawn once, seeded, before the network's frozen
part runs, and each is then seen in the eight views of :func:`~bloodcell.adaptation.network.dihedral_views`.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2 as T

#: Share of the image area a jittered crop keeps, and its aspect ratios.
CROP_AREA, CROP_ASPECT = (0.75, 1.0), (0.9, 1.1)
#: Brightness, contrast, saturation and hue jitter.
COLOUR = (0.2, 0.2, 0.2, 0.03)


def jittered_copies(images: np.ndarray, labels: np.ndarray, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The prepared ``uint8`` images (NHWC) followed by ``copies - 1`` jittered copies of each, and their labels.

    ``copies = 1`` returns the inputs unchanged.
    """
    if copies <= 1 or len(images) == 0:
        return images, labels
    side = images.shape[1]
    jitter = T.Compose([T.RandomResizedCrop(side, scale=CROP_AREA, ratio=CROP_ASPECT, antialias=True),
                        T.ColorJitter(*COLOUR)])
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = [images]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(copies - 1):
            out.append(torch.stack([jitter(image) for image in x]).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out), np.concatenate([labels] * copies)
