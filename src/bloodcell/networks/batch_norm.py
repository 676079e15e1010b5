"""Re-estimating a network's batch-norm statistics on images, without training it.

A network's batch-norm layers keep running means and variances of what they saw in training.
After its weights are averaged with another network's (a soup) or when it meets another lab's
images, those statistics no longer describe its inputs; passing images through it once in
training mode, with every other weight frozen, measures them again.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bloodcell.core.preprocess import normalize, tta_views


def batch_norm_layers(net: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``net`` that keep running statistics."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batch_norm(net: nn.Module, images: np.ndarray, preprocess, batch: int = 64, progress: bool = False) -> int:
    """Replace every batch-norm layer's running statistics by those of the eight views of prepared
    ``uint8`` images (NHWC), averaged over all batches; returns how many layers changed. Every other
    layer runs as in inference (dropout off), and the network is left in eval mode; ``progress``
    shows a bar on stderr."""
    layers = batch_norm_layers(net)
    net.eval()
    if not layers:
        return 0
    momentum = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch seen
        m.train()
    try:
        starts = range(0, len(images), batch)
        for start in tqdm(starts, desc="batch-norm statistics", unit="batch", disable=not progress, leave=False):
            for view in tta_views(images[start : start + batch]):
                net(normalize(torch.from_numpy(view), preprocess).contiguous())
    finally:
        for m in layers:
            m.momentum = momentum[m]
            m.eval()
    return len(layers)
