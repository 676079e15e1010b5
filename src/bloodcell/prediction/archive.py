"""Classify an archive of any size into a file, incrementally and resumably (``bloodcell predict -o``).

Rows are appended to ``<output>.partial`` as batches finish
(:class:`~bloodcell.prediction.rowfile.RowFile`); a run stopped at any moment,
``kill -9`` included, continues with ``resume=True`` (``--resume``) without
classifying anything twice. When every image is done, the output is written
from those rows, one at a time, in the chosen format:

``csv``      the rows of ``bloodcell predict -f csv``
``jsonl``    one JSON object per image (the ``predictions`` entries of ``-f json``)
``json``     the document of ``-f json`` (model, predictions, skipped, differential)
``parquet``  a folder of Parquet shards (:mod:`bloodcell.prediction.parquet`)

For ``csv``, ``jsonl`` and ``parquet`` the model (with the precision it ran
at), the skipped inputs and the differential go to ``<output>.run.json``
(``<output>/_run.json`` for Parquet). The differential is counted from the
written rows, so a resumed run counts every image once.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_json, atomic_write_with, check_writable_file, staged_folder
from bloodcell.prediction import outputs
from bloodcell.prediction.classifier import Classifier
from bloodcell.prediction.differential import Differential, differential, lab_differential_of, run_warning
from bloodcell.prediction.outputs import _csv_header, _csv_row
from bloodcell.prediction.results import PredictionRun
from bloodcell.prediction.rowfile import RowFile

FORMATS = ("csv", "jsonl", "json", "parquet")


@dataclass
class ArchiveResult:
    """What :func:`predict_to_file` did."""

    output: Path
    images: int
    new: int
    problems: list
    differential: Differential
    model: dict
    seconds: float
    extra: Path | None = None
    notes: list = field(default_factory=list)


def _write_csv(path: Path, rows: RowFile, with_truth: bool) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(_csv_header(rows.class_names, with_truth, rows.with_framing))
            for p in rows.predictions():
                w.writerow(_csv_row(p, rows.class_names, with_truth, rows.with_framing))

    atomic_write_with(path, write)


def _write_jsonl(path: Path, rows: RowFile) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for p in rows.predictions():
                f.write(json.dumps(p.to_dict()) + "\n")

    atomic_write_with(path, write)


def _indented(obj, pad: str) -> str:
    return json.dumps(obj, indent=2).replace("\n", "\n" + pad)


def _write_json(path: Path, rows: RowFile, problems, diff: Differential, lab: dict, warning: str | None) -> None:
    """The ``-f json`` document, written prediction by prediction."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write('{\n  "model": ' + _indented(rows.model, "  ") + ',\n  "predictions": [')
            for i, p in enumerate(rows.predictions()):
                f.write(("," if i else "") + "\n    " + _indented(p.to_dict(), "    "))
            skipped = [{"source": q.item, "reason": q.message} for q in problems]
            f.write('\n  ],\n  "skipped": ' + _indented(skipped, "  ") + ',\n  "differential": '
                    + _indented(diff.to_dict(), "  ") + ',\n  "lab_differential": '
                    + _indented(lab, "  ") + ',\n  "warning": ' + json.dumps(warning) + "\n}\n")

    atomic_write_with(path, write)


def _run_record(rows: RowFile, problems, diff: Differential, lab: dict, images: int) -> dict:
    return {"model": rows.model, "images": images,
            "skipped": [{"source": q.item, "reason": q.message} for q in problems],
            "differential": diff.to_dict(), "lab_differential": lab, "warning": run_warning(diff, rows.model)}


def _finish(fmt: str, output: Path, rows: RowFile, problems) -> tuple[Differential, Path | None, int]:
    """Write the output from the partial rows; returns the differential, the run record file and the row count."""
    rows.close()
    with_truth, images = False, 0
    for row in rows.read():
        images += 1
        with_truth = with_truth or bool(row["true_label"])
    diff = differential(rows.predictions(), rows.class_names)
    lab = lab_differential_of(rows.predictions())
    record = _run_record(rows, problems, diff, lab, images)
    extra = None
    if fmt == "csv":
        _write_csv(output, rows, with_truth)
    elif fmt == "jsonl":
        _write_jsonl(output, rows)
    elif fmt == "json":
        _write_json(output, rows, problems, diff, lab, record["warning"])
    else:
        from bloodcell.prediction.parquet import write_shards  # deferred: needs the optional pyarrow

        with staged_folder(output) as staging:
            write_shards(staging, rows.predictions(), rows.class_names, rows.with_framing, rows.model)
            atomic_write_json(staging / "_run.json", record, indent=2)
        extra = output / "_run.json"
    if fmt in ("csv", "jsonl"):
        extra = output.with_name(output.name + ".run.json")
        atomic_write_json(extra, record, indent=2)
    rows.remove()
    return diff, extra, images


def _check(fmt: str, output) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)} for a file output, got {fmt!r}.")
    if fmt == "parquet":
        from bloodcell.prediction.parquet import require_pyarrow  # deferred: optional dependency

        require_pyarrow()
        output = Path(output)
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{output}: Parquet output is a folder of shards, and this is a file. Pass another -o.")
        check_writable_file(output.with_name(output.name + ".partial"))
        return output
    return check_writable_file(output)


def predict_to_file(paths, output, *, format: str = "csv", resume: bool = False, model=None,
                    workers: int | None = None, progress: bool = False, **options) -> ArchiveResult:
    """Classify ``paths`` into ``output``, appending rows as batches finish; resumable (see the module docstring).

    Parameters
    ----------
    paths : str, Path or list of them
        As for :func:`bloodcell.predict`: files, folders, globs, ``.npz`` files, CSV manifests.
    output : str or Path
        The file (a folder for ``parquet``) to write.
    format : {"csv", "jsonl", "json", "parquet"}
    resume : bool
        Continue the unfinished run whose rows are in ``<output>.partial``.
    model, workers, progress
        The model (as for :class:`Classifier`), decoding threads, a progress bar.
    **options
        ``backend``, ``batch_size``, ``threads``, ``precision``, ``abstain_threshold``,
        ``ood_threshold``: as for :class:`Classifier`.
    """
    output = _check(format, output)
    clf = Classifier(model, **options)
    rows = RowFile(output, clf.describe(), with_framing=clf.preprocess.framing == "cell")
    done = rows.start(resume)
    problems: list = []
    start = time.perf_counter()
    try:
        for predictions, found in clf.iter_predict(paths, progress=progress, workers=workers,
                                                   skip=(lambda item: item.source in done) if done else None):
            rows.add(predictions)
            problems += found
    except BaseException:
        rows.close()
        if rows.rows:
            print(f"bloodcell predict: stopped; the {rows.rows} image(s) classified so far are in {rows.path}; "
                  "run the same command with --resume to continue.", file=sys.stderr)
        raise
    seconds = time.perf_counter() - start
    new = rows.rows - rows.resumed
    if not rows.rows:
        rows.remove()
        raise PredictionRun([], problems).nothing_classified()
    diff, extra, images = _finish(format, output, rows, problems)
    notes = outputs.notes(clf.abstain_source, clf.abstain_threshold, clf.has_ood)
    return ArchiveResult(output, images, new, problems, diff, rows.model, seconds, extra, notes)
