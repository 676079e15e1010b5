"""bloodcell: classify microscope images of single peripheral blood cells.

The command line (``bloodcell --help``) and this Python API call the same code.
"""

from .classes import CLASSES, canonical_class
from .errors import BloodcellError, ConfigError, DataError, ModelError
from .preprocess import PreprocessConfig, decode_image, prepare

__version__ = "0.1.0"



def __getattr__(name: str):
    # The classifier API loads lazily so `import bloodcell` stays light.
    if name in ("Classifier", "Prediction", "differential"):
        from . import classify

        return getattr(classify, name)
    raise AttributeError(f"module 'bloodcell' has no attribute {name!r}")


__all__ = [
    "CLASSES",
    "Classifier",
    "Prediction",
    "BloodcellError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PreprocessConfig",
    "__version__",
    "canonical_class",
    "decode_image",
    "differential",
    "prepare",
]
