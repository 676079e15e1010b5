"""Training: recipes and config, augmentation, the epoch loop, checkpoints, resume and DDP.

:func:`train` is ``bloodcell train`` in Python; :func:`fit` is the core on
in-memory ``uint8`` arrays. The config (:mod:`bloodcell.training.config`) loads
without PyTorch; the rest loads on first use, so ``bloodcell train --help`` and
reading a recipe stay fast.
"""

from bloodcell.core.lazy import lazy_names
from bloodcell.training.config import AugmentConfig, TrainConfig, load_config, recipe_names

_LAZY = {
    "EnsembleResult": "bloodcell.training.api",
    "show_config": "bloodcell.training.api",
    "train": "bloodcell.training.api",
    "run_training": "bloodcell.training.run",
    "FitResult": "bloodcell.training.trainer",
    "TrainData": "bloodcell.training.trainer",
    "Trainer": "bloodcell.training.trainer",
    "TrainingInterrupted": "bloodcell.training.trainer",
    "fit": "bloodcell.training.trainer",
    "make_preprocess": "bloodcell.training.trainer",
}


__getattr__ = lazy_names(__name__, _LAZY)


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
