"""Model architectures, ImageNet weights and model files."""

from .checkpoint import LoadedModel, load_model, read_meta, save_model
from .ensemble import make_ensemble
from .registry import create_model, get_entry, list_models, register_model

__all__ = [
    "LoadedModel",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "make_ensemble",
    "read_meta",
    "register_model",
    "save_model",
]
