"""Model architectures, ImageNet weights and model files.

Importing the package registers the built-in architectures (custom CNNs and timm networks)
in :mod:`~bloodcell.networks.registry`.
"""

from bloodcell.networks import custom_cnn, timm_zoo  # noqa: F401  (registers the built-in architectures)
from bloodcell.networks.ensemble import ensemble, make_ensemble
from bloodcell.networks.loading import LoadedModel, copy_model, load_model, save_model
from bloodcell.networks.registry import create_model, get_entry, list_models, models, register_model

__all__ = [
    "LoadedModel",
    "copy_model",
    "create_model",
    "ensemble",
    "get_entry",
    "list_models",
    "load_model",
    "make_ensemble",
    "models",
    "register_model",
    "save_model",
]
