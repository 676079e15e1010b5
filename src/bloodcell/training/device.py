"""Where and how the arithmetic runs: device, threads, precision, memory format.

The "auto" choices follow measurements on a 2-core Xeon with AMX/AVX-512-BF16
(``benchmarks/cpu_formats.py``): channels-last speeds up every network tried
on CPU (custom CNNs and EfficientNet-Lite0, 64-128 px), and bf16 autocast
halves the step time of the plain custom CNNs but slows networks built on
depthwise convolutions (EfficientNet, MobileNet). So on CPU "auto" means
channels-last on, bf16 only for networks without grouped convolutions and only
when the CPU computes bf16 natively. On CUDA "auto" means fp16 AMP with a
gradient scaler. The decisions are written into the resolved config, so a
resumed or repeated run makes the same ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from bloodcell.core.errors import ConfigError
from bloodcell.core.settings import usable_cpus


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def has_grouped_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(spec: str, device: torch.device, model: nn.Module) -> str:
    if spec == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() and not has_grouped_convs(model) else "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("precision: fp16 needs a CUDA device; on CPU use bf16 or fp32. Fix: --precision bf16.")
    if spec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision: this GPU has no bf16 support. Fix: --precision fp16.")
    return spec


def resolve_channels_last(spec: str, device: torch.device) -> bool:
    if spec == "auto":
        return True
    return spec == "on"


def resolve_threads(threads: int, local_world_size: int = 1) -> int:
    """Threads per process: ``threads`` if set, else the cores shared among local processes."""
    if threads:
        return threads
    return max(1, usable_cpus() // max(1, local_world_size))
