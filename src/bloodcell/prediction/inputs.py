"""Turn command-line inputs (files, folders, globs, datasets) into images to classify.

* an image file is one item;
* a folder is searched recursively for image files; a class-folder dataset
  (sub-folders named after the classes, as in PBC) keeps each image's class
  as its true label;
* a glob (``"cells/*.png"``, ``"smear/**/*.jpg"``) is expanded;
* an ``.npz`` array file or a CSV manifest is read with
  :func:`bloodcell.data.open_dataset`.

Nothing is dropped silently: missing paths, empty globs, non-image files and
repeated files become :class:`~bloodcell.data.Problem` entries that the caller
reports.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import decode_image
from bloodcell.data import IMAGE_EXTENSIONS, Dataset, Problem, open_dataset

_GLOB_CHARS = set("*?[")
DATASET_SUFFIXES = (".npz", ".csv", ".tsv")


@dataclass(frozen=True)
class Item:
    """One image to classify: a file, or a row of a dataset."""

    source: str
    path: Path | None = None
    dataset: Dataset | None = None
    index: int | None = None
    label: str | None = None

    def read(self, need: int | None = None) -> np.ndarray:
        """Decode to RGB ``uint8`` ``(H, W, 3)``; raises :class:`DataError` naming the source.

        ``need``: the shortest side the caller needs, so a large JPEG decodes at reduced scale
        (see :func:`bloodcell.core.preprocess.decode_image`).
        """
        if self.dataset is not None:
            return self.dataset.read(self.index)
        try:
            return decode_image(self.path, self.source, need=need)
        except OSError as e:
            raise DataError(f"{self.source}: cannot be read ({e.strerror or e}). Check its permissions or remove it.") from None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini", "__macosx")


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link that loops or points nowhere
        return False


def _not_a_file(path: Path) -> Problem | None:
    """Why ``path`` (found in a folder or named directly) cannot be classified as an image file, if so."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Problem(str(path), "link-loop", f"{path}: skipped, a symbolic link that loops back on itself.")
        if e.errno == errno.ENOENT:
            return Problem(str(path), "missing", f"{path}: skipped, a symbolic link to a file that does not exist.")
        return Problem(str(path), "unreadable", f"{path}: skipped, cannot be read ({e.strerror or e}).")
    if not stat.S_ISREG(mode):
        return Problem(str(path), "not-image", f"{path}: skipped, not a regular file (a pipe, socket or device).")
    return None


def _is_class_tree(folder: Path) -> bool:
    try:
        entries = list(os.scandir(folder))
    except OSError:  # reported when the folder is walked
        return False
    for entry in entries:
        if _is_dir(entry) and not _hidden(entry.name):
            try:
                canonical_class(entry.name)
                return True
            except DataError:
                continue
    return False


def _walk(folder: Path, problems: list[Problem]) -> Iterator[Item]:
    """The image files under ``folder``, sorted folder by folder, found as the walk goes."""
    def unreadable(e: OSError) -> None:
        problems.append(Problem(str(e.filename), "unreadable",
                                f"{e.filename}: skipped, the folder cannot be read ({e.strerror or e}). Check its permissions."))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        linked = [d for d in dirs if (Path(root) / d).is_symlink()]
        for name in sorted(linked):
            path = Path(root) / name
            problems.append(Problem(str(path), "linked-folder", f"{path}: skipped, a link to a folder; links inside "
                                    "a folder are not followed, so no image is counted twice. Pass its target to classify it."))
        dirs[:] = sorted(d for d in dirs if not _hidden(d) and d not in linked)
        for name in sorted(files):
            path = Path(root) / name
            if _hidden(name):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    problems.append(Problem(str(path), "hidden", f"{path}: skipped, a hidden or system file "
                                            "(e.g. macOS metadata), not an image to classify."))
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                problem = _not_a_file(path)
                if problem is not None:
                    problems.append(problem)
                    continue
                yield Item(str(path), path)
            else:
                problems.append(Problem(str(path), "not-image",
                                        f"{path}: skipped, {path.suffix or 'no'} extension is not an image type."))


def _dataset_items(ds: Dataset, problems: list[Problem]) -> Iterator[Item]:
    for p in ds.problems:
        problems.append(Problem(f"{ds.source}/{p.item}" if ds.kind == "folder" else p.item, p.kind, p.message))
    for i, s in enumerate(ds.samples):
        if s.path is not None:
            yield Item(str(s.path), s.path, label=s.label)
        else:
            yield Item(s.source_id, None, ds, i, s.label)


def _expand(arg: str, problems: list[Problem]) -> Iterator[Item]:
    path = Path(arg).expanduser()
    if not path.exists() and _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            problems.append(Problem(arg, "no-match", f"{arg}: no files match this pattern."))
        for m in matches:
            yield from (_expand(m, problems) if Path(m).is_dir() else _expand_file(Path(m), problems))
        return
    if path.is_symlink() and not path.exists():
        problems.append(_not_a_file(path))
        return
    if not path.exists():
        problems.append(Problem(arg, "missing", f"{arg}: no such file or folder."))
        return
    if path.is_dir():
        if _is_class_tree(path):
            try:
                yield from _dataset_items(open_dataset(path, skip_unknown=True), problems)
            except DataError as e:
                problems.append(Problem(arg, "unreadable", str(e)))
            return
        found = 0
        for item in _walk(path, problems):
            found += 1
            yield item
        if not found:
            problems.append(Problem(arg, "empty", f"{arg}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})."))
        return
    yield from _expand_file(path, problems)


def _expand_file(path: Path, problems: list[Problem]) -> Iterable[Item]:
    if path.suffix.lower() in DATASET_SUFFIXES:
        try:
            return _dataset_items(open_dataset(path), problems)
        except DataError as e:
            problems.append(Problem(str(path), "unreadable", str(e)))
            return []
    problem = _not_a_file(path)
    if problem is not None:
        problems.append(problem)
        return []
    return [Item(str(path), path)]


def _identity(path: Path) -> Path:
    """The file a path names, so a file reached twice (directly and through a link) is classified once."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: left for the reader to report
        return path.absolute()


def _key(item: Item) -> bytes:
    """A 16-byte fingerprint of the file an item names (or of its dataset row), so remembering every
    item seen costs little memory however many there are."""
    ident = str(_identity(item.path)) if item.path is not None else f"{item.source}\0{id(item.dataset)}"
    return hashlib.blake2b(ident.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def iter_items(inputs, problems: list[Problem]) -> Iterator[Item]:
    """Expand inputs into items lazily, in the order given (folders are walked as items are taken);
    a file listed twice is kept once. Problems are appended to ``problems`` as they are found."""
    seen: set = set()
    for arg in inputs:
        for item in _expand(str(arg), problems):
            key = _key(item)
            if key in seen:
                problems.append(Problem(item.source, "repeated", f"{item.source}: listed more than once; classified once."))
                continue
            seen.add(key)
            yield item


def collect(inputs: list[str | Path]) -> tuple[list[Item], list[Problem]]:
    """Expand inputs into items, in the order given; a file listed twice is kept once and reported.

    Returns
    -------
    items : list of Item
    problems : list of Problem
        Paths that do not exist, globs without matches, non-image files in
        folders, unreadable dataset files and repeats.
    """
    problems: list[Problem] = []
    items = list(iter_items(inputs, problems))
    return items, problems
