"""Training and validation arrays from a dataset: its own split, or a seeded stratified one.

``data`` may be a split manifest (rows with ``split`` = train/val/test), a
class-folder tree, an ``.npz`` file (plain or MedMNIST), or a CSV without a
split column. When it carries train and val rows those are used as they
are; otherwise a stratified validation share (``val_fraction``) is drawn
from the training rows with the run's seed and recorded in ``split.csv`` in
the run folder: exact copies are kept once, and near-duplicate groups (as
``bloodcell split`` finds them) stay on one side. Test rows are never used
for training or model selection.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.core.locate import DEFAULT_SHARE, typical_share
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data import load_arrays, open_dataset
from bloodcell.data.audit.checks import audit_dataset
from bloodcell.training.config import TrainConfig
from bloodcell.training.prepare import TrainData


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded stratified subset of ``size`` items (every class kept)."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    n_classes = len(np.unique(labels))
    if size < n_classes:
        raise ConfigError(f"A subset of {size} images cannot hold all {n_classes} classes; use at least {n_classes}.")
    idx, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(idx)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int, class_names) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (train, val) index arrays; each class needs at least 2 images."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    few = [f"{class_names[i]} ({counts[i]})" for i in range(len(class_names)) if 0 < counts[i] < 2]
    if few:
        raise DataError(
            f"Cannot split off a validation set: {', '.join(few)} has fewer than 2 images. "
            "Add images, or give a split manifest with train and val rows."
        )
    n_val = max(int(round(len(labels) * val_fraction)), int((counts > 0).sum()))
    if n_val >= len(labels):
        raise DataError(f"{len(labels)} images are too few to split off a validation set with every class.")
    train, val = train_test_split(np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def grouped_stratified_split(labels: np.ndarray, groups: list[str], val_fraction: float, seed: int,
                             class_names) -> tuple[np.ndarray, np.ndarray]:
    """:func:`stratified_split` over groups: every member of a group lands on the same side.

    Groups are taken in order of their first member and labelled by it, so
    when every image is its own group the split is the plain stratified one.
    """
    labels = np.asarray(labels)
    _, first, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_index=True,
                                   return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    tr, va = stratified_split(labels[first[order]], val_fraction, seed, class_names)
    in_val = np.isin(rank[group_of], va)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def manifest_sha256(train_ids, train_labels, val_ids, val_labels, class_names) -> str:
    """Hash of which images (by source id) and labels are in which split."""
    lines = sorted(
        [f"train\t{i}\t{class_names[int(y)]}" for i, y in zip(train_ids, train_labels)]
        + [f"val\t{i}\t{class_names[int(y)]}" for i, y in zip(val_ids, val_labels)]
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def write_split_csv(path: Path, train_ids, train_labels, val_ids, val_labels, class_names) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source_id", "label", "split"])
    for split, ids, labels in (("train", train_ids, train_labels), ("val", val_ids, val_labels)):
        for i, y in zip(ids, labels):
            w.writerow([i, class_names[int(y)], split])
    atomic_write_bytes(Path(path), buf.getvalue().encode())


def _arrays_of_split(ds, pre: PreprocessConfig, split: str, class_names, progress: bool):
    arrays = load_arrays(ds, pre, split=split, class_names=class_names, progress=progress)
    return arrays.images, np.asarray(arrays.labels), list(arrays.ids)


def _given_split(ds, cfg: TrainConfig, pre: PreprocessConfig, labelled, splits, progress: bool):
    """The data's own train and val rows."""
    if "train" not in splits:
        raise DataError(f"{cfg.data}: has val rows but no train rows; mark the training rows split=train.")
    present = {s.label for s in labelled if s.split in ("train", "val")}
    class_names = tuple(c for c in CLASSES if c in present)
    train = _arrays_of_split(ds, pre, "train", class_names, progress)
    val = _arrays_of_split(ds, pre, "val", class_names, progress)
    return class_names, train, val, {"split": "given"}


def _unique_indices(ds, indices: list[int], progress: bool) -> list[int]:
    """``indices`` with exact copies (same file content) kept once: they would leak between the splits."""
    seen: set[str] = set()
    unique = []
    for i, key in zip(indices, ds.content_keys(indices, progress=progress)):
        if key not in seen:
            seen.add(key)
            unique.append(i)
    return unique


def _drawn_split(ds, cfg: TrainConfig, pre: PreprocessConfig, pool: str | None, progress: bool):
    """A seeded stratified validation share drawn from the training rows."""
    indices = [i for i, s in enumerate(ds.samples) if s.label is not None and s.split == pool]
    unique = _unique_indices(ds, indices, progress)
    present = {ds.samples[i].label for i in unique}
    class_names = tuple(c for c in CLASSES if c in present)
    pool_ds = ds.select(unique)
    arrays = load_arrays(pool_ds, pre, class_names=class_names, progress=progress)
    labels = np.asarray(arrays.labels)
    # Near-duplicates (a second photograph of the same cell) are grouped as `bloodcell split` groups them.
    audit = audit_dataset(pool_ds, progress=progress)
    group_of = {s.source_id: g for s, g in zip(pool_ds.samples, audit.group_ids)}
    groups = [group_of[i] for i in arrays.ids]
    tr, va = grouped_stratified_split(labels, groups, cfg.val_fraction, cfg.seed, class_names)
    train = (arrays.images[tr], labels[tr], [arrays.ids[i] for i in tr])
    val = (arrays.images[va], labels[va], [arrays.ids[i] for i in va])
    info = {"exact_duplicates_dropped": len(indices) - len(unique),
            "near_duplicate_groups": sum(1 for n in Counter(groups).values() if n > 1), "split": "stratified",
            "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    return class_names, train, val, info


def _subset(part, size: int, seed: int):
    images, labels, ids = part
    if not size:
        return part
    keep = stratified_subset(labels, size, seed)
    return images[keep], labels[keep], [ids[i] for i in keep]


def measure_cell_share(data: str, crop_fraction: float, n: int = 200, default: float | None = DEFAULT_SHARE
                       ) -> float | None:
    """The share of the crop a located cell fills in up to ``n`` training images of ``data`` (evenly spread):
    :func:`~bloodcell.core.locate.typical_share`, ``default`` when no cell is located. It is also what a
    centre-crop model records as ``model.json["training_cell_share"]`` (``default=None``), the size
    ``bloodcell adapt`` scales a lab's cells to."""
    ds = open_dataset(data)
    rows = [i for i, s in enumerate(ds.samples) if s.label is not None and s.split in (None, "train")]
    step = max(1, len(rows) // n)
    images = []
    for i in rows[::step][:n]:
        try:
            images.append(ds.read(i))
        except DataError:
            continue  # an unreadable file is reported when the training images are loaded
    return typical_share(images, crop_fraction, default)


def load_training_data(cfg: TrainConfig, pre: PreprocessConfig, progress: bool = True) -> tuple[TrainData, dict]:
    """Load ``cfg.data`` as training and validation arrays for ``pre``.

    Returns the :class:`TrainData` and the ids per split (for ``split.csv``).

    Raises
    ------
    DataError
        When the data cannot be read, has no labelled training rows, or a
        split lacks a class.
    """
    if not cfg.data:
        raise ConfigError("No training data: pass --data PATH (a dataset folder, .npz, or a split manifest CSV).")
    ds = open_dataset(cfg.data)
    labelled = [s for s in ds.samples if s.label is not None]
    if not labelled:
        raise DataError(f"{cfg.data}: no labelled images found; training needs class labels.")
    splits = {s.split for s in labelled}
    n_test = sum(s.split == "test" for s in labelled)
    problems = list(getattr(ds, "problems", []))
    info = {"source": str(cfg.data), "excluded_test_images": n_test, "problems": len(problems),
            "problem_examples": [p.message for p in problems[:3]]}
    if "val" in splits:
        class_names, train, val, how = _given_split(ds, cfg, pre, labelled, splits, progress)
    else:
        pool = "train" if "train" in splits else None
        if pool is None and n_test:
            raise DataError(f"{cfg.data}: rows are marked test or unmarked only; mark training rows split=train.")
        class_names, train, val, how = _drawn_split(ds, cfg, pre, pool, progress)
    info.update(how)
    (tr_img, tr_lab, tr_ids), (va_img, va_lab, va_ids) = (_subset(train, cfg.max_train_samples, cfg.seed),
                                                          _subset(val, cfg.max_val_samples, cfg.seed))
    info.update(train_images=len(tr_lab), val_images=len(va_lab),
                train_counts=dict(zip(class_names, np.bincount(tr_lab, minlength=len(class_names)).tolist())),
                val_counts=dict(zip(class_names, np.bincount(va_lab, minlength=len(class_names)).tolist())))
    data = TrainData(np.ascontiguousarray(tr_img), tr_lab.astype(np.int64), np.ascontiguousarray(va_img),
                     va_lab.astype(np.int64), class_names, info,
                     manifest_sha256(tr_ids, tr_lab, va_ids, va_lab, class_names))
    return data, {"train": tr_ids, "val": va_ids}
