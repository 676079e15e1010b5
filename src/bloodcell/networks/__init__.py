"""Model architectures, ImageNet weights and model files."""

from bloodcell.networks.ensemble import make_ensemble
from bloodcell.networks.loading import LoadedModel, load_model, save_model
from bloodcell.networks.registry import create_model, get_entry, list_models, register_model

__all__ = [
    "LoadedModel",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "make_ensemble",
    "register_model",
    "save_model",
]
