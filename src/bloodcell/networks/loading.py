"""Model files: weights in safetensors plus JSON metadata, written atomically.

A model is a folder holding ``model.safetensors`` and ``model.json``. The
metadata carries everything needed to rebuild and use the model: the
architecture, class names, preprocessing, the resolved training config, the
metrics history, the data manifest hash and, once fitted, the calibration
(temperature and abstention threshold). An ensemble folder's ``model.json``
lists member folders instead of holding weights itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bloodcell.core.errors import ModelError
from bloodcell.core.files import atomic_write_with
from bloodcell.core.model_folder import META, WEIGHTS, meta_path, read_meta, write_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks.registry import create_model
from bloodcell.networks.voting import build_ensemble_module, member_dir


@dataclass
class LoadedModel:
    """A model ready for inference: the module (returning logits) and its metadata."""

    module: nn.Module
    meta: dict
    path: Path
    preprocess: PreprocessConfig = field(init=False)

    def __post_init__(self) -> None:
        self.preprocess = PreprocessConfig.from_dict(self.meta["preprocess"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preprocess.class_names

    @property
    def temperature(self) -> float:
        return float(self.meta.get("calibration", {}).get("temperature", 1.0))


def save_model(folder: str | Path, module: nn.Module, meta: dict) -> Path:
    """Write ``module``'s weights and ``meta`` into ``folder`` atomically; returns the folder."""
    folder = Path(folder)
    for key in ("architecture", "preprocess"):
        if key not in meta:
            raise ModelError(f"Model metadata needs {key!r}; got keys {sorted(meta)}.")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(module).state_dict().items()}
    atomic_write_with(folder / WEIGHTS, lambda tmp: save_file(state, tmp))
    write_meta(folder, meta)
    return folder


def _unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module) if hasattr(module, "module") and isinstance(module.module, nn.Module) else module


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (single model or ensemble) for inference, in eval mode."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
        if not meta_path(folder).exists():
            raise ModelError(f"{path}: a file, and no {META} beside it; this needs a model folder ({META} + {WEIGHTS}, "
                             "as written by `bloodcell train`). An exported .onnx file runs with `bloodcell predict "
                             "--model FILE` and `bloodcell serve --model FILE`; pass the folder it was exported from.")
    meta = read_meta(folder)
    if meta.get("ensemble"):
        module = build_ensemble_module(folder, meta, device, load_model)
    else:
        module = build_module(meta)
        weights = folder / WEIGHTS
        try:
            state = load_file(str(weights))
        except FileNotFoundError:
            raise ModelError(f"{weights}: weight file missing beside {META}.") from None
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise ModelError(f"{weights}: corrupt weight file ({e}). Re-train or restore it.") from None
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise ModelError(f"{weights}: weights do not fit architecture {meta['architecture']!r} ({str(e)[:300]}).") from None
    module.to(device).eval()
    if torch.device(device).type == "cpu":
        # convolutions run about twice as fast in this layout on the CPU; saving stores plain tensors, and
        # outside inference mode the weights stay usable by autograd (Grad-CAM, fine-tuning)
        with torch.inference_mode(False):
            module.to(memory_format=torch.channels_last)
    return LoadedModel(module, meta, folder)


def build_module(meta: dict) -> nn.Module:
    """An untrained module of the architecture and class count ``meta`` describes."""
    n = len(meta["preprocess"]["class_names"])
    return create_model(meta["architecture"], num_classes=n, **meta.get("model_kwargs", {}))


def copy_model(src: str | Path, dst: str | Path) -> Path:
    """Copy only what loading a model needs: its metadata and weights (an ensemble's members too),
    no checkpoints, plots or exports.

    Raises
    ------
    ModelError
        When ``src`` is not a model folder, or a weight file is missing.
    """
    src, dst = Path(src), Path(dst)
    meta = read_meta(src)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / META, dst / META)  # new files, with the permissions a plain write gives
    members = (meta.get("ensemble") or {}).get("members") or []
    for name in members:
        copy_model(member_dir(src, name), dst / name)
    if not members:
        if not (src / WEIGHTS).is_file():
            raise ModelError(f"{src / WEIGHTS}: weight file missing beside {META}. Re-train or restore it.")
        shutil.copyfile(src / WEIGHTS, dst / WEIGHTS)
    return dst
