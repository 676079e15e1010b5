"""Per-image measurements the audit uses: perceptual hash and appearance features.

Both are computed from one small copy of the image (box-filtered to 64x64
pixels), so they describe the whole frame whatever its resolution, and cost
little next to decoding.

* The perceptual hash is ImageHash's DCT hash (``imagehash.phash``: grey
  levels, ``4 * hash_size`` pixels square, discrete cosine transform, the
  ``hash_size x hash_size`` lowest frequencies compared with their median) of
  a *cell-centred* crop: a square of 5/8 of the shorter side centred on the
  centre of mass of the stained (dark violet) pixels. Centring on the stain
  rather than on the frame makes two photographs of the same field match even
  when the camera moved between them, or when each was centred on a different
  cell of the same field, as happens in smear datasets. Re-encoded, resized or
  slightly retouched copies hash a few bits apart.
* :data:`FEATURE_NAMES` describe how an image looks in numbers that separate
  a stained single-cell smear image (pale pink/grey background, one dark
  violet cell in the middle) from anything else: colour and brightness, how
  much of the frame is background, where the darkest stain sits, sharpness
  and texture. :mod:`bloodcell.data.audit.outliers` scores each image by how far
  its features sit from the bulk of its own dataset.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

#: Names of the values :func:`measure` returns as features, in order.
FEATURE_NAMES = (
    "mean_r", "mean_g", "mean_b",          # average colour
    "std_r", "std_g", "std_b",             # colour spread
    "saturation",                          # mean HSV saturation
    "background_fraction",                 # share of pixels close to the median border colour
    "stain_fraction",                      # share of dark, blue-violet (stained) pixels
    "stain_centre_offset",                 # distance of the stain's centre of mass from the image centre
    "centre_contrast",                     # border brightness minus centre brightness
    "edge_strength",                       # mean gradient magnitude (sharpness, clutter)
    "laplacian_energy",                    # fine texture and noise
    "gray_entropy",                        # spread of the grey-level histogram, in bits
)

_SIDE = 64
_GRID = (np.mgrid[:_SIDE, :_SIDE].astype(np.float32) / (_SIDE - 1) - 0.5)
_BORDER = np.zeros((_SIDE, _SIDE), bool)
_BORDER[:4], _BORDER[-4:], _BORDER[:, :4], _BORDER[:, -4:] = True, True, True, True
_RING = np.zeros((_SIDE, _SIDE), bool)
_RING[:8], _RING[-8:], _RING[:, :8], _RING[:, -8:] = True, True, True, True


def hash_bits(h) -> int:
    """An ``imagehash.ImageHash`` as a Python integer (row-major bits)."""
    return int("".join("1" if b else "0" for b in h.hash.flatten()), 2)


#: Side of the cell-centred crop hashed by :func:`measure`, as a fraction of the shorter side.
HASH_CROP = 0.625


def measure(image: np.ndarray, hash_size: int = 16) -> tuple[int, np.ndarray]:
    """Cell-centred perceptual hash (integer of ``hash_size**2`` bits) and features of an RGB ``uint8`` image."""
    pil = Image.fromarray(image)
    small = np.asarray(pil.resize((_SIDE, _SIDE), Image.Resampling.BOX))
    features, (cy, cx) = _features(small)
    w, h = pil.size
    side = max(1, int(round(min(w, h) * HASH_CROP)))
    left = int(round(min(max((cx + 0.5) * w - side / 2, 0), w - side)))
    top = int(round(min(max((cy + 0.5) * h - side / 2, 0), h - side)))
    crop = pil.crop((left, top, left + side, top + side)).resize((4 * hash_size,) * 2, Image.Resampling.BOX)
    return hash_bits(imagehash.phash(crop, hash_size=hash_size)), features


def image_features(image: np.ndarray) -> np.ndarray:
    """Appearance features of an RGB ``uint8`` image, in the order of :data:`FEATURE_NAMES`."""
    if image.shape[:2] != (_SIDE, _SIDE):
        image = np.asarray(Image.fromarray(image).resize((_SIDE, _SIDE), Image.Resampling.BOX))
    return _features(image)[0]


def _features(small: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    x = small.astype(np.float32) * (1.0 / 255.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    sat = (mx - mn) / np.maximum(mx, 1e-6)

    bg = [float(np.median(ch[_BORDER])) for ch in (r, g, b)]
    bg_fraction = ((np.abs(r - bg[0]) < 0.08) & (np.abs(g - bg[1]) < 0.08) & (np.abs(b - bg[2]) < 0.08)).mean()

    flat = gray.ravel()
    median_gray = np.partition(flat, flat.size // 2)[flat.size // 2]
    stain = (gray < median_gray - 0.12) & (b > g + 0.05)
    n_stain = stain.sum()
    if n_stain:
        cy, cx = float(_GRID[0][stain].mean()), float(_GRID[1][stain].mean())
        offset = float(np.hypot(cy, cx))
    else:
        cy = cx = 0.0
        offset = 0.75
    q = _SIDE // 4
    centre_contrast = gray[_RING].mean() - gray[q:3 * q, q:3 * q].mean()

    gy = np.diff(gray, axis=0)[:, :-1]
    gx = np.diff(gray, axis=1)[:-1, :]
    lap = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    hist = np.bincount(np.minimum((flat * 32).astype(np.int64), 31), minlength=32)
    p = hist[hist > 0] / flat.size

    return np.array([
        r.mean(), g.mean(), b.mean(),
        r.std(), g.std(), b.std(),
        sat.mean(),
        bg_fraction,
        n_stain / flat.size,
        offset,
        centre_contrast,
        np.sqrt(gx * gx + gy * gy).mean(),
        np.abs(lap).mean(),
        -(p * np.log2(p)).sum(),
    ], dtype=np.float32), (cy, cx)
