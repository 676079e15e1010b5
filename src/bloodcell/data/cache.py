"""Prepared arrays of a dataset through the preprocessing cache, and the ``cache`` verb.

:func:`load_arrays` turns a dataset (or one split of it) into ``uint8`` arrays
with integer labels, decoding only images the cache does not hold yet
(:mod:`bloodcell.data.pixels`). :func:`cache` is ``bloodcell cache``: decode a
dataset ahead of training, or show or clear what the cache holds.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bloodcell.core import settings
from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.files import check_writable_folder
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.data.pixels import _NAME, ArraySet, PixelCache
from bloodcell.data.readers.dataset import Dataset, Problem
from bloodcell.data.readers.open import open_dataset

log = logging.getLogger("bloodcell.data")

__all__ = ["ArraySet", "CacheResult", "PixelCache", "cache", "cache_folders", "load_arrays"]


def load_arrays(
    source,
    preprocess: PreprocessConfig,
    split=None,
    class_names=None,
    workers: int | None = None,
    progress: bool = True,
    require_labels: bool = True,
) -> ArraySet:
    """Prepared images and integer labels of a dataset, through the on-disk cache.

    Parameters
    ----------
    source : str, Path or Dataset
        Anything :func:`open_dataset` reads, or an open :class:`Dataset`.
    preprocess : PreprocessConfig
        Size and crop of the prepared images; its mean/std travel with the result.
    split : str or sequence of str, optional
        Keep only samples of this split (``"train"``, ``"val"``, ``"test"``);
        needs a source with a split assignment, such as a ``bloodcell split`` manifest.
    class_names : sequence of str, optional
        Index space of the labels (e.g. a model's classes). Default: the classes
        present in the whole dataset (all splits), in :data:`bloodcell.CLASSES` order.
    workers : int, optional
        Decoding threads; default :func:`bloodcell.core.settings.default_workers`.
    progress : bool
        Show progress bars on stderr.
    require_labels : bool
        Raise if a selected sample has no label (otherwise its label is ``-1``).

    Returns
    -------
    ArraySet
        Images that could not be decoded are left out, listed in
        ``ArraySet.skipped`` and logged as a warning.

    Raises
    ------
    DataError
        If the source cannot be read, a label is outside ``class_names``, a
        sample is unlabelled while ``require_labels``, or no image decodes.
    ConfigError
        If images must be decoded and the cache folder cannot be written.
    """
    ds = source if isinstance(source, Dataset) else open_dataset(source)
    indices = ds.split_indices(split) if split is not None else list(range(len(ds)))
    if not indices:
        raise DataError(f"{ds.source}: split {split!r} holds no samples.")
    names, labels = _label_indices(ds, indices, class_names, require_labels)
    keys = ds.content_keys(indices, progress=progress)
    pixels = PixelCache(preprocess)
    where, failed, fresh = _decode_missing(ds, indices, keys, pixels, workers, progress)
    ok = [j for j, k in enumerate(keys) if k in where]
    skipped = _skipped(ds, indices, keys, where, failed, pixels.folder)
    if not ok:
        raise DataError(f"{ds.source}: none of the {len(keys)} selected images could be decoded; first: {skipped[0].message}")
    images = pixels.gather([keys[j] for j in ok], where, fresh)
    return ArraySet(images=images, labels=labels[ok], class_names=names,
                    ids=[ds.samples[indices[j]].source_id for j in ok],
                    preprocess=replace(preprocess, class_names=names), skipped=skipped)


def _decode_missing(ds: Dataset, indices: list[int], keys: list[str], pixels: PixelCache, workers: int | None,
                    progress: bool) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Decode the selected samples the cache lacks; ``(where, failed, freshly decoded images)``."""
    where, failed = pixels.index()
    todo: dict[str, object] = {}
    for j, i in enumerate(indices):
        k = keys[j]
        if k not in where and k not in failed and k not in todo:
            s = ds.samples[i]
            todo[k] = s.path if s.path is not None else ds.arrays[s.row]
    if not todo:
        return where, failed, {}
    fresh = pixels.build(list(todo.items()), workers=workers, progress=progress)
    where, failed = pixels.index()
    return where, failed, fresh


def _label_indices(ds: Dataset, indices: list[int], class_names, require_labels: bool):
    """``(class names, int64 label per selected sample)``; ``-1`` for unlabelled samples."""
    names = tuple(canonical_class(c) for c in class_names) if class_names is not None else ds.class_names
    if class_names is not None and len(set(names)) != len(names):
        raise DataError(f"class_names {list(class_names)} name the same class twice.")
    position = {c: i for i, c in enumerate(names)}
    labels = np.empty(len(indices), np.int64)
    unlabelled, outside = [], {}
    for j, i in enumerate(indices):
        label = ds.samples[i].label
        if label is None:
            unlabelled.append(ds.samples[i].source_id)
            labels[j] = -1
        elif label not in position:
            outside.setdefault(label, []).append(ds.samples[i].source_id)
        else:
            labels[j] = position[label]
    if outside:
        detail = "; ".join(f"{len(v)} labelled {k!r} (e.g. {v[0]})" for k, v in outside.items())
        raise DataError(
            f"{ds.source}: samples with classes outside class_names {list(names)}: {detail}. "
            "Leave those classes out of the data or use a model trained on them."
        )
    if unlabelled and require_labels:
        raise DataError(
            f"{ds.source}: {len(unlabelled)} sample(s) have no label (e.g. {unlabelled[0]}). "
            "Fill in the 'label' column or pass require_labels=False."
        )
    return names, labels


def _skipped(ds: Dataset, indices: list[int], keys: list[str], where: dict, failed: dict,
             folder: Path) -> list[Problem]:
    skipped = []
    for j, k in enumerate(keys):
        if k not in where:
            s = ds.samples[indices[j]]
            msg = failed.get(k, f"{_NAME}: was not decoded into the cache (cache folder {folder} not writable?).")
            skipped.append(Problem(s.source_id, "unreadable", msg.replace(_NAME, str(s.path or s.source_id))))
    if skipped:
        log.warning("%d image(s) could not be decoded and were left out: %s", len(skipped),
                    "; ".join(p.message for p in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    return skipped


@dataclass
class CacheResult:
    """What :func:`cache` did.

    Attributes
    ----------
    root : Path
        The cache root (``BLOODCELL_CACHE``).
    arrays : ArraySet or None
        The decoded dataset, when one was given.
    seconds : float
        Time to make ``arrays`` ready.
    folders : list of dict
        With ``info``: one entry per cached size and crop (``folder``, ``images``,
        ``image_size``, ``crop_fraction``, ``shards``, ``bytes``).
    cleared : Path or None
        With ``clear``: the folder of decoded images that was removed.
    """

    root: Path
    arrays: ArraySet | None = None
    seconds: float = 0.0
    folders: list[dict] = field(default_factory=list)
    cleared: Path | None = None


def cache(data=None, size: int = 128, crop: float = 1.0, split: str | None = None, workers: int | None = None,
          info: bool = False, clear: bool = False, quiet: bool = False) -> CacheResult:
    """Decode a dataset into the preprocessing cache, or show or clear the cache (``bloodcell cache``).

    Parameters
    ----------
    data : str or Path, optional
        Class-folder dataset, ``.npz`` file or CSV manifest; needed unless
        ``info`` or ``clear``.
    size : int
        Image side in pixels.
    crop : float
        Centred square crop as a fraction of the shorter side, before resizing.
    split : str, optional
        Only this split (``"train"``, ``"val"``, ``"test"``) of a manifest.
    workers : int, optional
        Decoding threads; default ``BLOODCELL_WORKERS`` or the CPU count.
    info : bool
        List what the cache holds instead of decoding.
    clear : bool
        Delete the cache's decoded images instead of decoding.
    quiet : bool
        No progress bar.

    Returns
    -------
    CacheResult

    Raises
    ------
    ConfigError
        Without ``data`` (unless ``info`` or ``clear``), or when the cache folder cannot be written.
    DataError
        When the dataset cannot be read or none of its images decodes.
    """
    root = settings.cache_root()
    if clear:
        target = root / "pixels"
        if target.is_dir():
            shutil.rmtree(target)
        return CacheResult(root, cleared=target)
    if info:
        return CacheResult(root, folders=cache_folders(root))
    if not data:
        raise ConfigError("bloodcell cache needs DATA (a dataset to decode), or --info / --clear.")
    check_cache_root(root)
    settings.check_workers(workers)
    cfg = PreprocessConfig(image_size=size, crop_fraction=crop)
    t = time.perf_counter()
    arrays = load_arrays(data, cfg, split=split, workers=workers, progress=not quiet, require_labels=False)
    return CacheResult(root, arrays=arrays, seconds=time.perf_counter() - t)


def check_cache_root(root: Path) -> Path:
    """Prove the cache root can be written, before any decoding; a :class:`ConfigError` names it otherwise."""
    return check_writable_folder(root, what="cache folder", flag="BLOODCELL_CACHE")


def cache_folders(root: Path) -> list[dict]:
    """One entry per cached size and crop under ``root``: what :func:`cache` with ``info`` lists."""
    base = Path(root) / "pixels"
    out = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        shards = list(folder.glob("shard-*.json"))
        try:
            pix = json.loads((folder / "preprocess.json").read_text())
        except (OSError, ValueError):
            pix = {}
        out.append({
            "folder": folder,
            "images": sum(len(json.loads(p.read_text()).get("keys", [])) for p in shards),
            "image_size": pix.get("image_size", "?"),
            "crop_fraction": pix.get("crop_fraction", "?"),
            "shards": len(shards),
            "bytes": sum(p.stat().st_size for p in folder.glob("shard-*.npy")),
        })
    return out


def sample_rows(source, n: int, seed: int = 0, option: str = "n") -> Dataset:
    """Up to ``n`` rows of ``source`` chosen at random (seeded), as a dataset; from the ``train``
    rows only when ``source`` is a split manifest, so no validation or test image shapes what they
    are used for. ``option`` names ``n`` in the errors. Nothing is decoded."""
    if n < 1:
        raise ConfigError(f"{option} must be at least 1, got {n}.")
    ds = open_dataset(source)
    pool = np.asarray(ds.split_indices("train") if ds.has_splits else range(len(ds)), dtype=int)
    if not len(pool):
        raise ConfigError(f"{source}: the split manifest has no 'train' rows to draw {option} images from.")
    pick = np.sort(pool[np.random.default_rng(seed).permutation(len(pool))[:n]])
    return ds.select(pick.tolist())
