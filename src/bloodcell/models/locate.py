"""Where model folders are: a path, or ``default`` for the model shipped in the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ModelError

#: The name that stands for the packaged default model.
DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    """The folder of the default model shipped inside the package (``bloodcell/default_model``)."""
    return Path(str(resources.files("bloodcell") / "default_model"))


def resolve_model_dir(spec: str | Path) -> Path:
    """A model folder from a user's spec: ``default`` or a path to a folder (or its ``model.json``).

    Raises
    ------
    ModelError
        When the folder holds no ``model.json``.
    """
    if str(spec) == DEFAULT_MODEL:
        folder = default_model_dir()
        if not (folder / "model.json").is_file():
            raise ModelError(
                f"The packaged default model is missing ({folder} has no model.json). "
                "Reinstall bloodcell, or pass a model folder written by `bloodcell train`."
            )
        return folder
    folder = Path(spec).expanduser()
    if folder.is_file() and folder.name == "model.json":
        folder = folder.parent
    if not (folder / "model.json").is_file():
        raise ModelError(
            f"{folder}: no model here (expected a folder with model.json and model.safetensors, "
            f"as written by `bloodcell train`, or {DEFAULT_MODEL!r} for the packaged model)."
        )
    return folder
