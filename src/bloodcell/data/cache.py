"""The preprocessing cache: every image decoded once per size and crop.

Decoded, centre-cropped and resized images are stored as ``uint8`` arrays under
``<cache root>/pixels/<pixel key>/`` (``BLOODCELL_CACHE``, default
``.cache/bloodcell``, ignored by git). Each entry is keyed by the SHA-256 of the
image's bytes, and the folder by :meth:`PreprocessConfig.pixel_key` (size and
crop), so a changed file or a changed setting is decoded again while identical
files are decoded once. Entries live in shards of up to :data:`SHARD_SIZE`
images (``shard-*.npy`` + ``shard-*.json`` listing the keys and the files that
could not be decoded); a shard is written atomically as soon as it is full, so
an interrupted build resumes where it stopped. Decoding runs on a few threads
(:mod:`bloodcell.data.workers`) and goes through
:func:`bloodcell.core.preprocess.load_prepared`, the same path evaluation and
serving use.

Normalization is not cached: :meth:`ArraySet.normalized` applies the mean/std
of the :class:`PreprocessConfig` stored with the arrays, on the fly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodcell.core import settings
from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_save_npy, atomic_write_json
from bloodcell.core.preprocess import PreprocessConfig, load_prepared, normalize, prepare
from bloodcell.data.readers.dataset import Dataset, Problem
from bloodcell.data.readers.open import open_dataset
from bloodcell.data.workers import for_each_result

log = logging.getLogger("bloodcell.data")

SHARD_SIZE = 1024
CHUNK = 32
_NAME = "\x00file\x00"


@dataclass
class ArraySet:
    """Prepared images with integer labels, ready for training or evaluation.

    Attributes
    ----------
    images : numpy.ndarray
        ``uint8`` ``(N, S, S, 3)``, centre-cropped and resized, not normalized.
    labels : numpy.ndarray
        ``int64`` ``(N,)`` indices into ``class_names`` (``-1`` for unlabelled
        samples when loaded with ``require_labels=False``).
    class_names : tuple of str
    ids : list of str
        Source id of each image.
    preprocess : PreprocessConfig
        The settings the images were prepared with, ``class_names`` included;
        store it with a model so every stage prepares images identically.
    skipped : list of Problem
        Samples left out because they could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    ids: list[str]
    preprocess: PreprocessConfig
    skipped: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, index=slice(None)) -> np.ndarray:
        """Images at ``index`` as normalized ``float32`` NCHW (mean/std of :attr:`preprocess`)."""
        batch = self.images[index]
        if batch.ndim == 3:
            batch = batch[None]
        return normalize(batch, self.preprocess)


def _prepare_chunk(task):
    size, crop, items = task
    cfg = PreprocessConfig(image_size=size, crop_fraction=crop)
    out = np.empty((len(items), size, size, 3), np.uint8)
    keys: list[str] = []
    failed: dict[str, str] = {}
    for key, src in items:
        try:
            arr = prepare(src, cfg) if isinstance(src, np.ndarray) else load_prepared(src, cfg, name=_NAME)
        except DataError as e:
            failed[key] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must not end a long build; it is reported
            failed[key] = f"{_NAME}: cannot be decoded ({type(e).__name__}: {e}). Re-export or remove it."
            continue
        out[len(keys)] = arr
        keys.append(key)
    return keys, out[: len(keys)], failed


class PixelCache:
    """Content-addressed store of prepared images for one size and crop.

    Parameters
    ----------
    preprocess : PreprocessConfig
        Only ``image_size`` and ``crop_fraction`` matter here.
    root : Path, optional
        Cache root; default :func:`bloodcell.core.settings.cache_root`.
    """

    def __init__(self, preprocess: PreprocessConfig, root: Path | None = None):
        self.preprocess = preprocess
        self.root = Path(root) if root is not None else settings.cache_root()
        self.folder = self.root / "pixels" / preprocess.pixel_key()
        self._counter = 0

    def index(self) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        """``({key: (shard, row)}, {key: failure message})`` over every complete shard."""
        where: dict[str, tuple[str, int]] = {}
        failed: dict[str, str] = {}
        if not self.folder.is_dir():
            return where, failed
        import json

        for meta_path in sorted(self.folder.glob("shard-*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                npy = meta_path.with_suffix(".npy")
                n = len(meta["keys"])
                if n and np.load(npy, mmap_mode="r").shape[0] != n:
                    continue
            except (OSError, ValueError, KeyError):
                continue
            stem = meta_path.stem
            for row, key in enumerate(meta["keys"]):
                where.setdefault(key, (stem, row))
            for key, msg in meta.get("failed", {}).items():
                failed.setdefault(key, msg)
        return where, failed

    def _write_shard(self, keys: list[str], arrays: list[np.ndarray], failed: dict[str, str]) -> None:
        self._counter += 1
        stem = f"shard-{time.time_ns()}-{os.getpid()}-{self._counter}"
        s = self.preprocess.image_size
        if len(keys):
            atomic_save_npy(self.folder / f"{stem}.npy", arrays)
        atomic_write_json(self.folder / f"{stem}.json", {
            "format": 1,
            "pixel": {"image_size": s, "crop_fraction": self.preprocess.crop_fraction},
            "keys": keys,
            "failed": failed,
        }, indent=None)

    def build(self, items: list[tuple[str, object]], workers: int | None = None,
              progress: bool = True) -> dict[str, np.ndarray]:
        """Decode and store ``items`` (``(key, path or RGB uint8 array)``) not yet cached.

        Returns the freshly decoded images by key, so the caller need not read them back.
        """
        fresh: dict[str, np.ndarray] = {}
        if not items:
            return fresh
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / "preprocess.json",
                          {"image_size": self.preprocess.image_size, "crop_fraction": self.preprocess.crop_fraction})
        workers = settings.default_workers() if workers is None else max(1, int(workers))
        size, crop = self.preprocess.image_size, self.preprocess.crop_fraction
        tasks = [(size, crop, [(k, str(src) if isinstance(src, Path) else src) for k, src in items[i:i + CHUNK]])
                 for i in range(0, len(items), CHUNK)]
        buf_keys: list[str] = []
        buf_arrays: list[np.ndarray] = []
        buf_failed: dict[str, str] = {}
        bar = tqdm(total=len(items), desc=f"caching images at {size}px", unit="img", disable=not progress,
                   file=sys.stderr, mininterval=0.5, smoothing=0.1)

        def flush():
            if buf_keys or buf_failed:
                self._write_shard(list(buf_keys), list(buf_arrays), dict(buf_failed))
            buf_keys.clear(), buf_arrays.clear(), buf_failed.clear()

        def consume(result):
            keys, arrs, failed = result
            for j, k in enumerate(keys):
                fresh[k] = arrs[j]
            buf_keys.extend(keys)
            if len(keys):
                buf_arrays.append(arrs)
            buf_failed.update(failed)
            bar.update(len(keys) + len(failed))
            if len(buf_keys) + len(buf_failed) >= SHARD_SIZE:
                flush()

        try:
            for_each_result(_prepare_chunk, tasks, workers, consume)
        finally:
            flush()
            bar.close()
        return fresh

    def gather(self, keys: list[str], where: dict[str, tuple[str, int]],
               fresh: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Stack the images for ``keys``: from ``fresh`` when there, else from the shards in ``where``."""
        s = self.preprocess.image_size
        out = np.empty((len(keys), s, s, 3), np.uint8)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        fresh = fresh or {}
        for pos, key in enumerate(keys):
            if key in fresh:
                out[pos] = fresh[key]
                continue
            stem, row = where[key]
            by_shard.setdefault(stem, []).append((row, pos))
        for stem, pairs in by_shard.items():
            pairs.sort()
            rows = np.fromiter((r for r, _ in pairs), np.int64, len(pairs))
            pos = np.fromiter((p for _, p in pairs), np.int64, len(pairs))
            shard = np.load(self.folder / f"{stem}.npy", mmap_mode="r")
            if len(rows) * 2 >= shard.shape[0]:
                shard = np.load(self.folder / f"{stem}.npy")
            out[pos] = shard[rows]
        return out


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
    """
    ds = source if isinstance(source, Dataset) else open_dataset(source)
    indices = ds.split_indices(split) if split is not None else list(range(len(ds)))
    if not indices:
        raise DataError(f"{ds.source}: split {split!r} holds no samples.")
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
    keys = ds.content_keys(indices, progress=progress)
    cache = PixelCache(preprocess)
    where, failed = cache.index()
    todo: dict[str, object] = {}
    for j, i in enumerate(indices):
        k = keys[j]
        if k not in where and k not in failed and k not in todo:
            s = ds.samples[i]
            todo[k] = s.path if s.path is not None else ds.arrays[s.row]
    fresh: dict[str, np.ndarray] = {}
    if todo:
        fresh = cache.build(list(todo.items()), workers=workers, progress=progress)
        where, failed = cache.index()
    ok = [j for j, k in enumerate(keys) if k in where]
    skipped = []
    for j, k in enumerate(keys):
        if k not in where:
            s = ds.samples[indices[j]]
            msg = failed.get(k, f"{_NAME}: was not decoded into the cache (cache folder {cache.folder} not writable?).")
            skipped.append(Problem(s.source_id, "unreadable", msg.replace(_NAME, str(s.path or s.source_id))))
    if not ok:
        raise DataError(f"{ds.source}: none of the {len(keys)} selected images could be decoded; first: {skipped[0].message}")
    if skipped:
        log.warning("%d image(s) could not be decoded and were left out: %s", len(skipped),
                    "; ".join(p.message for p in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    images = cache.gather([keys[j] for j in ok], where, fresh)
    fresh.clear()
    return ArraySet(
        images=images,
        labels=labels[ok],
        class_names=names,
        ids=[ds.samples[indices[j]].source_id for j in ok],
        preprocess=replace(preprocess, class_names=names),
        skipped=skipped,
    )
