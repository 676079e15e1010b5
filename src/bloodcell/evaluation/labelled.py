"""Read a labelled dataset for evaluation, keeping the classes a model can predict.

:func:`load_labelled` reads a manifest split, a class-folder tree or an
``.npz`` through :mod:`bloodcell.data`; :func:`map_labels` maps a dataset's
label indices onto a model's classes by name.
"""

from __future__ import annotations

import numpy as np

from bloodcell.core.classes import CLASSES, canonical_class
from bloodcell.core.errors import DataError
from bloodcell.data import load_arrays, open_dataset
from bloodcell.evaluation.metrics import align_classes


def map_labels(labels, label_names, model_classes) -> tuple[np.ndarray, dict[str, int]]:
    """Dataset label indices to model class indices (-1 where the model lacks the class).

    Returns the mapped labels and the image count per dataset class the model lacks.
    """
    model_idx = {canonical_class(c): i for i, c in enumerate(model_classes)}
    names = [canonical_class(n) for n in label_names]
    lut = np.array([model_idx.get(n, -1) for n in names], dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"Labels must index the {len(names)} dataset classes; got {labels.min()}..{labels.max()}.")
    y = lut[labels] if len(labels) else labels
    left_out = {names[k]: int((labels == k).sum()) for k in range(len(names)) if lut[k] < 0 and (labels == k).any()}
    return y, left_out


def _problem_text(p) -> str:
    msg = getattr(p, "message", None)
    return str(msg) if msg else str(p)


def _split_indices(ds, data, split: str | None) -> tuple[list[int], str | None, list[str]]:
    """The indices of ``split`` (the whole dataset when it has no splits), the split used and notes."""
    notes: list[str] = []
    use = split
    if split and not ds.has_splits:
        use = None
        notes.append(f"{data} has no train/val/test split, so all its images were evaluated.")
    indices = ds.split_indices(use) if use else list(range(len(ds)))
    if not indices:
        splits = sorted({s.split for s in ds.samples if s.split})
        raise DataError(
            f"{data}: no images in split {use!r}; the dataset has splits {', '.join(splits) or 'none'}. "
            "Pass --split with one of them."
        )
    return indices, use, notes


def _check_labelled(ds, data, indices: list[int]) -> None:
    unlabelled = [ds.samples[i].source_id for i in indices if ds.samples[i].label is None]
    if len(unlabelled) == len(indices):
        raise DataError(
            f"{data}: the images carry no class labels, so accuracy cannot be measured. Use a class-folder tree "
            "or a manifest with a label column (`bloodcell predict` classifies unlabelled images)."
        )
    if unlabelled:
        raise DataError(
            f"{data}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]}). "
            "Fill in their labels or leave them out of the evaluation data."
        )


def load_labelled(data, preprocess, split: str | None = "test", progress: bool = True):
    """Read a labelled dataset's images, prepared for a model, keeping the model's classes.

    Parameters
    ----------
    data : str or Path
        Anything :func:`bloodcell.data.open_dataset` reads (a class-folder
        tree, an ``.npz``, a CSV manifest such as ``bloodcell split`` writes).
    preprocess : PreprocessConfig
        The model's preprocessing (its ``class_names`` are the model's classes).
    split : str or None
        Split to read from a manifest or MedMNIST file; a dataset without
        splits (a folder, a plain ``.npz``) is read whole, with a note.
    progress : bool
        Show decoding progress on stderr.

    Returns
    -------
    tuple
        ``(arrays, split_used, problems, notes, left_out)``: the
        :class:`~bloodcell.data.ArraySet`, the split read, the files skipped
        (messages), notes for the user, and the image count per dataset
        class the model cannot predict (those images are not decoded).

    Raises
    ------
    ModelError
        When the dataset and the model share no class.
    DataError
        When the dataset, or the split, is empty, unlabelled or unreadable.
    """
    ds = open_dataset(data, skip_unknown=True)
    indices, use, notes = _split_indices(ds, data, split)
    _check_labelled(ds, data, indices)
    present = [c for c in CLASSES if any(ds.samples[i].label == c for i in indices)]
    alignment = align_classes(present, preprocess.class_names)
    left_out = {c: sum(ds.samples[i].label == c for i in indices) for c in alignment.unknown}
    keep = [i for i in indices if ds.samples[i].label not in left_out]
    arrays = load_arrays(ds.select(keep), preprocess, class_names=preprocess.class_names, progress=progress)
    problems = [_problem_text(p) for p in list(ds.problems) + list(getattr(arrays, "skipped", []) or [])]
    return arrays, use, problems, notes, left_out
