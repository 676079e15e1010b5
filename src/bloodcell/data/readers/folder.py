"""Reader for class-folder trees such as the PBC release (``root/<class>/<image>``).

Sub-folder names are matched to the eight classes case-insensitively, with
aliases (``IG``, ``immature_granulocyte``, ``NEUTROPHIL``, ``thrombocyte``...);
a dataset may hold any subset of the classes. Images in nested folders inside a
class folder belong to that class. Hidden files and folders, files at the root,
files whose extension is not an image type and empty class folders are left out
and reported in :attr:`Dataset.problems`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from bloodcell.core.classes import CLASSES, canonical_class
from bloodcell.core.errors import DataError
from bloodcell.data.readers.dataset import IMAGE_EXTENSIONS, Dataset, Problem, Sample

#: Names of operating-system clutter that is never data.
CLUTTER = frozenset({"__macosx", "thumbs.db", "desktop.ini", "$recycle.bin"})


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in CLUTTER


def _class_of(name: str) -> str | None:
    try:
        return canonical_class(name)
    except DataError:
        return None


def read_folder(root: Path, *, skip_unknown: bool = False) -> Dataset:
    """Read a class-folder tree; see :func:`bloodcell.data.open_dataset`."""
    root = Path(root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"{root}: permission denied while listing the folder. Check its permissions.") from None
    if not entries:
        raise DataError(
            f"{root}: the folder is empty. Expected one sub-folder per class with images inside, "
            f"e.g. {root}/neutrophil/*.jpg (known classes: {', '.join(CLASSES)})."
        )
    problems: list[Problem] = []
    class_dirs: list[tuple[str, Path]] = []
    unknown: list[str] = []
    for e in entries:
        rel = e.name
        if _hidden(e.name):
            problems.append(_hidden_problem(rel, Path(e.path)))
        elif e.is_dir():
            label = _class_of(e.name)
            if label is None:
                unknown.append(e.name)
            else:
                class_dirs.append((label, Path(e.path)))
        else:
            problems.append(Problem(rel, "stray", f"{rel}: file at the dataset root ignored (images belong in a class folder)."))
    if unknown:
        if not skip_unknown:
            raise DataError(_unknown_message(root, unknown))
        for name in unknown:
            problems.append(Problem(name, "unknown-class", f"{name}: not a known class name; folder left out."))
    if not class_dirs:
        found = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DataError(
            f"{root}: no class folders found (found: {found}). Expected one sub-folder per class, "
            f"named after the classes: {', '.join(CLASSES)}."
        )
    samples: list[Sample] = []
    for label, folder in class_dirs:
        n_before = len(samples)
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                if _hidden(d):
                    rel = Path(dirpath, d).relative_to(root).as_posix()
                    problems.append(_hidden_problem(rel, Path(dirpath, d)))
                else:
                    kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                path = Path(dirpath, name)
                rel = path.relative_to(root).as_posix()
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
        if len(samples) == n_before:
            rel = folder.relative_to(root).as_posix()
            problems.append(Problem(
                rel, "empty-class",
                f"{rel}: class folder holds no images; class {label!r} is absent from the dataset. "
                "Add images or remove the folder.",
            ))
    if not samples:
        raise DataError(
            f"{root}: the class folders hold no images (extensions read: {', '.join(sorted(IMAGE_EXTENSIONS))}). "
            "Put the images inside the class folders."
        )
    samples.sort(key=lambda s: (CLASSES.index(s.label), s.source_id))
    return Dataset(root, "folder", samples, problems)


def count_files(folder: Path) -> int:
    """Number of files below ``folder`` (following links)."""
    return sum(len(files) for _, _, files in os.walk(folder, followlinks=True))


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
    from bloodcell.core.classes import _ALIASES

    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name.lower().replace("_", " "), list(_ALIASES), n=1, cutoff=0.75)
        parts.append(f"{name!r} (did you mean {_ALIASES[close[0]]!r}?)" if close else repr(name))
    return (
        f"{root}: unknown class folder(s) {', '.join(parts)}. Known classes: {', '.join(CLASSES)} "
        "(aliases such as 'IG', 'immature_granulocyte', 'thrombocyte' are accepted). Rename the folder(s), "
        "move them out of the dataset, or pass --skip-unknown to leave them out."
    )
