"""Learning from a lab's unlabelled cells too: one round of class-balanced pseudo-labels.

``bloodcell adapt DATA --unlabelled MORE`` first adapts the model on the labelled
fitting cells alone (round one), classifies the lab's unlabelled cells with that
model, and gives each class of the labelled data as many of them as it has
labelled cells: the cells round one put into that class, most probable first,
never one its out-of-distribution check flags (:func:`pick`). Round two adapts
the starting model again, on the fitting cells and those. The held-out cells stay
labelled-only, so calibration measures what it measured before.

A lab always has such cells: the unreviewed ones of its cases, or any smear of
the same microscope, camera and stain.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from bloodcell.core.errors import DataError
from bloodcell.data.hashing import sha256_file
from bloodcell.data.readers.dataset import Dataset, Sample

#: How the unlabelled cells were chosen, for the model card.
RULE = ("one round: the model adapted on the labelled cells classified the unlabelled ones, and each class took "
        "as many of those it put into that class, most probable first, as it has labelled cells "
        "(none flagged not a blood cell)")


def open_unlabelled(path, labelled: Dataset) -> Dataset:
    """The lab's unlabelled cells: anything ``predict`` reads (files, folders, globs, datasets; any labels are
    ignored), without the images of ``labelled`` (the same bytes, or the same pixels), so no labelled or
    held-out cell is relabelled; one line when none is left."""
    from bloodcell.prediction.inputs import collect  # deferred: the prediction stage's reader of inputs

    items, problems = collect([path])
    samples, rows = [], []
    for item in items:
        file = item.path if item.path is not None else (item.dataset.samples[item.index].path if item.dataset else None)
        if file is not None:
            samples.append(Sample(item.source, None, Path(file)))
        else:
            samples.append(Sample(item.source, None, None, row=len(rows)))
            rows.append(item.read())
    if len({r.shape for r in rows}) > 1:
        raise DataError(f"{path}: its array images differ in size; give unlabelled cells as image files.")
    ds = Dataset(Path(path), "unlabelled", samples, list(problems), np.stack(rows) if rows else None)
    known = set(_keys(labelled, range(len(labelled))))
    keep = [i for i, key in enumerate(_keys(ds, range(len(ds)))) if key not in known]
    if not keep:
        why = f" ({problems[0].message})" if problems and not items else ""
        raise DataError(f"{path}: no image found to learn from without labels (besides the labelled cells){why}.")
    return ds.select(keep)


def _keys(ds: Dataset, indices) -> list[str]:
    """Content of each sample: the SHA-256 of its file, or the key of its pixels for array sources."""
    return [sha256_file(ds.samples[i].path) if ds.samples[i].path is not None else ds.content_key(i) for i in indices]


def pick(predictions, wanted: dict[str, int]) -> list[tuple[int, str]]:
    """``(index, class)`` of the cells to pseudo-label: for each class of ``wanted``, up to that many of the
    predictions of that class (most probable first), leaving out those flagged not a blood cell."""
    chosen = []
    for name, n in wanted.items():
        mine = [(p.probability, i) for i, p in enumerate(predictions)
                if p is not None and p.label == name and not p.not_a_blood_cell]
        chosen += [(i, name) for _, i in sorted(mine, key=lambda t: (-t[0], t[1]))[:n]]
    return sorted(chosen)


def classify(model: Path, cells: Dataset, batch_size: int = 64) -> list:
    """Predictions of the model folder ``model`` (PyTorch) for every cell of ``cells``; unreadable cells are
    left out (``None`` in their place)."""
    from bloodcell.prediction.classifier import Classifier  # deferred: imports the prediction stage

    clf = Classifier(model, backend="torch", batch_size=batch_size)
    out: list = [None] * len(cells)
    for start in range(0, len(cells), batch_size):
        idx, images = [], []
        for i in range(start, min(start + batch_size, len(cells))):
            try:
                images.append(cells.read(i))
                idx.append(i)
            except DataError:
                continue
        for i, p in zip(idx, clf.predict_arrays(images)):
            out[i] = p
    return out


def with_pseudo_labels(fit: Dataset, cells: Dataset, chosen: list[tuple[int, str]]) -> Dataset:
    """The fitting cells followed by the chosen unlabelled cells with their pseudo-labels (array sources are
    joined, their rows renumbered)."""
    extra = [replace(cells.samples[i], label=name) for i, name in chosen]
    if fit.arrays is None and cells.arrays is None:
        return Dataset(fit.source, fit.kind, [*fit.samples, *extra], list(fit.problems))
    parts = [a for a in (fit.arrays, cells.arrays) if a is not None]
    shapes = {a.shape[1:] for a in parts}
    if len(shapes) > 1:
        raise DataError(f"{cells.source}: its images are {shapes} while the labelled ones differ; give unlabelled "
                        "cells as image files, or as arrays of the labelled cells' size.")
    offset = 0 if fit.arrays is None else len(fit.arrays)
    extra = [s if s.row is None else replace(s, row=s.row + offset) for s in extra]
    return Dataset(fit.source, fit.kind, [*fit.samples, *extra], list(fit.problems), np.concatenate(parts))


def summary(cells: Dataset, predictions: list, chosen: list[tuple[int, str]], path) -> dict:
    """The record of what was learnt without labels, for ``model.json`` and the card."""
    counts: dict[str, int] = {}
    for _, name in chosen:
        counts[name] = counts.get(name, 0) + 1
    return {"data": str(path), "cells": len(cells), "read": sum(p is not None for p in predictions),
            "pseudo_labelled": counts, "rule": RULE}
