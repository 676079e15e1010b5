"""Where a network is cut for adaptation: a frozen front, a tunable back, and the final linear layer.

For EfficientNet and MobileNet-style networks (timm's ``conv_stem``, ``bn1``,
``blocks``, ``conv_head``, ``bn2``, ``global_pool``, ``classifier``) the back is
the last :data:`TUNED_STAGES` stages of ``blocks`` plus the head convolution;
for any other architecture the back is empty and only the final linear layer
is adapted. Batch-norm layers keep the statistics they were trained with (the
network runs in eval mode), so the front is a fixed function of the image and
its output can be computed once per image and view.
"""

from __future__ import annotations

import torch
from torch import nn

from bloodcell.training.warmstart import classifier_name

#: Stages of ``blocks`` tuned on EfficientNet/MobileNet-style networks.
TUNED_STAGES = 2
_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


class _Front(nn.Module):
    """The frozen part: stem and the first stages (EfficientNet-style), or all but the classifier."""

    def __init__(self, net: nn.Module, cut: int | None, head: nn.Linear):
        super().__init__()
        self.net, self.cut, self.head = net, cut, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut is not None:
            x = self.net.bn1(self.net.conv_stem(x))
            for block in self.net.blocks[: self.cut]:
                x = block(x)
            return x
        seen = []
        handle = self.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
        try:
            self.net(x)
        finally:
            handle.remove()
        return seen[0].flatten(1)


class _Back(nn.Module):
    """The tuned part up to the penultimate features (identity when nothing but the classifier is tuned)."""

    def __init__(self, net: nn.Module, cut: int | None):
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut is None:
            return x
        for block in self.net.blocks[self.cut :]:
            x = block(x)
        return self.net.global_pool(self.net.bn2(self.net.conv_head(x))).flatten(1)

    def tuned_parameters(self) -> list[nn.Parameter]:
        if self.cut is None:
            return []
        parts = [*self.net.blocks[self.cut :], self.net.conv_head, self.net.bn2]
        return [p for part in parts for p in part.parameters()]


def split_network(net: nn.Module, num_classes: int) -> tuple[_Front, _Back, nn.Linear, str]:
    """Cut ``net`` into ``(front, back, classifier, description)``; ``classifier(back(front(x)))`` equals ``net(x)``.

    The modules share ``net``'s parameters, so tuning them tunes ``net``.
    """
    head = net.get_submodule(classifier_name(net, num_classes))
    staged = all(hasattr(net, name) for name in _PARTS) and isinstance(net.blocks, nn.Sequential)
    staged = staged and getattr(net, "classifier", None) is head and len(net.blocks) > TUNED_STAGES
    if staged:
        cut = len(net.blocks) - TUNED_STAGES
        where = f"the last {TUNED_STAGES} of {len(net.blocks)} stages, the head convolution and the classifier"
    else:
        cut, where = None, "the final linear layer"
    return _Front(net, cut, head), _Back(net, cut), head, where


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight rotations by multiples of 90 degrees, each plain and mirrored, of an NCHW batch."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (2, 3))
        out += [r, r.flip(3)]
    return out
