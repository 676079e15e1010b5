"""Batches of prepared images as normalized tensors: the one input path of every batched forward
pass (inference, test-time augmentation, Grad-CAM, out-of-distribution features)."""

from __future__ import annotations

import numpy as np
import torch

from bloodcell.core.preprocess import normalize


def tensor_batches(images: np.ndarray, preprocess, batch_size: int, device):
    """Normalized float32 NCHW batches of prepared uint8 images, on ``device``."""
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        yield normalize(batch, preprocess)
