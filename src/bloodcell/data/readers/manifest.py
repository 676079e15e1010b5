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
from dataclasses import dataclass
from pathlib import Path

from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.data.readers.dataset import SPLITS, Dataset, Problem, Sample

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "testing": "test"}


#: At most this many unusable rows are listed in one error; the rest are counted.
MAX_LISTED = 10


@dataclass(frozen=True)
class RowError:
    """A row that cannot be used: ``short`` for a list of many, ``full`` when it is the only one."""

    lineno: int
    short: str
    full: str
    missing: bool = False


def read_manifest(path: Path) -> Dataset:
    """Read a CSV manifest; see :func:`bloodcell.data.open_dataset`.

    Every unusable row is found before anything is raised, so one error lists
    them all (up to :data:`MAX_LISTED`, with a count of the rest).
    """
    path = Path(path)
    header, reader = _open_csv(path)
    col = {name: header.index(name) for name in header}
    samples: list[Sample] = []
    problems: list[Problem] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    labels: dict[str, str | RowError] = {}
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        row = row + [""] * (len(header) - len(row))
        sample = _sample(path, col, row, lineno, labels)
        if isinstance(sample, RowError):
            errors.append(sample)
        elif sample.source_id in seen:
            sid = sample.source_id
            problems.append(Problem(sid, "duplicate-row", f"{path}:{lineno}: {sid} is listed again (first on line "
                                                          f"{seen[sid]}); the repeated row is ignored."))
        else:
            seen[sample.source_id] = lineno
            samples.append(sample)
    if errors:
        raise DataError(_errors_message(path, errors))
    if not samples:
        raise DataError(f"{path}: the manifest lists no images. Add one row per image under the header.")
    return Dataset(path, "manifest", samples, problems)


def _open_csv(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file. Save the manifest as UTF-8 CSV.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the manifest ({e.strerror or e}). Check the path and its permissions.") from None
    if not text.strip():
        raise DataError(f"{path}: the manifest is empty. Expected a header line 'path,label[,split]' and one row per image.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e}). Save the manifest as plain CSV.") from None
    if "path" not in header:
        raise DataError(
            f"{path}: no 'path' column (header: {','.join(header)}). The first line must name the columns, "
            "e.g. 'path,label,split'."
        )
    return header, _rows(path, reader)


def _rows(path: Path, reader):
    try:
        yield from reader
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({e}). Save the manifest as plain CSV.") from None


def _sample(path: Path, col: dict[str, int], row: list[str], lineno: int,
            labels: dict[str, str | RowError]) -> Sample | RowError:
    """The sample a row describes, or what is wrong with it."""
    raw_path = row[col["path"]].strip()
    if not raw_path:
        return RowError(lineno, "empty path", f"{path}:{lineno}: empty path. Every row needs the image's path.")
    file = Path(raw_path)
    if not file.is_absolute():
        file = path.parent / file
    if not file.is_file():
        return RowError(lineno, f"{raw_path} does not exist", f"{raw_path} (line {lineno})", missing=True)
    label = None
    raw_label = row[col["label"]].strip() if "label" in col else ""
    if raw_label:
        if raw_label not in labels:
            try:
                labels[raw_label] = canonical_class(raw_label, source=f"{path}:{lineno}")
            except DataError as e:
                labels[raw_label] = RowError(lineno, f"unknown class name {raw_label!r}", str(e))
        label = labels[raw_label]
        if isinstance(label, RowError):
            return RowError(lineno, label.short, label.full)
    split = None
    raw_split = row[col["split"]].strip() if "split" in col else ""
    if raw_split:
        split = _SPLIT_ALIASES.get(raw_split.lower())
        if split is None:
            return RowError(lineno, f"unknown split {raw_split!r}",
                            f"{path}:{lineno}: unknown split {raw_split!r}; expected one of {', '.join(SPLITS)}.")
    sid = row[col["source_id"]].strip() if "source_id" in col and row[col["source_id"]].strip() else raw_path
    return Sample(sid, label, file, split)


def _errors_message(path: Path, errors: list[RowError]) -> str:
    def listed(items: list[str]) -> str:
        more = len(items) - MAX_LISTED
        return "; ".join(items[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")

    base = path.parent
    if all(e.missing for e in errors):
        return (f"{path}: {len(errors)} listed file(s) do not exist: {listed([e.full for e in errors])}. "
                f"Relative paths are resolved against {base}; fix the paths or remove those rows.")
    if len(errors) == 1:
        return errors[0].full
    return (f"{path}: {len(errors)} rows cannot be used: {listed([f'line {e.lineno}: {e.short}' for e in errors])}. "
            f"Relative paths are resolved against {base}; fix those rows or remove them.")


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
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path
