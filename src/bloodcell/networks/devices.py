"""Which torch device to run on: one rule for training, evaluation and prediction."""

from __future__ import annotations

import os

import torch

from bloodcell.core.errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or nothing) -> CUDA when available (the local rank's GPU when distributed), else
    the CPU; anything else is checked.

    Raises
    ------
    ConfigError
        When ``spec`` is not a torch device, asks for CUDA where there is none, or names a
        device type other than cpu and cuda.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {spec} asked for, but no CUDA GPU is available here; use --device cpu (or auto).")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {spec!r} is not supported; use cpu or cuda.")
    return device
