"""Grad-CAM heatmaps: which part of the image drove a prediction.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a late
convolution by the spatially averaged gradient of the target class score and
keeps the positive part. The layer is the last convolution whose output is at
least :data:`MIN_SIDE` pixels wide: at the small inputs a CPU model uses, the
very last convolution of an EfficientNet sees a 4x4 grid, too coarse to tell
the cell from its neighbours. For an ensemble the module tree's layers are
searched, so the map explains the member that holds the chosen layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from bloodcell.core.errors import ModelError
from bloodcell.networks.batches import tensor_batches
from bloodcell.networks.loading import LoadedModel
from bloodcell.prediction.torch_backend import _check_images

#: Smallest feature-map side Grad-CAM explains from, when the network has a layer that wide.
MIN_SIDE = 7


def target_layer(module: nn.Module, image_size: int | None = None, min_side: int = MIN_SIDE) -> nn.Module:
    """The Grad-CAM layer: the last ``Conv2d`` whose output is at least ``min_side`` wide.

    Without ``image_size`` (or when no layer is that wide), the last ``Conv2d``.
    Output sizes are read from one forward pass of a blank image.

    Raises
    ------
    ModelError
        When the network has no convolution to explain.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(
            f"{type(module).__name__} has no convolution layer, so Grad-CAM cannot explain its predictions. "
            "Use a convolutional architecture, or classify without explanations."
        )
    if image_size is None:
        return convs[-1]
    sides: dict[int, int] = {}
    hooks = [c.register_forward_hook(lambda _m, _i, out, k=k: sides.__setitem__(k, min(out.shape[-2:])))
             for k, c in enumerate(convs)]
    try:
        device = next(module.parameters()).device
        with torch.no_grad():
            module(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    wide = [k for k in range(len(convs)) if sides.get(k, 0) >= min_side]
    return convs[wide[-1]] if wide else convs[-1]


def gradcam(
    loaded: LoadedModel, images: np.ndarray, targets: np.ndarray | list[int] | None = None, batch_size: int = 16
) -> np.ndarray:
    """Grad-CAM maps (N, S, S) in ``[0, 1]`` for prepared uint8 images.

    ``targets`` are class indices to explain; by default the predicted class.
    """
    _check_images(images, loaded.preprocess.image_size)
    module = loaded.module
    size = loaded.preprocess.image_size
    layer = target_layer(module, size)
    device = next(module.parameters()).device
    saved: dict[str, torch.Tensor] = {}

    def keep(_m, _inp, out):
        out.retain_grad()
        saved["act"] = out

    handle = layer.register_forward_hook(keep)
    maps = []
    try:
        for start, x in zip(range(0, len(images), batch_size), tensor_batches(images, loaded.preprocess, batch_size, device)):
            with torch.enable_grad():
                x.requires_grad_(True)
                logits = module(x)
                idx = (
                    logits.argmax(1)
                    if targets is None
                    else torch.as_tensor(np.asarray(targets)[start : start + len(x)], device=device)
                )
                score = logits.gather(1, idx.view(-1, 1)).sum()
                module.zero_grad(set_to_none=True)
                score.backward()
            act, grad = saved["act"], saved["act"].grad
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * act).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            flat = cam.flatten(1)
            lo, hi = flat.min(1)[0].view(-1, 1, 1), flat.max(1)[0].view(-1, 1, 1)
            maps.append(((cam - lo) / (hi - lo).clamp_min(1e-8)).detach().cpu())
    finally:
        handle.remove()
        module.zero_grad(set_to_none=True)
    return torch.cat(maps).numpy().astype(np.float32) if maps else np.zeros((0, size, size), np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a heatmap over an RGB uint8 image (resized to the image if needed)."""
    h, w = image.shape[:2]
    if cam.shape != (h, w):
        cam = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)) / 255.0
    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)
