"""Training: recipes and config, augmentation, the epoch loop, checkpoints, resume and DDP.

``bloodcell train`` calls :func:`run_training`; :func:`fit` is the core on
in-memory ``uint8`` arrays.
"""

from .config import AugmentConfig, TrainConfig, load_config, recipe_names
from .trainer import FitResult, TrainData, TrainingInterrupted, fit, make_preprocess
from .run import run_training

__all__ = [
    "AugmentConfig",
    "FitResult",
    "TrainConfig",
    "TrainData",
    "TrainingInterrupted",
    "fit",
    "load_config",
    "make_preprocess",
    "recipe_names",
    "run_training",
]
