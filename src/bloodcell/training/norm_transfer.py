"""Start a group-norm network from a trained batch-norm one without losing what it knew.

Batch norm standardises each channel with statistics learnt on the training lab's images;
group norm standardises each image by its own. Copying the weights across is not enough:
the same convolutions then see differently scaled activations and the network starts near
chance. :func:`match_norm_statistics` sets each group-norm layer's scale and shift, in
network order, so that on a sample of training images its output has the per-channel mean
and spread the batch-norm network's layer has there, each network fed the images prepared
its own way. Training then starts close to the old network's answers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bloodcell.core.preprocess import PreprocessConfig, normalize

#: images used to match the statistics (a stratified-enough random sample of the training set)
SAMPLE_IMAGES = 128


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer being matched has run."""


def _norm_names(model: nn.Module, reference: nn.Module) -> list[str]:
    """The group-norm layers of ``model`` whose same-named layer in ``reference`` is a batch norm."""
    theirs = dict(reference.named_modules())
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.GroupNorm) and isinstance(theirs.get(name), nn.BatchNorm2d)]


def _channel_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-5)


def _pre_activation(module: nn.Module) -> nn.Module:
    """The part of a norm layer whose input is the normalised, scaled output before the activation.

    timm's ``GroupNormAct`` and ``BatchNormAct2d`` apply dropout, then the activation, after
    normalising: the (identity) dropout's input is the layer's affine output.
    """
    return getattr(module, "drop", module)


@torch.no_grad()
def _reference_moments(reference: nn.Module, names: list[str], x: torch.Tensor) -> dict:
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    modules = dict(reference.named_modules())
    hooks = []
    for name in names:
        def keep(_m, args, _out, name=name):
            found[name] = _channel_moments(args[0])
        hooks.append(_pre_activation(modules[name]).register_forward_hook(keep))
    try:
        reference(x)
    finally:
        for h in hooks:
            h.remove()
    return found


@torch.no_grad()
def _own_moments(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen = {}

    def stop(_m, args, _out):
        seen["m"] = _channel_moments(args[0])
        raise _Reached

    hook = _pre_activation(layer).register_forward_hook(stop)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        hook.remove()
    return seen["m"]


@torch.no_grad()
def match_norm_statistics(model: nn.Module, pre: PreprocessConfig, reference: nn.Module,
                          reference_pre: PreprocessConfig, images: np.ndarray, seed: int = 0) -> int:
    """Set every group-norm layer of ``model`` whose same-named layer in ``reference`` is a batch
    norm (of the same width) to reproduce that layer's per-channel output mean and spread on a
    sample of ``images`` (``uint8`` NHWC, the training images).

    Returns the number of layers matched (0 when there are none: no group norm, or a group-norm
    reference whose weights were copied as they are).
    """
    names = _norm_names(model, reference)
    if not names:
        return 0
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(SAMPLE_IMAGES, len(images)), replace=False))
    sample = np.asarray(images[pick])
    was_training = model.training, reference.training
    model.eval()
    reference.eval()
    try:
        targets = _reference_moments(reference, names, torch.from_numpy(normalize(sample, reference_pre)))
        x = torch.from_numpy(normalize(sample, pre))
        layers = dict(model.named_modules())
        for name in names:
            layer = layers[name]
            layer.weight.fill_(1.0)
            layer.bias.zero_()
            mean, std = _own_moments(model, layer, x)
            want_mean, want_std = targets[name]
            layer.weight.copy_(want_std / std)
            layer.bias.copy_(want_mean - layer.weight * mean)
    finally:
        model.train(was_training[0])
        reference.train(was_training[1])
    return len(names)
