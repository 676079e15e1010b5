"""Find the stained cell of interest in an image, to frame it the way the model was trained.

PBC images are fields with the cell of interest at the centre at one magnification; other
labs send tight crops, wide fields with the cell off-centre, or other magnifications. The
locator finds the hematoxylin-stained blob nearest the centre (colour deconvolution of the
stain, an Otsu threshold, connected components with size filters) and returns a square box
around it whose side is the blob's extent divided by the share of the crop such a cell fills
in training (:func:`typical_share`). When it finds nothing plausible it says so, and the
caller falls back to the centre crop.

Everything runs on a copy reduced to about :data:`WORK_SIDE` pixels, so the cost barely
depends on the input size (about a millisecond for a 256-px image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Hematoxylin, eosin and DAB optical-density vectors (Ruifrok and Johnston 2001), one row each.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Optical density of each uint8 level, weighted per channel into the hematoxylin amount.
_OD = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
_HEMATOXYLIN_LUT = [(_OD * HED_FROM_RGB[c, 0]).astype(np.float32) for c in range(3)]

#: The locator works on a copy whose longer side is reduced by a whole factor to at most this.
WORK_SIDE = 96
#: A stained blob must cover at least this share of the field (smaller: debris, specks) and at
#: most this share (larger: the whole image is stain, or a clump).
MIN_AREA, MAX_AREA = 0.002, 0.6
#: A stained pixel's hematoxylin density exceeds the image's median (the slide and red cells) by
#: at least this much; PBC nuclei exceed it by about 1.5, pink red cells not at all.
MIN_STAIN = 0.3
#: A stained pixel's channels differ by at least this much (0-255): grey images carry no stain.
MIN_CHROMA = 16
#: How much nearness to the centre counts against size when choosing among blobs.
CENTRE_WEIGHT = 1.5
#: The share used when no training image yields a cell.
DEFAULT_SHARE = 0.5


@dataclass(frozen=True)
class CellBox:
    """Where the cell of interest is, in the original image's pixels.

    ``found`` is False when nothing plausible was found; ``box`` (left, top, right, bottom) is
    then the centre crop. ``size`` is the cell's extent (the longer side of its stained part),
    in pixels, 0 when nothing was found.
    """

    found: bool
    box: tuple[int, int, int, int]
    centre: tuple[float, float]
    size: float


def centre_box(width: int, height: int, crop_fraction: float) -> tuple[int, int, int, int]:
    """The centred square crop box (left, top, right, bottom) for an image size."""
    side = max(1, int(round(min(width, height) * crop_fraction)))
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """The hematoxylin optical density of each pixel of an RGB ``uint8`` image (higher: more stain)."""
    return _HEMATOXYLIN_LUT[0][image[..., 0]] + _HEMATOXYLIN_LUT[1][image[..., 1]] + _HEMATOXYLIN_LUT[2][image[..., 2]]


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = float(values.min()), float(values.max())
    width = max(hi - lo, 1e-6) / bins
    index = np.minimum(((values - lo) / width).astype(np.int32), bins - 1)
    return np.bincount(index.ravel(), minlength=bins).astype(np.float64), lo + width * (np.arange(bins) + 0.5)


def otsu(values: np.ndarray, bins: int = 64) -> float:
    """The threshold that best separates ``values`` into two groups (Otsu's method)."""
    hist, mids = _histogram(values, bins)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * mids)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(mids[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def _median(values: np.ndarray, bins: int = 64) -> float:
    """The median of ``values`` to within one of ``bins`` histogram bins (cheaper than sorting)."""
    hist, mids = _histogram(values, bins)
    return float(mids[int(np.searchsorted(np.cumsum(hist), hist.sum() / 2))])


def opened(mask: np.ndarray) -> np.ndarray:
    """Binary opening with the 3x3 cross (as ``scipy.ndimage.binary_opening``), by array shifts."""
    core = mask.copy()
    core[1:] &= mask[:-1]
    core[:-1] &= mask[1:]
    core[:, 1:] &= mask[:, :-1]
    core[:, :-1] &= mask[:, 1:]
    core[[0, -1], :] = False
    core[:, [0, -1]] = False
    out = core.copy()
    out[1:] |= core[:-1]
    out[:-1] |= core[1:]
    out[:, 1:] |= core[:, :-1]
    out[:, :-1] |= core[:, 1:]
    return out


def reduced(image: np.ndarray) -> tuple[np.ndarray, int]:
    """``image`` shrunk by a whole factor (box average) so its longer side is at most
    :data:`WORK_SIDE`, and the factor."""
    factor = -(-max(image.shape[:2]) // WORK_SIDE)
    if factor <= 1:
        return image, 1
    return np.asarray(Image.fromarray(image).reduce(factor)), factor


def nucleus_mask(small: np.ndarray) -> np.ndarray:
    """Pixels of strongly hematoxylin-stained objects, as a boolean mask (all False without stain).

    A pixel counts when its hematoxylin density is above the Otsu threshold of the image and
    well above the image's median, and it has colour (grey images are not stained).
    """
    density = hematoxylin(small)
    floor = _median(density) + MIN_STAIN
    if float(density.max()) < floor:  # no stain contrast at all: a flat image, or a field of red cells
        return np.zeros(density.shape, dtype=bool)
    red, green, blue = small[..., 0], small[..., 1], small[..., 2]
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return opened((density > max(floor, otsu(density))) & (chroma >= MIN_CHROMA))


def pick_blob(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns of the plausible stained blob nearest the centre (larger blobs win ties)."""
    from scipy import ndimage  # deferred: takes half a second to import and only cell framing needs it

    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    h, w = mask.shape
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:] / (h * w)
    boxes = ndimage.find_objects(labels)
    cy = np.array([(rows.start + rows.stop) / 2 for rows, _ in boxes])
    cx = np.array([(cols.start + cols.stop) / 2 for _, cols in boxes])
    dist = np.hypot((cy - h / 2) / h, (cx - w / 2) / w)
    score = np.where((area >= MIN_AREA) & (area <= MAX_AREA), np.sqrt(area) - CENTRE_WEIGHT * dist, -np.inf)
    best = int(np.argmax(score))
    if not np.isfinite(score[best]):
        return None
    return boxes[best]


def locate_cell(image: np.ndarray, share: float, fallback_fraction: float = 1.0) -> CellBox:
    """Find the cell of interest and the square box that frames it.

    Parameters
    ----------
    image : ndarray
        RGB ``uint8`` image, ``(H, W, 3)``.
    share : float
        The side of the cell's stained part as a fraction of the box side, as in training
        (see :func:`typical_share`); the box side is ``size / share``.
    fallback_fraction : float
        Crop fraction of the centred square returned when no cell is found.

    Returns
    -------
    CellBox
        The box may extend past the image; :func:`crop_box` fills that part with the
        slide's background.
    """
    h, w = image.shape[:2]
    small, factor = reduced(image)
    picked = pick_blob(nucleus_mask(small))
    if picked is None:
        return CellBox(False, centre_box(w, h, fallback_fraction), (w / 2, h / 2), 0.0)
    rows, cols = picked
    size = float(max(rows.stop - rows.start, cols.stop - cols.start) * factor)
    cx = (cols.start + cols.stop) / 2 * factor
    cy = (rows.start + rows.stop) / 2 * factor
    return CellBox(True, square(cx, cy, size / share), (float(cx), float(cy)), size)


def square(cx: float, cy: float, side: float) -> tuple[int, int, int, int]:
    """The square box of ``side`` pixels centred on ``(cx, cy)``, at least one pixel wide."""
    side = max(1, int(round(side)))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    return left, top, left + side, top + side


def background(image: np.ndarray) -> np.ndarray:
    """The slide's background colour: the median colour of the image border."""
    return np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), axis=0).astype(image.dtype)


def crop_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` cut to ``box``; parts outside the image are filled with the slide's background
    (see :func:`background`), never with copies of the cell."""
    left, top, right, bottom = box
    h, w = image.shape[:2]
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return image[top:bottom, left:right]
    out = np.empty((bottom - top, right - left, 3), dtype=image.dtype)
    out[:] = background(image)
    src_top, src_left = max(0, top), max(0, left)
    src_bottom, src_right = min(h, bottom), min(w, right)
    if src_bottom > src_top and src_right > src_left:
        out[src_top - top:src_bottom - top, src_left - left:src_right - left] = image[src_top:src_bottom, src_left:src_right]
    return out


def cell_shares(images, crop_fraction: float) -> list[float]:
    """For each image where a cell is located, the share of a ``crop_fraction`` crop its stained part fills."""
    shares = []
    for img in images:
        found = locate_cell(img, share=1.0)
        if found.found:
            shares.append(found.size / (min(img.shape[:2]) * crop_fraction))
    return shares


def typical_share(images, crop_fraction: float, default: float | None = DEFAULT_SHARE) -> float | None:
    """The median share of the training crop's side that the located cell's stained part fills.

    Measured on training images (centred cells at one magnification), so that framing a new
    image by :func:`locate_cell` with this share reproduces what the model saw in training.
    Returns ``default`` (:data:`DEFAULT_SHARE`; ``None`` to say nothing was measured) when no image
    yields a cell.
    """
    shares = cell_shares(images, crop_fraction)
    if not shares:
        return default
    return float(np.clip(np.median(shares), 0.05, 1.0))
