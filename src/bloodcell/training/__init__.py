"""Training: recipes and config, augmentation, the epoch loop, checkpoints, resume and DDP.

:func:`train` is ``bloodcell train`` in Python; :func:`fit` is the core on
in-memory ``uint8`` arrays.
"""

from bloodcell.training.api import EnsembleResult, show_config, train
from bloodcell.training.config import AugmentConfig, TrainConfig, load_config, recipe_names
from bloodcell.training.run import run_training
from bloodcell.training.trainer import FitResult, TrainData, Trainer, TrainingInterrupted, fit, make_preprocess

__all__ = [
    "AugmentConfig",
    "EnsembleResult",
    "FitResult",
    "TrainConfig",
    "TrainData",
    "Trainer",
    "TrainingInterrupted",
    "fit",
    "load_config",
    "make_preprocess",
    "recipe_names",
    "run_training",
    "show_config",
    "train",
]
