"""The types every reader shares: a :class:`Dataset` of :class:`Sample`, and :class:`Problem`.

A dataset is a list of samples, each an image with a canonical class name (or
``None`` when unlabelled), a source id that names it for people, and, for
manifests, the split it belongs to. Whatever a reader skipped (hidden files,
stray files, files that are not images by their extension, empty class
folders) is listed in :attr:`Dataset.problems` so nothing disappears silently.

The readers import this module; :mod:`bloodcell.data.readers.open` imports the
readers and picks one for a path.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import BloodcellError, DataError
from bloodcell.core.preprocess import decode_image
from bloodcell.data.hashing import file_sha256

#: File extensions read as images; anything else in a class folder is skipped and reported.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes
    ----------
    source_id : str
        Human-readable name, unique within the dataset (``basophil/BA_1.jpg``,
        ``blood.npz:train/17``).
    label : str or None
        Canonical class name (see :data:`bloodcell.CLASSES`), ``None`` if unlabelled.
    path : Path or None
        Image file, ``None`` for images held in an array file.
    split : str or None
        ``"train"``, ``"val"`` or ``"test"`` when the source assigns one.
    row : int or None
        Row in the array file, for images held in one.
    """

    source_id: str
    label: str | None
    path: Path | None
    split: str | None = None
    row: int | None = None


@dataclass(frozen=True)
class Problem:
    """Something a reader skipped or could not use, with a message for the user."""

    item: str
    kind: str
    message: str
    files: int = 1

    def to_dict(self) -> dict:
        return {"item": self.item, "kind": self.kind, "message": self.message, "files": self.files}


@dataclass
class Dataset:
    """Images with labels from one source (class folders, ``.npz`` or CSV manifest).

    Attributes
    ----------
    source : Path
        The folder or file the dataset was opened from.
    kind : str
        ``"folder"``, ``"npz"``, ``"medmnist"`` or ``"manifest"``.
    samples : list of Sample
    problems : list of Problem
        Items skipped or reported while reading.
    arrays : numpy.ndarray or None
        RGB ``uint8`` images ``(N, H, W, 3)`` for array sources (``Sample.row``
        indexes it); ``None`` for file sources.
    """

    source: Path
    kind: str
    samples: list[Sample]
    problems: list[Problem] = field(default_factory=list)
    arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Classes present in the dataset, in :data:`bloodcell.CLASSES` order."""
        present = {s.label for s in self.samples if s.label is not None}
        return tuple(c for c in CLASSES if c in present)

    @property
    def has_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)

    def class_counts(self) -> dict[str, int]:
        """Number of samples per present class, in :data:`bloodcell.CLASSES` order."""
        counts = Counter(s.label for s in self.samples if s.label is not None)
        return {c: counts[c] for c in self.class_names}

    def read(self, i: int) -> np.ndarray:
        """Decode sample ``i`` to an RGB ``uint8`` array ``(H, W, 3)``.

        Raises
        ------
        DataError
            Naming the file when it cannot be decoded.
        """
        s = self.samples[i]
        if s.path is None:
            return np.ascontiguousarray(self.arrays[s.row])
        try:
            return decode_image(s.path)
        except BloodcellError:
            raise
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged file; one line names it
            raise DataError(f"{s.path}: cannot be decoded ({type(e).__name__}: {e}). Re-export or remove it.") from None

    def content_key(self, i: int) -> str:
        """A key that changes exactly when the pixels of sample ``i`` can change."""
        s = self.samples[i]
        if s.path is not None:
            return file_sha256([s.path])[0]
        return array_key(self.arrays[s.row])

    def content_keys(self, indices=None, progress: bool = False) -> list[str]:
        """:meth:`content_key` for many samples at once (file hashes are memoized)."""
        indices = range(len(self.samples)) if indices is None else indices
        indices = list(indices)
        paths = [self.samples[i].path for i in indices]
        keys: list[str | None] = [None] * len(indices)
        file_pos = [j for j, p in enumerate(paths) if p is not None]
        if file_pos:
            hashes = file_sha256([paths[j] for j in file_pos], progress=progress)
            for j, h in zip(file_pos, hashes):
                keys[j] = h
        for j, i in enumerate(indices):
            if keys[j] is None:
                keys[j] = array_key(self.arrays[self.samples[i].row])
        return keys

    def select(self, indices) -> Dataset:
        """A dataset with the samples at ``indices`` (same source, problems and arrays)."""
        return Dataset(self.source, self.kind, [self.samples[i] for i in indices], list(self.problems), self.arrays)

    def split_indices(self, split) -> list[int]:
        """Indices of the samples in ``split`` (a name or several names)."""
        wanted = {split} if isinstance(split, str) else set(split)
        bad = wanted - set(SPLITS)
        if bad:
            raise DataError(f"Unknown split {sorted(bad)}; expected some of {list(SPLITS)}.")
        if not self.has_splits:
            raise DataError(
                f"{self.source}: has no split assignment, so split={sorted(wanted)} selects nothing. "
                f"Write a manifest with `bloodcell split {self.source} -o split.csv` and load that."
            )
        return [i for i, s in enumerate(self.samples) if s.split in wanted]


def array_key(image: np.ndarray) -> str:
    """Content key of an in-memory image: hash of its bytes, shape and dtype."""
    h = hashlib.sha256()
    h.update(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(np.ascontiguousarray(image).data)
    return "a" + h.hexdigest()[:63]
