"""The four custom CNNs of the PBC classification study, of increasing depth.

The study's second model is ``basic_cnn`` trained with random flips and
rotations; that is a training recipe (``configs/basic_cnn_augmented.yaml``),
not another network. Every network ends in an adaptive average pool, so any
input size works; outputs are logits (softmax is applied at inference).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bloodcell.networks.registry import register_model

_MEAN = (0.5, 0.5, 0.5)
_STD = (0.5, 0.5, 0.5)


def _conv(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of adaptive average pooling along one axis.

    Row ``i`` averages inputs ``floor(i * n_in / n_out)`` to
    ``ceil((i + 1) * n_in / n_out) - 1``, PyTorch's adaptive pooling windows.
    """
    i = torch.arange(n_out)
    start = (i * n_in) // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    j = torch.arange(n_in)
    m = ((j[None] >= start[:, None]) & (j[None] < end[:, None])).float()
    return m / m.sum(1, keepdim=True)


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(size)`` that also exports to ONNX when the input is not a multiple of ``size``.

    The ONNX exporter only handles adaptive pooling with equal windows; for
    other inputs the same average is taken as ``P_h @ x @ P_w.T`` with
    :func:`pool_matrix`.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            # exported models have a fixed input size, so the sizes are constants in the trace
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % self.size == 0 and w % self.size == 0:
            return F.adaptive_avg_pool2d(x, self.size)
        return pool_matrix(h, self.size).to(x) @ x @ pool_matrix(w, self.size).to(x).t()


class PlainCNN(nn.Module):
    """Conv blocks (each ``convs`` 3x3 convolutions then 2x2 max-pool) and a dense head."""

    def __init__(
        self,
        num_classes: int,
        blocks: list[tuple[int, int]],
        dense: list[int],
        batch_norm: bool = False,
        dropout: float = 0.0,
        pool_to: int = 4,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width, convs in blocks:
            for _ in range(convs):
                layers += _conv(cin, width, batch_norm)
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = AdaptiveAvgPool(pool_to)
        head: list[nn.Module] = [nn.Flatten()]
        fin = cin * pool_to * pool_to
        for units in dense:
            head.append(nn.Linear(fin, units))
            if batch_norm:
                head.append(nn.BatchNorm1d(units))
            head.append(nn.ReLU(inplace=True))
            if dropout:
                head.append(nn.Dropout(dropout))
            fin = units
        head.append(nn.Linear(fin, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model(
    family="custom",
    description="3 conv/pool blocks (32-64-128) and one dense layer",
    default_size=128,
    mean=_MEAN,
    std=_STD,
)
def basic_cnn(num_classes: int = 8) -> nn.Module:
    return PlainCNN(num_classes, [(32, 1), (64, 1), (128, 1)], [128])


@register_model(
    family="custom",
    description="5 conv blocks (32-64-128x2-256x2) and two dense layers",
    default_size=128,
    mean=_MEAN,
    std=_STD,
)
def complex_cnn(num_classes: int = 8) -> nn.Module:
    return PlainCNN(num_classes, [(32, 1), (64, 1), (128, 2), (128, 2), (256, 2)], [256, 128])


@register_model(
    family="custom",
    description="complex_cnn with batch norm after every convolution and 50% dropout in the dense layers",
    default_size=128,
    mean=_MEAN,
    std=_STD,
)
def enhanced_cnn(num_classes: int = 8) -> nn.Module:
    return PlainCNN(
        num_classes, [(32, 1), (64, 1), (128, 2), (128, 2), (256, 2)], [256, 128], batch_norm=True, dropout=0.5
    )
