"""Match the scale of a lab's cells to the model's training cells, through the crop.

A lab whose camera or objective shows cells larger than the model's training images did (or
smaller) is met by changing the preprocessing crop: the located cell's stained part is measured
on the lab's cells (:func:`bloodcell.core.locate.locate_cell`, no labels needed) and compared
with the share it filled in the model's training crops (``model.json["training_cell_share"]``,
recorded when the model was packaged). The crop is scaled by their ratio, above 1 a zoom-out
onto the slide's colour (see :class:`~bloodcell.core.preprocess.PreprocessConfig`), so the
adapted model sees the lab's cells at the size it learnt; differences under :data:`TOLERANCE`
are left alone.
"""

from __future__ import annotations

import math

import numpy as np

from bloodcell.core.errors import DataError
from bloodcell.core.locate import cell_shares
from bloodcell.core.preprocess import MAX_CROP_FRACTION

#: Scale ratios within this factor of 1 keep the model's crop.
TOLERANCE = 1.15
#: Cells measured at most (spread evenly over the data), and the fewest located cells to act on.
MAX_CELLS, MIN_FOUND = 200, 5


def lab_cell_share(dataset, crop_fraction: float) -> tuple[float | None, int, int]:
    """The median share of a ``crop_fraction`` crop that the located cell fills in the dataset's
    images, with how many cells were located and looked at (``None`` when too few were found)."""
    step = max(1, len(dataset.samples) // MAX_CELLS)
    images = []
    for i in range(0, len(dataset.samples), step)[:MAX_CELLS]:
        try:
            images.append(dataset.read(i))
        except DataError:
            continue  # an unreadable file is reported when the cells are loaded for adapting
    shares = cell_shares(images, crop_fraction)
    if len(shares) < MIN_FOUND:
        return None, len(shares), len(images)
    return float(np.median(shares)), len(shares), len(images)


def matched_crop(meta: dict, dataset) -> dict:
    """The crop that shows the dataset's cells at the model's training scale, and why.

    Returns ``{"applied", "crop_fraction": {"model", "adapted"}, ...}`` with the measured shares,
    or ``applied: False`` and a ``reason`` when the model records no training share or too few
    cells are located.
    """
    crop = float(meta["preprocess"]["crop_fraction"])
    out = {"applied": False, "crop_fraction": {"model": crop, "adapted": crop}}
    reference = meta.get("training_cell_share")
    if not reference:
        return {**out, "reason": "the model records no training_cell_share (packaged before it was measured)"}
    share, found, looked = lab_cell_share(dataset, crop)
    out.update(training_cell_share=reference, cells_located=found, cells_looked_at=looked)
    if share is None:
        return {**out, "reason": f"a cell was located in only {found} of {looked} images"}
    ratio = share / reference
    out.update(lab_cell_share=round(share, 4), ratio=round(ratio, 3))
    if abs(math.log(ratio)) < math.log(TOLERANCE):
        return {**out, "reason": f"the scales differ by less than x{TOLERANCE:g}"}
    adapted = round(float(np.clip(crop * ratio, 0.1, MAX_CROP_FRACTION)), 4)
    return {**out, "applied": True, "crop_fraction": {"model": crop, "adapted": adapted}}
