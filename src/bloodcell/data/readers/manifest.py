"""CSV manifests: ``path,label[,split]`` plus any extra columns.

Relative paths resolve against the manifest's own folder, so a manifest and the
images can move together. ``label`` may be empty (unlabelled image); ``split``
is ``train``, ``val`` or ``test`` (``valid``/``validation`` are read as
``val``). :func:`write_manifest` writes the files ``bloodcell split`` produces.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import DataError
from bloodcell.data.readers.dataset import SPLITS, Dataset, Problem, Sample

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


def read_manifest(path: Path) -> Dataset:
    """Read a CSV manifest; see :func:`bloodcell.data.open_dataset`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file. Save the manifest as UTF-8 CSV.") from None
    if not text.strip():
        raise DataError(f"{path}: the manifest is empty. Expected a header line 'path,label[,split]' and one row per image.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    if "path" not in header:
        raise DataError(
            f"{path}: no 'path' column (header: {','.join(header)}). The first line must name the columns, "
            "e.g. 'path,label,split'."
        )
    col = {name: header.index(name) for name in header}
    base = path.parent
    samples: list[Sample] = []
    problems: list[Problem] = []
    missing: list[str] = []
    seen: dict[str, int] = {}
    label_cache: dict[str, str] = {}
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        raw_path = row[col["path"]].strip()
        if not raw_path:
            raise DataError(f"{path}:{lineno}: empty path. Every row needs the image's path.")
        file = Path(raw_path)
        if not file.is_absolute():
            file = base / file
        if not file.is_file():
            missing.append(f"{raw_path} (line {lineno})")
            continue
        label = None
        if "label" in col and row[col["label"]].strip():
            raw_label = row[col["label"]].strip()
            if raw_label not in label_cache:
                label_cache[raw_label] = canonical_class(raw_label, source=f"{path}:{lineno}")
            label = label_cache[raw_label]
        split = None
        if "split" in col and row[col["split"]].strip():
            raw_split = row[col["split"]].strip().lower()
            if raw_split not in _SPLIT_ALIASES:
                raise DataError(
                    f"{path}:{lineno}: unknown split {row[col['split']]!r}; expected one of {', '.join(SPLITS)}."
                )
            split = _SPLIT_ALIASES[raw_split]
        sid = row[col["source_id"]].strip() if "source_id" in col and row[col["source_id"]].strip() else raw_path
        if sid in seen:
            problems.append(Problem(sid, "duplicate-row", f"{path}:{lineno}: {sid} is listed again (first on line "
                                                          f"{seen[sid]}); the repeated row is ignored."))
            continue
        seen[sid] = lineno
        samples.append(Sample(sid, label, file, split))
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{path}: {len(missing)} listed file(s) do not exist: {shown}. Relative paths are resolved against "
            f"{base}; fix the paths or remove those rows."
        )
    if not samples:
        raise DataError(f"{path}: the manifest lists no images. Add one row per image under the header.")
    return Dataset(path, "manifest", samples, problems)


def manifest_path_for(file: Path, manifest: Path) -> str:
    """How ``file`` is written in ``manifest``: relative to the manifest's folder when the two share a
    folder below the filesystem root (so they can move together), else absolute."""
    file = os.path.abspath(file)
    folder = os.path.dirname(os.path.abspath(manifest))
    try:
        common = os.path.commonpath([file, folder])
    except ValueError:
        return file
    if os.path.dirname(common) == common:
        return file
    return Path(os.path.relpath(file, folder)).as_posix()


def write_manifest(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``) as CSV atomically; returns ``path``."""
    from bloodcell.core.files import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path
