"""Images that are not blood cells, for measuring the out-of-distribution threshold.

Two sources, both available offline:

* generated images of seven kinds: uniform and Gaussian noise, flat colours,
  linear and radial gradients, rendered text, random geometric shapes and
  checkerboards;
* crops of the natural photographs that ship with scikit-learn
  (:func:`sklearn.datasets.load_sample_images`), at several scales.

Every image is RGB ``uint8`` and deterministic for a given seed.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_sample_images

KINDS = ("noise", "flat", "gradient", "text", "shapes", "checkerboard", "photo")


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mean = rng.uniform(40, 215, 3)
    return np.clip(rng.normal(mean, rng.uniform(10, 60), (size, size, 3)), 0, 255).astype(np.uint8)


def _flat(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / max(1, size - 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
    else:
        cy, cx = rng.uniform(0, 1, 2)
        t = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a + (b - a) * t[..., None]).astype(np.uint8)


def _text(rng: np.random.Generator, size: int) -> np.ndarray:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.08, 0.2))))
    alphabet = string.ascii_letters + string.digits + "     .,;:-"
    for _ in range(int(rng.integers(2, 8))):
        words = "".join(rng.choice(list(alphabet), int(rng.integers(5, 20))))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.text((float(rng.uniform(-0.1, 0.7) * size), float(rng.uniform(0, 0.9) * size)), words, fill=colour, font=font)
    return np.asarray(img)


def _shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * size
        w, h = rng.uniform(0.1, 0.7, 2) * size
        box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=colour)
    return np.asarray(img)


def _checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    cell = int(rng.integers(2, max(3, size // 4)))
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy // cell + xx // cell) % 2).astype(bool)
    a, b = rng.integers(0, 256, 3, dtype=np.uint8), rng.integers(0, 256, 3, dtype=np.uint8)
    out = np.empty((size, size, 3), np.uint8)
    out[mask], out[~mask] = a, b
    return out


def _photos() -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]


def _photo_crop(rng: np.random.Generator, size: int, photos: list[np.ndarray]) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.15, 1.0) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


_MAKERS = {
    "noise": _noise,
    "flat": _flat,
    "gradient": _gradient,
    "text": _text,
    "shapes": _shapes,
    "checkerboard": _checkerboard,
}


def non_cell_images(per_kind: int = 40, size: int = 128, seed: int = 0, kinds=KINDS) -> tuple[np.ndarray, list[str]]:
    """Generate ``per_kind`` images of each kind.

    Parameters
    ----------
    per_kind : int
        Images per kind.
    size : int
        Side of the square images, in pixels.
    seed : int
        Random seed; the same seed gives the same images.
    kinds : sequence of str
        A subset of :data:`KINDS`.

    Returns
    -------
    images : ndarray of uint8, shape (len(kinds) * per_kind, size, size, 3)
    kinds : list of str
        The kind of each image.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown non-cell kinds {sorted(unknown)}; expected some of {list(KINDS)}")
    rng = np.random.default_rng(seed)
    photos = _photos() if "photo" in kinds else []
    images, labels = [], []
    for kind in kinds:
        for _ in range(per_kind):
            img = _photo_crop(rng, size, photos) if kind == "photo" else _MAKERS[kind](rng, size)
            images.append(img)
            labels.append(kind)
    return np.stack(images), labels
