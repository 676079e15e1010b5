"""``bloodcell predict --fields``: whole smear fields found, classified and counted.

>>> import bloodcell
>>> run = bloodcell.predict(["smear/"], fields=True, overlay="overlays/")  # doctest: +SKIP
>>> run.fields[0].counts()                                               # doctest: +SKIP

:func:`predict` is the ``bloodcell predict`` verb, whole fields or not, and :func:`field_warnings`
says which images classified as one cell look like whole fields with several white cells.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import check_writable_file, check_writable_folder
from bloodcell.core.settings import check_workers
from bloodcell.data import Problem
from bloodcell.fields.analyse import FieldResult, analyse_image, fields_warning, overall_counts, overall_differential
from bloodcell.fields.detect import detect, quick_white_count
from bloodcell.fields.output import fields_csv, render
from bloodcell.fields.overlay import overlay_name, write_overlay
from bloodcell.fields.tiles import ALL_SHARED, shared_edges
from bloodcell.prediction import classifier as single
from bloodcell.prediction.inputs import collect
from bloodcell.prediction.outputs import FORMATS, write_text

#: An image is reported as a likely field when it shows at least this many white cells.
SEVERAL = 3


@dataclass
class FieldsRun:
    """What :func:`predict_fields` did: a result per field, the skipped inputs, the totals, the
    output text, the file written and the overlays written."""

    fields: list[FieldResult]
    problems: list
    counts: dict
    differential: object
    text: str
    output: Path | None
    overlays: list[Path] = field(default_factory=list)
    #: Said when the cells look unlike the model's training data (:func:`~bloodcell.fields.analyse.fields_warning`).
    warning: str | None = None


def iter_fields(classifier, inputs, tile_overlap: float = 0.0, progress: bool = False) -> Iterator[tuple]:
    """Analyse every field among ``inputs`` (files, folders, globs, datasets, as for ``bloodcell
    predict``), yielding ``(result, image, None)`` per readable field and ``(None, None, problem)``
    per skipped input."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    items, problems = collect(list(inputs))
    for q in problems:
        yield None, None, q
    edges = shared_edges([i.source for i in items]) if tile_overlap > 0 else {}
    for item in tqdm(items, desc="fields", unit="field", disable=None if progress else True):
        try:
            image = item.read()
        except DataError as e:
            yield None, None, Problem(item.source, "unreadable", str(e))
            continue
        yield analyse_image(classifier, image, item.source, tile_overlap, edges.get(item.source, ALL_SHARED)), image, None


class PartialFields:
    """The cells of the fields done so far, appended as CSV rows to ``<output>.partial`` field by
    field, so a run that stops early keeps its work; removed once the output is written."""

    def __init__(self, output: Path, class_names):
        self.path = output.with_name(output.name + ".partial")
        self.class_names = class_names
        self.rows = 0
        self._file = None

    def add(self, result: FieldResult) -> None:
        text = fields_csv([result], self.class_names)
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8", newline="")  # kept open across fields
        else:
            text = text.split("\n", 1)[1]  # the header once
        self._file.write(text)
        self._file.flush()
        self.rows += len(result.cells)

    def close(self, keep: bool) -> Path | None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if keep and self.path.exists():
            return self.path
        self.path.unlink(missing_ok=True)
        return None


def predict_fields(paths, model=None, *, format: str = "table", output_path=None, overlay_dir=None,
                   tile_overlap: float = 0.0, progress: bool = False, classifier=None, **options) -> FieldsRun:
    """Find, classify and count the cells of whole smear fields.

    Parameters
    ----------
    paths : str, Path or list of them
        Field images, folders, globs or datasets.
    model : str or Path, optional
        Model folder or ``.onnx`` file (default: the bundled model).
    format : {"table", "csv", "json"}
        ``csv`` has one row per cell (``source, cell, x0, y0, x1, y1, at_border, ...``); ``json``
        one object per field with each cell's ``box`` and ``at_border``.
    output_path : str or Path, optional
        File to write (checked before any work starts); else the text is only returned. While
        the run goes on, the cells of each finished field are appended to ``<output>.partial``
        (CSV), which stays if the run stops early.
    overlay_dir : str or Path, optional
        Folder for one PNG per field with the boxes coloured by class.
    tile_overlap : float
        Pixels that neighbouring tiles of one slide share (see :mod:`bloodcell.fields.tiles`).
    classifier : Classifier, optional
        An open classifier to use instead of opening ``model``.
    **options
        ``backend``, ``batch_size``, ``tta``, ``abstain_threshold``, ``ood_threshold``, ``threads``
        as for :class:`~bloodcell.prediction.classifier.Classifier`.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}.")
    if tile_overlap < 0:
        raise ConfigError(f"tile overlap must be 0 or more pixels, got {tile_overlap}.")
    output_path = check_writable_file(output_path) if output_path is not None else None
    folder = check_writable_folder(overlay_dir, "overlay folder", "--overlay") if overlay_dir is not None else None
    clf = classifier or single.Classifier(model, **options)
    partial = PartialFields(output_path, clf.class_names) if output_path is not None else None
    results, problems, written = _run(clf, paths, tile_overlap, progress, partial, folder)
    if not results:
        if partial is not None:
            partial.close(keep=False)
        error = DataError(f"no field could be read ({len(problems)} input(s) skipped, reasons above).")
        error.problems = problems
        raise error
    described = clf.describe()
    text = render(format, described, results, problems, clf.class_names)
    if partial is not None:
        try:
            write_text(output_path, text)
        except BaseException:  # the partial rows stay when the output could not be written
            partial.close(keep=True)
            raise
        partial.close(keep=False)
    diff = overall_differential(results, clf.class_names)
    return FieldsRun(results, problems, overall_counts(results), diff, text, output_path, written,
                     fields_warning(results, diff, described))


def _run(clf, paths, tile_overlap: float, progress: bool, partial: PartialFields | None, folder: Path | None):
    """Analyse the fields, keeping each finished one in ``partial`` (closed and kept when the run
    stops early) and drawing its overlay into ``folder``; returns the results, the skipped
    inputs and the overlays written."""
    results, problems, written, taken = [], [], [], set()
    try:
        for result, image, problem in iter_fields(clf, paths, tile_overlap, progress):
            if problem is not None:
                problems.append(problem)
                continue
            results.append(result)
            if partial is not None:
                partial.add(result)
            if folder is not None:
                path = folder / overlay_name(result.source, taken)
                write_overlay(path, image, result)
                written.append(path)
    except BaseException:
        kept = partial.close(keep=True) if partial is not None else None
        if kept is not None:
            print(f"bloodcell predict: stopped; the cells of the {len(results)} field(s) done so far are in {kept}.",
                  file=sys.stderr)
        raise
    return results, problems, written


def predict(paths, model=None, *, fields: bool = False, overlay: str | Path | None = None, tile_overlap: float = 0.0,
            format: str = "table", output: str | Path | None = None, differential: str = "auto", resume: bool = False,
            engine: str = "local", workers: int | None = None, progress: bool = False, **options):
    """Classify images: ``bloodcell predict``, with the same options and the same routes.

    - ``fields=True``: every cell of whole smear fields (:func:`predict_fields`; ``overlay`` and
      ``tile_overlap`` apply to fields only), returns a :class:`FieldsRun`.
    - ``output`` in ``csv``, ``json``, ``jsonl`` or ``parquet`` (and ``differential`` not
      ``"only"``): rows streamed into the file as they are classified, resumable with ``resume=True``
      (:func:`bloodcell.prediction.archive.predict_to_file`; ``engine="ray"``: a list of image paths
      classified on Ray into Parquet, :func:`bloodcell.prediction.ray_engine.predict_ray`), returns an
      :class:`~bloodcell.prediction.archive.ArchiveResult` (no predictions in memory).
    - otherwise one centred cell per image, returns a
      :class:`~bloodcell.prediction.classifier.PredictResult` with every prediction.

    ``workers`` are the decoding threads (Ray: model actors); other keywords (``backend``,
    ``batch_size``, ``tta``, ``abstain_threshold``, ``ood_threshold``, ``threads``, ``precision``)
    are those of :class:`~bloodcell.prediction.classifier.Classifier`.
    """
    check_workers(workers)
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}.")
    if fields:
        _check_fields(differential, resume, engine, workers)
        return predict_fields(paths, model, format=format, output_path=output, overlay_dir=overlay,
                              tile_overlap=tile_overlap, progress=progress, **options)
    if overlay is not None or tile_overlap:
        raise ConfigError("--overlay and --tile-overlap apply to whole fields; add --fields.")
    if _streamed(format, output, differential, resume, engine, options):
        if engine == "ray":
            from bloodcell.prediction.ray_engine import predict_ray  # deferred: imports Ray

            options.pop("backend", None)
            return predict_ray(paths, output, model=model, workers=workers, resume=resume, **options)
        from bloodcell.prediction.archive import predict_to_file  # deferred: only file outputs need it

        return predict_to_file(paths, output, format=format, resume=resume, model=model, workers=workers,
                               progress=progress, **options)
    return single.predict(paths, model, format=format, output=output, differential=differential, workers=workers,
                          progress=progress, **options)


def _check_fields(differential: str, resume: bool, engine: str, workers: int | None) -> None:
    """One-line errors for the single-cell options a whole-field run has no use for."""
    if differential == "only":
        raise ConfigError("--differential only is for single-cell images; a --fields run prints the counts "
                          "and differential after the cells.")
    if resume:
        raise ConfigError("--resume continues single-cell runs; a --fields run keeps the cells of the fields "
                          "done so far in OUTPUT.partial (CSV) when it stops, and is run again whole.")
    if engine != "local":
        raise ConfigError("--engine ray classifies single-cell images; run --fields on the local engine.")
    if workers is not None:
        raise ConfigError("--workers sets the decoding threads of single-cell runs; a --fields run reads one "
                          "field at a time.")


def _streamed(format: str, output, differential: str, resume: bool, engine: str, options: dict) -> bool:
    """Whether the run streams rows into ``output``; one-line errors for combinations that cannot work."""
    streamed = output is not None and format != "table" and differential != "only"
    if format in ("jsonl", "parquet") and not streamed:
        raise ConfigError(f"-f {format} writes a file: pass -o OUTPUT (and not --differential only).")
    if resume and not streamed:
        raise ConfigError("--resume continues a run written with -o OUTPUT in csv, json, jsonl or parquet.")
    if engine == "ray" and (format != "parquet" or not streamed or options.get("tta")):
        raise ConfigError("--engine ray writes Parquet: pass -f parquet -o FOLDER (no --tta).")
    if engine == "ray" and options.get("backend", "auto") not in ("auto", "onnx"):
        raise ConfigError("--engine ray runs the model on onnxruntime: leave out --backend torch.")
    return streamed


#: The quick count needs a copy whose longer side is at least this (it works on 96 px).
QUICK_SIDE = 128


def _small_copy(item) -> np.ndarray:
    """The image, from a JPEG decoded at the smallest 1/2, 1/4 or 1/8 scale that keeps
    :data:`QUICK_SIDE` pixels (several times cheaper than a full decode); other files whole."""
    if item.path is None or item.path.suffix.lower() not in (".jpg", ".jpeg"):
        return item.read()
    with Image.open(item.path) as picture:
        scale = QUICK_SIDE / max(picture.size)
        picture.draft("RGB", (max(1, int(picture.width * scale)), max(1, int(picture.height * scale))))
        return np.asarray(picture.convert("RGB"))


def field_warnings(paths, several: int = SEVERAL) -> list[str]:
    """One line per image that looks like a whole field with ``several`` or more white cells,
    naming the file and the count and suggesting ``--fields``.

    Cheap: a quick count on the single-cell locator's small copy (about 1.4 ms of CPU per image,
    JPEGs decoded at reduced scale) picks the candidates, and only those run the field detector
    to confirm. Rows of datasets (``.npz``, manifests) and images in class-folder trees are
    labelled single cells and are not checked.
    """
    items, _ = collect(list(paths) if not isinstance(paths, (str, Path)) else [paths])
    lines = []
    for item in items:
        if item.dataset is not None or item.label is not None:
            continue  # rows of a dataset, or images of a class-folder tree: labelled single cells
        try:
            if quick_white_count(_small_copy(item)) < several:
                continue
            n = len(detect(item.read()).white)
        except (DataError, OSError, ValueError):
            continue  # reported by the classification itself
        if n >= several:
            lines.append(f"{item.source}: looks like a whole field with {n} white cells, classified here as one "
                         "centred cell; use --fields to find, classify and count every cell.")
    return lines
