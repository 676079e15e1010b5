"""Find every stained cell in a smear field: white cells, and apart from them platelets.

Classical image analysis, measured against hand-drawn boxes (``benchmarks/fields.py``):

1. the slide's **scale** comes from the red cells (about 7.5 µm everywhere): the foreground
   (optical density above an Otsu threshold computed without the nuclei) is split into
   connected parts; the inscribed diameter of the parts that hold no nucleus and do not touch
   the border is, at its upper quartile, the red-cell diameter :attr:`Field.rbc`. Every size
   below is a multiple of it, so the same thresholds work at any magnification;
2. **nuclei** are pixels of high hematoxylin density (colour deconvolution,
   :func:`bloodcell.core.locate.hematoxylin`) above both the Otsu threshold of the field and
   the red cells' level plus a margin; lobes closer than :data:`MERGE` red-cell diameters are
   grouped, so a segmented neutrophil is one cell;
3. each nucleus group grows into its **cell** (nucleus and cytoplasm) by a watershed on the
   foreground's distance map, with the red cells as competing seeds, so a white cell touching
   red cells stops at the neck between them; the cell is bounded to :data:`MAX_CELL` red-cell
   diameters around its nucleus;
4. groups smaller than :data:`MIN_WHITE` are **platelets** (or specks below :data:`MIN_PLATELET`,
   dropped); a cell whose box touches the image edge is marked ``at_border``.

Everything runs on a copy reduced by a whole factor to at most :data:`WORK_SIDE` pixels, and
boxes are returned in the original image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from bloodcell.core.locate import hematoxylin, nucleus_mask, otsu, reduced

#: The detector first measures the red cells on a copy reduced by a whole factor to at most this
#: side, then works on a copy where red cells are about WORK_RBC pixels across (finer when the
#: first copy shows them smaller, coarser when much larger).
FIRST_SIDE = 160
WORK_RBC = 20
#: A nucleus pixel's hematoxylin density exceeds the red cells' typical density (the median of
#: the middle class of a three-class Otsu split: slide, red cells, nuclei) by at least this.
MIN_STAIN = 0.35
#: Nucleus parts closer than this (in red-cell diameters) belong to one cell (lobes of a neutrophil).
MERGE = 0.35
#: A nucleus group whose longer side reaches this (red-cell diameters) is a white cell's nucleus
#: (or a nucleated red cell's); smaller groups down to MIN_PLATELET are platelets.
MIN_WHITE = 0.42
MIN_PLATELET = 0.12
#: A white cell's nucleus spans at most this many red-cell diameters (merged lobes included).
MAX_NUCLEUS = 2.0
#: A foreground part around one nucleus no wider than this (red-cell diameters) is taken as the
#: whole cell (nucleus and cytoplasm); wider parts are cells touching each other.
MAX_CELL = 2.8
ROUND, FILL = 1.3, 0.65
#: A white cell's box reaches this far (red-cell diameters) past its nucleus on each side: the
#: cytoplasm, which is often as pale as the slide and cannot be segmented reliably.
CYTOPLASM = 0.15
#: The quick count joins stained parts within this many pixels of the locator's small copy and
#: counts those covering at least this share of it (a PBC white cell's nucleus covers about 0.03).
QUICK_JOIN = 2
QUICK_MIN_AREA = 0.006
#: A cell whose box comes this close to the image edge (red-cell diameters) is marked ``at_border``.
BORDER = 0.1
#: A cell whose box lies inside a larger cell's box by this share of its area is part of it.
NESTED = 0.5
#: The red-cell diameter, as a share of the image's longer side, assumed when a field shows no
#: measurable red cell (about what a PBC image shows).
DEFAULT_RBC_SHARE = 0.2


@dataclass(frozen=True)
class Found:
    """One cell found in a field.

    ``box`` is ``(x0, y0, x1, y1)`` in the original image's pixels (right and bottom exclusive);
    ``kind`` is ``"white"`` (white cell or nucleated red cell, to be classified) or
    ``"platelet"``; ``score`` in ``[0, 1]`` is the detector's confidence; ``at_border`` says the
    cell's box comes within :data:`BORDER` red-cell diameters of the image edge, so part of it
    may be cut off.
    """

    box: tuple[int, int, int, int]
    kind: str
    score: float
    at_border: bool

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Field:
    """What the detector found in one image: the cells, and the red-cell diameter in original
    pixels (``rbc``; the scale everything was measured in)."""

    cells: list[Found]
    rbc: float
    width: int
    height: int

    @property
    def white(self) -> list[Found]:
        return [c for c in self.cells if c.kind == "white"]


def _reduced(image: np.ndarray, factor: int) -> np.ndarray:
    return image if factor <= 1 else np.asarray(Image.fromarray(image).reduce(factor))


def _work_copy(image: np.ndarray) -> tuple[np.ndarray, int, tuple]:
    """The copy the detector works on (red cells about :data:`WORK_RBC` pixels across), its
    reduction factor, and its masks (see :func:`_masks`) with the red-cell diameter."""
    factor = max(1, -(-max(image.shape[:2]) // FIRST_SIDE))
    tried = set()
    while True:
        tried.add(factor)
        small = _reduced(image, factor)
        density, nuclei, foreground, level = _masks(small)
        rbc = rbc_diameter(foreground, nuclei)
        if rbc is None:
            rbc = DEFAULT_RBC_SHARE * max(small.shape[:2])
        better = max(1, int(factor * rbc / WORK_RBC))
        if better in tried or (better > factor and rbc < 2 * WORK_RBC):
            return small, factor, (density, nuclei, foreground, level, rbc)
        factor = better


def _masks(small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Hematoxylin density, the nucleus mask, the foreground (cells) mask of a work copy, and the
    red cells' typical hematoxylin density."""
    from scipy import ndimage  # deferred: half a second to import, and only field work needs it

    density = hematoxylin(small)
    optical = -np.log((small.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
    # Dark nuclei would pull the cells/slide threshold up: clip them to the 90th percentile first.
    foreground = optical > otsu(np.minimum(optical, np.percentile(optical, 90)))
    low, high = otsu3(density)
    middle = density[(density > low) & (density <= high)]
    level = float(np.median(middle)) if middle.size > 100 else float(np.median(density))
    nuclei = (density > max(otsu(density), level + MIN_STAIN)) & _coloured(small)
    nuclei = ndimage.binary_opening(nuclei)
    foreground = ndimage.binary_fill_holes(ndimage.binary_opening(foreground | nuclei))
    return density, nuclei, foreground, level


def otsu3(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """The two thresholds that best split ``values`` into three groups (Otsu's method, three classes)."""
    lo, hi = float(values.min()), float(values.max())
    width = max(hi - lo, 1e-6) / bins
    index = np.minimum(((values - lo) / width).astype(np.int32), bins - 1)
    hist = np.bincount(index.ravel(), minlength=bins).astype(np.float64)
    mids = lo + width * (np.arange(bins) + 0.5)
    w = np.concatenate([[0.0], np.cumsum(hist)])
    m = np.concatenate([[0.0], np.cumsum(hist * mids)])
    i, j = np.triu_indices(bins + 1, k=1)  # class edges: [0, i), [i, j), [j, bins)
    keep = (i > 0) & (j < bins)
    i, j = i[keep], j[keep]
    spread = np.zeros(len(i))
    for a, b in ((np.zeros_like(i), i), (i, j), (j, np.full_like(j, bins))):
        weight = w[b] - w[a]
        spread += np.where(weight > 0, (m[b] - m[a]) ** 2 / np.maximum(weight, 1e-12), 0.0)
    best = int(np.argmax(spread))
    return float(lo + width * i[best]), float(lo + width * j[best])


def _coloured(small: np.ndarray) -> np.ndarray:
    """Pixels with some colour (grey carries no stain)."""
    hi = small.max(axis=-1).astype(np.int16)
    lo = small.min(axis=-1).astype(np.int16)
    return hi - lo >= 16


def rbc_diameter(foreground: np.ndarray, nuclei: np.ndarray) -> float | None:
    """The red-cell diameter in pixels of the masks: the upper quartile of the inscribed diameters
    of the foreground parts that hold no nucleus and do not touch the border (``None`` without any)."""
    from scipy import ndimage  # deferred: see _masks

    labels, n = ndimage.label(foreground)
    if n == 0:
        return None
    distance = ndimage.distance_transform_edt(foreground)
    index = np.arange(1, n + 1)
    inscribed = np.asarray(ndimage.maximum(distance, labels, index))
    has_nucleus = np.asarray(ndimage.maximum(nuclei, labels, index)).astype(bool)
    edge = np.zeros(n + 1, dtype=bool)
    edge[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    keep = ~has_nucleus & ~edge[1:] & (inscribed >= 3)
    values = inscribed[keep] if keep.sum() >= 3 else inscribed[~has_nucleus & (inscribed >= 3)]
    if values.size == 0:
        return None
    return float(2 * np.percentile(values, 75))


def _parts(nuclei: np.ndarray, rbc: float) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` of the nucleus parts, merged into one box per cell.

    Parts closer than ``MERGE * rbc`` (nearest pixels) are merged, closest first, as long as
    the merged box stays within :data:`MAX_NUCLEUS` red-cell diameters: the lobes of a
    neutrophil join; a lymphocyte beside a neutrophil does not.
    """
    from scipy import ndimage  # deferred: half a second to import, and only field work needs it

    labels, n = ndimage.label(nuclei, structure=np.ones((3, 3), dtype=bool))
    boxes = [[c.start, r.start, c.stop, r.stop] for r, c in ndimage.find_objects(labels)]
    if n < 2:
        return boxes
    gaps = _gaps(labels, n, MERGE * rbc)
    groups = [{i} for i in range(n)]
    limit = MAX_NUCLEUS * rbc
    close = sorted((gaps[a, b], a, b) for a in range(n) for b in range(a + 1, n) if gaps[a, b] <= MERGE * rbc)
    for _, i, j in close:
        gi = next(g for g in range(len(groups)) if i in groups[g])
        gj = next(g for g in range(len(groups)) if j in groups[g])
        if gi == gj or _side(_union(boxes[gi], boxes[gj])) > limit:
            continue
        groups[gi] |= groups[gj]
        boxes[gi] = _union(boxes[gi], boxes[gj])
        del groups[gj], boxes[gj]
    return boxes


def _gaps(labels: np.ndarray, n: int, reach: float) -> np.ndarray:
    """Distances between the nearest pixels of each pair of labelled parts (``inf`` beyond ``reach``)."""
    from scipy import ndimage  # deferred: see _parts

    edge = (labels > 0) & ~ndimage.binary_erosion(labels > 0)
    ys, xs = np.nonzero(edge)
    owner = labels[ys, xs] - 1
    points = [np.stack([xs[owner == k], ys[owner == k]], axis=1).astype(np.float32) for k in range(n)]
    lows = np.array([p.min(axis=0) for p in points])
    highs = np.array([p.max(axis=0) for p in points])
    gaps = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            box_gap = np.hypot(*np.maximum(0, np.maximum(lows[i], lows[j]) - np.minimum(highs[i], highs[j])))
            if box_gap > reach:
                continue
            d = points[i][:, None, :] - points[j][None, :, :]
            gaps[i, j] = gaps[j, i] = float(np.sqrt((d * d).sum(-1).min()))
    return gaps


def _union(a, b) -> list[int]:
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _side(box) -> int:
    return max(box[2] - box[0], box[3] - box[1])


def _cells(density: np.ndarray, nuclei: np.ndarray, foreground: np.ndarray, rbc: float,
           level: float) -> list[tuple[list[float], str, float]]:
    """Boxes (work pixels), kinds and scores of the cells around each nucleus group."""
    from scipy import ndimage  # deferred: see _parts

    parts = [b for b in _parts(nuclei, rbc) if _side(b) / rbc >= MIN_PLATELET]
    regions, _ = ndimage.label(foreground)
    spans = ndimage.find_objects(regions)
    owners: dict[int, int] = {}
    for box in parts:
        for k in np.unique(regions[box[1]:box[3], box[0]:box[2]][nuclei[box[1]:box[3], box[0]:box[2]]]):
            owners[int(k)] = owners.get(int(k), 0) + 1
    out = []
    for box in parts:
        extent = _side(box) / rbc
        inside = nuclei[box[1]:box[3], box[0]:box[2]]
        strength = float(density[box[1]:box[3], box[0]:box[2]][inside].mean()) - level
        kind = "white" if extent >= MIN_WHITE else "platelet"
        grow = CYTOPLASM * rbc if kind == "white" else 0.05 * rbc
        cell = [box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow]
        if kind == "white":
            cell = _with_cytoplasm(cell, box, regions, spans, owners, rbc)
        out.append((cell, kind, _score(strength, extent)))
    return _without_nested(out)


def _with_cytoplasm(cell: list, box: list, regions: np.ndarray, spans: list, owners: dict, rbc: float) -> list:
    """``cell`` widened to the foreground part holding its nucleus, when that part is one whole
    cell: it holds no other nucleus, is round (sides within :data:`ROUND` of each other, filling
    :data:`FILL` of its box; a disc fills 0.785) and spans at most :data:`MAX_CELL` red-cell
    diameters. A white cell touching red cells keeps its nucleus-based box."""
    ids = np.unique(regions[box[1]:box[3], box[0]:box[2]])
    ids = [int(k) for k in ids if k > 0 and owners.get(int(k), 0) == 1]
    for k in ids:
        rows, cols = spans[k - 1]
        whole = [cols.start, rows.start, cols.stop, rows.stop]
        w, h = whole[2] - whole[0], whole[3] - whole[1]
        round_ = max(w, h) <= ROUND * min(w, h) and np.sum(regions[rows, cols] == k) >= FILL * w * h
        if round_ and _side(whole) <= MAX_CELL * rbc and _overlap(whole, box) >= 0.9 * _area(box):
            return _union(cell, whole)
    return cell


def _without_nested(cells: list) -> list:
    """Drop cells whose box lies mostly (:data:`NESTED`) inside a larger cell's box: granules or a
    lobe left over beside a big cell's nucleus are part of that cell."""
    order = sorted(range(len(cells)), key=lambda i: -_area(cells[i][0]))
    kept = []
    for i in order:
        box = cells[i][0]
        if not any(_overlap(box, cells[j][0]) >= NESTED * _area(box) for j in kept):
            kept.append(i)
    return [cells[i] for i in sorted(kept)]


def _area(box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _score(excess: float, extent: float) -> float:
    """Confidence in ``[0, 1]`` from how far the nucleus's mean density rises above the red cells'
    and how far its size lies inside the white-cell (or platelet) range."""
    stain = 1.0 - np.exp(-max(excess, 0.0) / 0.5)
    if extent >= MIN_WHITE:
        size = min(1.0, 0.5 + (extent - MIN_WHITE) / (2 * MIN_WHITE))
    else:
        size = min(1.0, 0.5 + (extent - MIN_PLATELET) / (MIN_WHITE - MIN_PLATELET) / 2)
    return float(np.clip(stain * size, 0.0, 1.0))


def detect(image: np.ndarray) -> Field:
    """Find the cells of an RGB ``uint8`` field ``(H, W, 3)`` (see the module's description)."""
    h, w = image.shape[:2]
    small, factor, (density, nuclei, foreground, level, rbc) = _work_copy(image)
    cells = []
    for box, kind, score in _cells(density, nuclei, foreground, rbc, level):
        x0, y0 = max(0, int(round(box[0] * factor))), max(0, int(round(box[1] * factor)))
        x1, y1 = min(w, int(round(box[2] * factor))), min(h, int(round(box[3] * factor)))
        near = BORDER * rbc * factor
        edge = x0 <= near or y0 <= near or x1 >= w - near or y1 >= h - near
        cells.append(Found((x0, y0, x1, y1), kind, round(score, 4), edge))
    cells.sort(key=lambda c: (c.box[1], c.box[0]))
    return Field(cells, rbc * factor, w, h)


def quick_white_count(image: np.ndarray) -> int:
    """About how many white cells an image shows, cheaply (a millisecond or two): stained blobs of
    white-cell size on the single-cell locator's small copy (:func:`bloodcell.core.locate.nucleus_mask`),
    lobes within a few pixels joined. Used to tell a whole field from a single-cell image."""
    from scipy import ndimage  # deferred: see _masks

    small, _ = reduced(image)
    mask = nucleus_mask(small)
    if not mask.any():
        return 0
    joined = ndimage.binary_dilation(mask, iterations=QUICK_JOIN)
    labels, n = ndimage.label(joined)
    area = np.bincount(labels[mask], minlength=n + 1)[1:] / mask.size
    return int(np.sum(area >= QUICK_MIN_AREA))
