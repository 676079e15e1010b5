"""The model folder: the one place that knows its file names, format tag and metadata.

A model is a folder holding ``model.json`` (metadata: architecture, class names,
preprocessing, the resolved training config, metrics history, data manifest hash and,
once fitted, calibration and out-of-distribution statistics) and ``model.safetensors``
(the weights). An ensemble's ``model.json`` lists member folders inside it instead of
holding weights. A packaged model adds ``model.onnx`` and ``ood.safetensors``.

Nothing here imports PyTorch: the ONNX runtime path reads model folders too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bloodcell.core.errors import ModelError
from bloodcell.core.files import atomic_write_json

FORMAT = "bloodcell-model/1"
ONNX_FORMAT = "bloodcell-onnx/1"
META = "model.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
OOD = "ood.safetensors"
FAMILIAR = "familiar.safetensors"
FINISHED = ("completed", "early_stopping")
#: Sub-folder of a packaged model holding the model ``bloodcell adapt`` starts from, when that is not the
#: model itself (the default model predicts with one network distilled from the ensemble it adapts from).
ADAPT_FROM = "adapt_from"


def meta_path(path: str | Path) -> Path:
    """``model.json`` of a model folder (or the file itself when given)."""
    path = Path(path)
    return path if path.name == META and not path.is_dir() else path / META


def folder_of(path: str | Path) -> Path:
    """The model folder ``path`` names: the folder itself, or the folder of a given ``model.json``."""
    path = Path(path)
    return path.parent if path.name == META and path.is_file() else path


def is_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / META).is_file()


def read_meta(folder: str | Path) -> dict:
    """Read and check a model folder's ``model.json``.

    Raises
    ------
    ModelError
        When the file is missing, corrupt or not a bloodcell model's.
    """
    folder = Path(folder)
    path = meta_path(folder)
    if not path.exists():
        raise ModelError(
            f"{folder}: no model here (expected a folder with {META} and {WEIGHTS}, as written by `bloodcell train`)."
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: corrupt model metadata ({e}). Re-train or restore the file.") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read model metadata ({e.strerror}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(f"{path}: not a bloodcell model file (format {found!r}, expected {FORMAT!r}).")
    return meta


def adapt_start(folder: str | Path) -> Path:
    """The model folder ``bloodcell adapt`` starts from: the one ``model.json["adapt_from"]`` names inside
    ``folder``, else ``folder`` itself.

    Raises
    ------
    ModelError
        When ``model.json`` names a sub-folder that holds no model.
    """
    folder = Path(folder)
    start = (read_meta(folder).get("adapt_from") or {}).get("folder")
    if not start:
        return folder
    path = folder / start
    if not (path / META).is_file():
        raise ModelError(f"{folder}: {META} says adaptation starts from {path}, which holds no model; restore it "
                         "or reinstall bloodcell.")
    return path


def write_meta(folder: str | Path, meta: dict) -> Path:
    """Write ``model.json`` atomically, with the format tag first."""
    path = Path(folder) / META
    atomic_write_json(path, {**meta, "format": FORMAT} if "format" in meta else {"format": FORMAT, **meta}, indent=2)
    return path


def is_trained(folder: str | Path) -> bool:
    """Whether a training run in ``folder`` finished (completed, or stopped early by patience)."""
    try:
        meta = json.loads(meta_path(folder).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("training") or {}).get("stopped") in FINISHED


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files a model folder's ``model.json`` uses (ensemble members' included)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return []
    ensemble = meta.get("ensemble") or {}
    if ensemble:
        return [f for m in ensemble.get("members", []) for f in weight_files(folder / m)]
    return [folder / WEIGHTS]


def weights_digest(folder: str | Path) -> str:
    """SHA-256 over the model's weight files (see :func:`weight_files`), in order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in weight_files(folder):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
