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

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bloodcell.core import settings
from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_save_npy, atomic_write_json, check_writable_folder
from bloodcell.core.preprocess import PreprocessConfig, load_prepared, normalize, prepare
from bloodcell.data.readers.dataset import Problem
from bloodcell.data.workers import for_each_result

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


def pixel_settings(cfg: PreprocessConfig) -> dict:
    """The settings that decide a cached image's pixels (framing only when it is not the centre crop)."""
    out = {"image_size": cfg.image_size, "crop_fraction": cfg.crop_fraction}
    if cfg.framing != "centre":
        out.update(framing=cfg.framing, cell_share=cfg.cell_share)
    return out


def _prepare_chunk(task):
    cfg, items = task
    size = cfg.image_size
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
        if len(keys):
            atomic_save_npy(self.folder / f"{stem}.npy", arrays)
        atomic_write_json(self.folder / f"{stem}.json", {
            "format": 1,
            "pixel": pixel_settings(self.preprocess),
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
        check_writable_folder(self.folder, what="cache folder", flag="BLOODCELL_CACHE")
        atomic_write_json(self.folder / "preprocess.json", pixel_settings(self.preprocess))
        workers = settings.default_workers() if workers is None else max(1, int(workers))
        size = self.preprocess.image_size
        tasks = [(self.preprocess, [(k, str(src) if isinstance(src, Path) else src) for k, src in items[i:i + CHUNK]])
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
