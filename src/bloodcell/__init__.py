"""bloodcell: classify microscope images of single peripheral blood cells.

The command line (``bloodcell --help``) and this Python API call the same code.
"""

from .classes import CLASSES, canonical_class
from .errors import BloodcellError, ConfigError, DataError, ModelError
from .preprocess import PreprocessConfig, decode_image, prepare

__version__ = "0.1.0"

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
]
