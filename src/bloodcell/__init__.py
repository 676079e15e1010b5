"""bloodcell: classify microscope images of single peripheral blood cells.

Every ``bloodcell VERB`` of the command line is a Python function of the same name here,
and both run the same code::

    import bloodcell
    bloodcell.audit("cells/")
    bloodcell.split("cells/", out="split.csv")
    bloodcell.train(recipe="default", data="split.csv", out="runs/mine")
    bloodcell.evaluate("runs/mine", "split.csv", split="test")
    bloodcell.Classifier("runs/mine").predict(["smear/"])

The verbs load on first use, so ``import bloodcell`` stays light (no PyTorch).
"""

from bloodcell.core import __version__
from bloodcell.core.classes import CLASSES, canonical_class
from bloodcell.core.errors import BloodcellError, ConfigError, DataError, ModelError
from bloodcell.core.lazy import lazy_names
from bloodcell.core.preprocess import PreprocessConfig, decode_image, prepare

# name -> module that defines it (loaded on first use)
_LAZY = {
    "Classifier": "bloodcell.prediction.classifier",
    "Prediction": "bloodcell.prediction.classifier",
    "differential": "bloodcell.prediction.classifier",
    "predict": "bloodcell.fields.api",
    "audit": "bloodcell.data.audit",
    "split": "bloodcell.data.split",
    "cache": "bloodcell.data.cache",
    "models": "bloodcell.networks.registry",
    "train": "bloodcell.training",
    "ensemble": "bloodcell.networks.ensemble",
    "soup": "bloodcell.training.soup",
    "evaluate": "bloodcell.evaluation",
    "calibrate": "bloodcell.evaluation",
    "compare": "bloodcell.evaluation",
    "report": "bloodcell.evaluation",
    "export": "bloodcell.packaging",
    "info": "bloodcell.packaging",
    "serve": "bloodcell.server",
    "pipeline": "bloodcell.pipelines",
    "case": "bloodcell.cases",
    "adapt": "bloodcell.adaptation",
}


__getattr__ = lazy_names(__name__, _LAZY)


__all__ = [
    "CLASSES",
    "BloodcellError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PreprocessConfig",
    "__version__",
    "canonical_class",
    "decode_image",
    "prepare",
    *_LAZY,
]
