"""Reader for class-folder trees such as the PBC release (``root/<class>/<image>``).

Sub-folder names are matched to the eight classes case-insensitively, with
aliases (``IG``, ``immature_granulocyte``, ``NEUTROPHIL``, ``thrombocyte``...);
a dataset may hold any subset of the classes. Images in nested folders inside a
class folder belong to that class. Hidden files and folders, files at the root,
files whose extension is not an image type and empty class folders are left out
and reported in :attr:`Dataset.problems`.

Links are followed, but every real folder is entered once and every real file
read once: a link back to a folder already walked (``ln -s .. cls/up``) or a
second link to a file already read is reported and left out, so a file is never
counted twice and a loop never repeats the tree.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from pathlib import Path

from bloodcell.core.classes import _ALIASES, CLASSES, canonical_class
from bloodcell.core.errors import DataError
from bloodcell.data.readers.dataset import IMAGE_EXTENSIONS, Dataset, Problem, Sample

#: Names of operating-system clutter that is never data.
CLUTTER = frozenset({"__macosx", "thumbs.db", "desktop.ini", "$recycle.bin"})


class UnknownClassError(DataError):
    """Sub-folders of a class-folder dataset whose names are not classes."""


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in CLUTTER


def _class_of(name: str) -> str | None:
    try:
        return canonical_class(name)
    except DataError:
        return None


class Walk:
    """Walks folders following links, entering each real folder once and yielding each real file once."""

    def __init__(self, root: Path):
        self.root = root
        self.seen_dirs: set[str] = {os.path.realpath(root)}
        self.seen_files: set[str] = set()

    def files(self, top: Path, problems: list[Problem] | None = None) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like :func:`os.walk` (links followed, names sorted); repeats go to ``problems`` when given."""
        real = os.path.realpath(top)
        if top != self.root and real in self.seen_dirs:
            self._repeat(problems, Path(top), is_dir=True)
            return
        self.seen_dirs.add(real)
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in self.seen_dirs:
                    self._repeat(problems, Path(dirpath, d), is_dir=True)
                else:
                    self.seen_dirs.add(real)
                    kept.append(d)
            dirnames[:] = kept
            names = []
            real_dir = os.path.realpath(dirpath)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_dir, name)
                if real in self.seen_files:
                    self._repeat(problems, Path(dirpath, name), is_dir=False)
                else:
                    self.seen_files.add(real)
                    names.append(name)
            yield dirpath, dirnames, names

    def _repeat(self, problems: list[Problem] | None, path: Path, is_dir: bool) -> None:
        if problems is None:
            return
        rel = _relative(path, self.root)
        target = os.path.realpath(path)
        what = "folder" if is_dir else "file"
        problems.append(Problem(rel, "repeated-link", (
            f"{rel}: links to a {what} already read ({target}); left out so nothing is counted twice."
            + (" Remove the link if it loops back into the dataset." if is_dir else "")), 0))


def _relative(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def count_files(folder: Path) -> int:
    """Number of distinct files below ``folder`` (links followed, each real file and folder once)."""
    walk = Walk(Path(folder))
    return sum(len(files) for _, _, files in walk.files(Path(folder)))


def read_folder(root: Path, *, skip_unknown: bool = False) -> Dataset:
    """Read a class-folder tree; see :func:`bloodcell.data.open_dataset`."""
    root = Path(root)
    entries = _list_root(root)
    problems: list[Problem] = []
    class_dirs, unknown = _sort_root(root, entries, problems)
    if unknown:
        if not skip_unknown:
            raise UnknownClassError(_unknown_message(root, unknown))
        for name in unknown:
            n = count_files(root / name)
            problems.append(Problem(name, "unknown-class", f"{name}: not a known class name; folder left out "
                                                           f"({n} file{'s' * (n != 1)} inside).", n))
    if not class_dirs:
        found = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DataError(
            f"{root}: no class folders found (found: {found}). Expected one sub-folder per class, "
            f"named after the classes: {', '.join(CLASSES)}."
        )
    walk = Walk(root)
    samples: list[Sample] = []
    for label, folder in class_dirs:
        found = _read_class_folder(walk, label, folder, problems)
        if not found:
            rel = _relative(folder, root)
            problems.append(Problem(
                rel, "empty-class",
                f"{rel}: class folder holds no images; class {label!r} is absent from the dataset. "
                "Add images or remove the folder.",
            ))
        samples.extend(found)
    if not samples:
        raise DataError(
            f"{root}: the class folders hold no images (extensions read: {', '.join(sorted(IMAGE_EXTENSIONS))}). "
            "Put the images inside the class folders."
        )
    samples.sort(key=lambda s: (CLASSES.index(s.label), s.source_id))
    return Dataset(root, "folder", samples, problems)


def _list_root(root: Path) -> list[os.DirEntry]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"{root}: permission denied while listing the folder. Check its permissions.") from None
    if not entries:
        raise DataError(
            f"{root}: the folder is empty. Expected one sub-folder per class with images inside, "
            f"e.g. {root}/neutrophil/*.jpg (known classes: {', '.join(CLASSES)})."
        )
    return entries


def _sort_root(root: Path, entries: list[os.DirEntry], problems: list[Problem]):
    """``(class folders, unknown folder names)``; hidden and stray root entries go to ``problems``."""
    class_dirs: list[tuple[str, Path]] = []
    unknown: list[str] = []
    for e in entries:
        if _hidden(e.name):
            problems.append(_hidden_problem(e.name, Path(e.path)))
        elif e.is_dir():
            label = _class_of(e.name)
            if label is None:
                unknown.append(e.name)
            else:
                class_dirs.append((label, Path(e.path)))
        else:
            problems.append(Problem(e.name, "stray",
                                    f"{e.name}: file at the dataset root ignored (images belong in a class folder)."))
    return class_dirs, unknown


def _read_class_folder(walk: Walk, label: str, folder: Path, problems: list[Problem]) -> list[Sample]:
    samples: list[Sample] = []
    for dirpath, dirnames, filenames in walk.files(folder, problems):
        for d in [d for d in dirnames if _hidden(d)]:
            problems.append(_hidden_problem(_relative(Path(dirpath, d), walk.root), Path(dirpath, d)))
            dirnames.remove(d)
        for name in filenames:
            path = Path(dirpath, name)
            rel = _relative(path, walk.root)
            if _hidden(name):
                problems.append(_hidden_problem(rel, path))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(Problem(
                    rel, "not-image",
                    f"{rel}: not an image file by its extension (expected one of "
                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}); ignored.",
                ))
            else:
                samples.append(Sample(rel, label, path))
    return samples


def _hidden_problem(rel: str, path: Path) -> Problem:
    if path.is_dir():
        n = count_files(path)
        return Problem(rel, "hidden", f"{rel}: hidden or system folder ignored ({n} file{'s' * (n != 1)} inside).", n)
    what = ""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            head = b""
        if head[4:8] == b"Bud1":
            what = " (named like an image, but it is macOS Finder metadata, not an image)"
        elif not head.startswith((b"\xff\xd8", b"\x89PNG", b"II*\x00", b"MM\x00*", b"BM", b"GIF8", b"RIFF")):
            what = " (named like an image, but its content is not an image)"
    return Problem(rel, "hidden", f"{rel}: hidden or system file ignored{what}.")


def _unknown_message(root: Path, unknown: list[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower().replace("_", " "), list(_ALIASES), n=1, cutoff=0.75)
        parts.append(f"{name!r} (did you mean {_ALIASES[close[0]]!r}?)" if close else repr(name))
    return (
        f"{root}: unknown class folder(s) {', '.join(parts)}. Known classes: {', '.join(CLASSES)} "
        "(aliases such as 'IG', 'immature_granulocyte', 'thrombocyte' are accepted). Rename the folder(s) "
        "or move them out of the dataset."
    )
