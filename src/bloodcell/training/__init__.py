"""Training: recipes and config, augmentation, the epoch loop, checkpoints, resume and DDP.

``bloodcell train`` calls :func:`run_training`; :func:`fit` is the core on
in-memory ``uint8`` arrays.
"""

from bloodcell.training.config import AugmentConfig, TrainConfig, load_config, recipe_names
from bloodcell.training.run import run_training
from bloodcell.training.trainer import FitResult, TrainData, TrainingInterrupted, fit, make_preprocess

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
