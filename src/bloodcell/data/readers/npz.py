"""Reader for images held in NumPy ``.npz`` files.

Two layouts are read:

* ``images`` ``(N, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1, 3, 4 (a
  single image without the ``N`` axis, ``(H, W, C)``, is refused with a message
  rather than read as ``H`` images ``C`` pixels wide) and
  ``labels`` ``(N,)`` (or ``(N, 1)``), integers or class-name strings (without
  ``labels`` the images are unlabelled, e.g. for prediction); an
  optional ``class_names`` string array names the integer labels, otherwise
  integer ``k`` means :data:`bloodcell.CLASSES` ``[k]`` (the BloodMNIST order);
* MedMNIST style: ``train_images``, ``train_labels``, ``val_*``, ``test_*``
  (any subset of the three splits); each sample keeps its split.

Images are ``uint8``, or floating point in ``[0, 1]`` (scaled by 255) or
``[0, 255]``. They are converted to RGB ``uint8`` once, on opening.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bloodcell.core.classes import CLASSES, canonical_class
from bloodcell.core.errors import DataError
from bloodcell.data.readers.dataset import SPLITS, Dataset, Sample


def read_npz(path: Path) -> Dataset:
    """Read an ``.npz`` dataset; see :func:`bloodcell.data.open_dataset`."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy and zipfile raise many kinds for a damaged file; one line names it
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}). "
                        "Write it with numpy.savez(path, images=..., labels=...).") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single .npy array, not an .npz archive of named arrays. "
                        "Write it with numpy.savez(path, images=..., labels=...).")
    with npz:
        keys = set(npz.files)
        names = _class_names(path, npz) if "class_names" in keys else None
        if "images" in keys or "labels" in keys:
            _require(path, keys, ("images", "labels") if "labels" in keys else ("images",))
            images = _load(path, npz, "images")
            labels = _load(path, npz, "labels") if "labels" in keys else None
            parts = [(None, images, labels, "images", "labels")]
            kind = "npz"
        elif any(f"{s}_images" in keys or f"{s}_labels" in keys for s in SPLITS):
            parts = []
            for s in SPLITS:
                if f"{s}_images" in keys or f"{s}_labels" in keys:
                    _require(path, keys, (f"{s}_images", f"{s}_labels"))
                    parts.append((s, _load(path, npz, f"{s}_images"), _load(path, npz, f"{s}_labels"),
                                  f"{s}_images", f"{s}_labels"))
            kind = "medmnist"
        else:
            raise DataError(
                f"{path}: missing keys; found {sorted(keys) or 'no arrays'}, expected 'images' and 'labels' "
                "(or MedMNIST-style 'train_images', 'train_labels', 'val_images', 'val_labels', 'test_images', "
                "'test_labels'). Save with numpy.savez(path, images=images, labels=labels)."
            )
    shapes = {p[1].shape[1:3] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"{path}: image arrays have different sizes {sorted(shapes)}; all splits must share H and W.")
    arrays, samples = [], []
    offset = 0
    for split, images, labels, ikey, lkey in parts:
        rgb = _to_rgb_uint8(path, images, ikey)
        canon = [None] * len(rgb) if labels is None else _labels(path, labels, lkey, len(rgb), ikey, names)
        prefix = f"{path.name}:{split}/" if split else f"{path.name}:"
        samples.extend(Sample(f"{prefix}{i}", canon[i], None, split, offset + i) for i in range(len(rgb)))
        arrays.append(rgb)
        offset += len(rgb)
    if not samples:
        raise DataError(f"{path}: holds no images (the image arrays have length 0).")
    stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return Dataset(path, kind, samples, [], stacked)


def _require(path: Path, keys: set[str], wanted: tuple[str, ...]) -> None:
    missing = [k for k in wanted if k not in keys]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {missing}; found {sorted(keys)}. "
            f"An .npz dataset needs {' and '.join(repr(w) for w in wanted)} of equal length."
        )


def _load(path: Path, npz, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(
                f"{path}: array {key!r} holds Python objects, which are not loaded (unsafe). "
                "Store strings as a fixed-width array, e.g. numpy.array(labels, dtype=str)."
            ) from None
        raise DataError(f"{path}: array {key!r} cannot be read ({e}).") from None
    except Exception as e:  # noqa: BLE001 - a damaged member raises zlib, zipfile or numpy errors alike
        raise DataError(f"{path}: array {key!r} is corrupt ({type(e).__name__}: {e}). Re-create the file.") from None


def _class_names(path: Path, npz) -> list[str]:
    raw = _load(path, npz, "class_names")
    if raw.ndim != 1 or raw.dtype.kind not in "US":
        raise DataError(f"{path}: 'class_names' must be a 1-D string array, got dtype {raw.dtype} shape {raw.shape}.")
    return [canonical_class(str(n), source=f"{path} ('class_names')") for n in raw]


def _to_rgb_uint8(path: Path, images: np.ndarray, key: str) -> np.ndarray:
    if images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {key!r} has {images.ndim} dimensions (shape {images.shape}); expected (N, H, W) or "
            "(N, H, W, C) with channels last."
        )
    if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
        h, w, c = images.shape
        raise DataError(
            f"{path}: {key!r} has shape {images.shape}, which is one {h}x{w} image with {c} channel"
            f"{'s' * (c != 1)} and no image axis, not {h} images of {w} px wide; nothing was read. "
            f"Save a single image as images[None] (shape (1, {h}, {w}, {c}))."
        )
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4):
        hint = " It looks channels-first; use images.transpose(0, 2, 3, 1)." if images.shape[1] in (1, 3, 4) else ""
        raise DataError(
            f"{path}: {key!r} has shape {images.shape}; the last axis must be 1, 3 or 4 channels.{hint}"
        )
    if len(images) and min(images.shape[1:3]) < 1:
        raise DataError(f"{path}: {key!r} has shape {images.shape}: its images are {images.shape[1]}x{images.shape[2]} "
                        "pixels, so there is nothing to read. Save images of at least one pixel.")
    if images.dtype == np.uint8:
        out = images
    elif images.dtype.kind == "f":
        if images.size and not np.isfinite(images).all():
            raise DataError(f"{path}: {key!r} contains NaN or infinite values. Clean the array before saving.")
        hi = float(images.max()) if images.size else 0.0
        lo = float(images.min()) if images.size else 0.0
        if lo < 0 or hi > 255:
            raise DataError(
                f"{path}: {key!r} is floating point with values from {lo:g} to {hi:g}; expected [0, 1] or "
                "[0, 255]. Rescale before saving."
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.clip(np.rint(images * scale), 0, 255).astype(np.uint8)
    else:
        raise DataError(
            f"{path}: {key!r} has dtype {images.dtype}; expected uint8 (0-255) or float (0-1 or 0-255). "
            "Convert with images.astype(numpy.uint8) if the values are 0-255."
        )
    if out.ndim == 3:
        out = out[..., None]
    c = out.shape[-1]
    if c == 1:
        out = np.repeat(out, 3, axis=-1)
    elif c == 4:
        alpha = out[..., 3:4].astype(np.float32) / 255.0
        out = np.rint(out[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(out)


def _labels(path: Path, labels: np.ndarray, key: str, n: int, ikey: str, names: list[str] | None) -> list[str]:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{path}: {key!r} has shape {labels.shape}; expected one label per image, shape ({n},). "
            "For one-hot labels save labels.argmax(1)."
        )
    if len(labels) != n:
        raise DataError(
            f"{path}: {ikey!r} has {n} images but {key!r} has {len(labels)} labels; they must have equal length."
        )
    if labels.dtype.kind in "US":
        uniq = {str(u): canonical_class(str(u), source=f"{path} ({key!r})") for u in np.unique(labels)}
        return [uniq[str(x)] for x in labels]
    if labels.dtype.kind not in "iub":
        raise DataError(
            f"{path}: {key!r} has dtype {labels.dtype}; expected integer class indices or class-name strings."
        )
    space = names if names is not None else list(CLASSES)
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(space):
            bad = int(np.flatnonzero((labels < 0) | (labels >= len(space)))[0])
            raise DataError(
                f"{path}: {key!r} out of range: label {int(labels[bad])} at index {bad}; integer labels must be "
                f"0..{len(space) - 1} ({', '.join(f'{i}={c}' for i, c in enumerate(space))}). "
                "Add a 'class_names' array or fix the labels."
            )
    return [space[int(x)] for x in labels]
