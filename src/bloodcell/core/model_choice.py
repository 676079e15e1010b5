"""Which model to use: the one named, or the default model that ships inside the package.

The default model is a model folder at ``bloodcell/default_model/``
(``model.json``, ``model.safetensors``, ``model.onnx``, ``ood.safetensors``),
found through :mod:`importlib.resources` so it works offline from any install.
``BLOODCELL_MODEL`` names another model folder (or ``.onnx`` file) to use
whenever a command is given none.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from bloodcell.core.errors import ModelError
from bloodcell.core.model_folder import META, ONNX, WEIGHTS, is_model_folder

PACKAGE_DIR = "default_model"
ENV = "BLOODCELL_MODEL"


def packaged_model_dir() -> Path:
    """Where the default model lives inside the installed package (it may be absent)."""
    return Path(str(resources.files("bloodcell") / PACKAGE_DIR))


def default_model_dir() -> Path:
    """The default model folder.

    Raises
    ------
    ModelError
        When this installation carries no default model.
    """
    folder = packaged_model_dir()
    if not is_model_folder(folder):
        raise ModelError(
            f"No default model is installed (expected {folder / META}). Name a model with "
            f"--model PATH (a folder from `bloodcell train` or an exported .onnx file), set {ENV}, "
            "or install a bloodcell release that ships the default model."
        )
    return folder


def resolve_model(model: str | Path | None = None) -> Path:
    """The model folder or ``.onnx`` file to use.

    ``None`` means ``$BLOODCELL_MODEL`` if set, else the default model.
    """
    if model is None or str(model) == "":
        env = os.environ.get(ENV)
        if not env:
            return default_model_dir()
        model, origin = env, f" (from {ENV})"
    else:
        origin = ""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelError(
            f"{path}{origin}: no such model. Expected a model folder ({META} + {WEIGHTS}, "
            "as written by `bloodcell train`) or an .onnx file from `bloodcell export`."
        )
    if path.is_dir() and not is_model_folder(path) and not (path / ONNX).is_file():
        raise ModelError(f"{path}{origin}: folder holds no {META} or {ONNX}; it is not a bloodcell model.")
    if path.is_file() and path.suffix not in (".onnx", ".json"):
        raise ModelError(f"{path}{origin}: expected a model folder or an .onnx file, got a {path.suffix or 'plain'} file.")
    return path.parent if path.name == META else path
