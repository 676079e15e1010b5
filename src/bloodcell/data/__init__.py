"""Datasets in, prepared arrays out.

* :func:`open_dataset` reads class-folder trees, ``.npz`` files (plain or
  MedMNIST style) and CSV manifests into one :class:`Dataset` interface;
* :func:`load_arrays` turns a dataset (or one split of it) into ``uint8``
  arrays through the on-disk preprocessing cache (:mod:`bloodcell.data.pixels`).
"""

from bloodcell.data.cache import load_arrays
from bloodcell.data.pixels import ArraySet, PixelCache
from bloodcell.data.readers.dataset import IMAGE_EXTENSIONS, SPLITS, Dataset, Problem, Sample
from bloodcell.data.readers.open import open_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ArraySet",
    "Dataset",
    "PixelCache",
    "Problem",
    "Sample",
    "load_arrays",
    "open_dataset",
]
