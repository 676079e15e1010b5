"""Classify and count the cells of whole smear fields with a :class:`~bloodcell.prediction.classifier.Classifier`.

Each white cell the detector finds is cut out as a PBC image would show it: a square centred
on the cell, :data:`PBC_SIDE_RBC` red-cell diameters wide (so the cell fills the share of the
image it fills in training, whatever the magnification), and classified with its flags. The
classifier's class sorts each cell into a group: ``white`` (counted in the differential),
``nucleated_red`` (erythroblasts, counted apart per 100 white cells as laboratories do) or
``platelet``. Cells the detector finds too small for a white cell are counted as platelets
without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bloodcell.core.locate import square
from bloodcell.core.stats import wilson_interval
from bloodcell.fields.detect import Field, Found, detect
from bloodcell.fields.tiles import ALL_SHARED, Edges, owns
from bloodcell.prediction.differential import UNFAMILIAR_MIN_CELLS, Differential, differential, lab_differential, run_warning
from bloodcell.prediction.results import Prediction

#: The shorter side of a PBC image in red-cell diameters: the median over 800 PBC images of the
#: detector's red-cell diameter (about 49 px on 256-px images; ``python benchmarks/fields.py``).
PBC_SIDE_RBC = 5.2
#: A cell never fills more than this share of its crop, however large it is.
MAX_FILL = 0.7
GROUPS = {"erythroblast": "nucleated_red", "platelet": "platelet"}


def group_of(label: str) -> str:
    """The count a classified cell goes to: ``white``, ``nucleated_red`` or ``platelet``."""
    return GROUPS.get(label, "white")


@dataclass
class FieldCell:
    """One cell of a field: where it is, how sure the detector is, and what the model says.

    ``prediction`` is ``None`` for the small cells counted as platelets by size alone.
    """

    box: tuple[int, int, int, int]
    at_border: bool
    score: float
    group: str
    prediction: Prediction | None = None
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return self.prediction.label if self.prediction is not None else "platelet"

    def to_dict(self) -> dict:
        d = {"box": list(self.box), "at_border": self.at_border, "detection_score": self.score, "group": self.group}
        if self.prediction is not None:
            d.update(self.prediction.to_dict())
        else:
            d.update(label="platelet", classified=False)
        return d


@dataclass
class FieldResult:
    """What was found in one field image.

    ``cells`` are the cells this image counts; ``elsewhere`` the boxes in a tile overlap that a
    neighbouring tile counts (drawn on overlays, never counted here). ``rbc`` is the red-cell
    diameter in pixels, the scale the detector used.
    """

    source: str
    width: int
    height: int
    rbc: float
    cells: list[FieldCell] = field(default_factory=list)
    elsewhere: list[tuple[int, int, int, int]] = field(default_factory=list)

    def predictions(self, group: str | None = "white") -> list[Prediction]:
        """The classified cells' predictions (of one group; all with ``group=None``)."""
        return [c.prediction for c in self.cells if c.prediction is not None and (group is None or c.group == group)]

    def counts(self) -> dict:
        """How many cells of each group, and how many the model flagged as not a blood cell
        (left out of the groups)."""
        out = {"white": 0, "nucleated_red": 0, "platelet": 0, "not_a_blood_cell": 0}
        for c in self.cells:
            if c.prediction is not None and c.prediction.not_a_blood_cell:
                out["not_a_blood_cell"] += 1
            else:
                out[c.group] += 1
        out["at_border"] = sum(c.at_border for c in self.cells)
        return out

    def to_dict(self, class_names) -> dict:
        return {"source": self.source, "width": self.width, "height": self.height, "rbc_px": round(self.rbc, 1),
                "counts": self.counts(), "left_to_neighbour_tile": len(self.elsewhere),
                "differential": white_differential(self.cells, class_names).to_dict(),
                "lab_differential": lab_of(self.cells),
                "cells": [c.to_dict() for c in self.cells]}


def white_classes(class_names) -> list[str]:
    """The model's classes that are white cells (what the differential counts)."""
    return [c for c in class_names if group_of(c) == "white"]


def white_differential(cells: list[FieldCell], class_names) -> Differential:
    """The white-cell differential of ``cells`` (erythroblasts and platelets counted apart)."""
    preds = [c.prediction for c in cells if c.prediction is not None and c.group == "white"]
    return differential(preds, white_classes(class_names))


def slide_colour(image: np.ndarray) -> np.ndarray:
    """The colour of the bare slide: the median colour of the brightest tenth of the pixels (the
    image border, which :func:`bloodcell.core.locate.crop_box` uses, is mostly red cells in a
    dense field)."""
    flat = image.reshape(-1, 3)[:: max(1, image.shape[0] * image.shape[1] // 20000)]
    light = flat.astype(np.int32).sum(axis=1)
    return np.median(flat[light >= np.percentile(light, 90)], axis=0).astype(np.uint8)


def lab_of(cells: list[FieldCell]) -> dict:
    """The lab-style differential of ``cells`` (:func:`~bloodcell.prediction.differential.lab_differential`):
    white cells in percent, nucleated red cells per 100 white cells, platelets apart (those
    counted by size included), cells the model flags as not a blood cell excluded."""
    return lab_differential([c.label for c in cells],
                            not_a_blood_cell=[bool(c.prediction is not None and c.prediction.not_a_blood_cell) for c in cells])


def cell_crop(image: np.ndarray, found: Found, rbc: float, fill: np.ndarray | None = None) -> np.ndarray:
    """The cell cut out as a PBC image shows one: centred, :data:`PBC_SIDE_RBC` red cells wide
    (wider when the cell would fill more than :data:`MAX_FILL` of it); beyond the image, the
    slide's colour (``fill``, default :func:`slide_colour`)."""
    x0, y0, x1, y1 = found.box
    side = max(PBC_SIDE_RBC * rbc, max(x1 - x0, y1 - y0) / MAX_FILL)
    left, top, right, bottom = square((x0 + x1) / 2, (y0 + y1) / 2, side)
    h, w = image.shape[:2]
    if left >= 0 and top >= 0 and right <= w and bottom <= h:
        return image[top:bottom, left:right]
    out = np.empty((bottom - top, right - left, 3), dtype=image.dtype)
    out[:] = slide_colour(image) if fill is None else fill
    sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, right), min(h, bottom)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return out


def analyse_image(classifier, image: np.ndarray, source: str, overlap: float = 0.0,
                  edges: Edges = ALL_SHARED, keep_crops: bool = False) -> FieldResult:
    """Find, classify and count the cells of one RGB ``uint8`` field (``keep_crops``: each classified
    cell keeps the crop the model was given, as ``FieldCell.crop``)."""
    found: Field = detect(image)
    result = FieldResult(source, found.width, found.height, found.rbc)
    mine = []
    for cell in found.cells:
        if owns(cell.centre, found.width, found.height, overlap, edges):
            mine.append(cell)
        else:
            result.elsewhere.append(cell.box)
    white = [c for c in mine if c.kind == "white"]
    fill = slide_colour(image) if white else None
    crops = [cell_crop(image, c, found.rbc, fill) for c in white]
    # the familiarity check was calibrated on single-cell images; crops cut from fields are framed otherwise
    preds = classifier.predict_arrays(crops, [source] * len(white), familiarity=False)
    by_cell = {id(c): (p, crop) for c, p, crop in zip(white, preds, crops)}
    for c in mine:
        p, crop = by_cell.get(id(c), (None, None))
        group = group_of(p.label) if p is not None else "platelet"
        result.cells.append(FieldCell(c.box, c.at_border, c.score, group, p, crop if keep_crops else None))
    return result


def overall_differential(results: list[FieldResult], class_names) -> Differential:
    """The white-cell differential over all fields."""
    return white_differential([c for r in results for c in r.cells], class_names)


def overall_counts(results: list[FieldResult]) -> dict:
    """Counts of each group summed over the fields, with nucleated red cells per 100 white cells."""
    total = {"fields": len(results), "white": 0, "nucleated_red": 0, "platelet": 0, "not_a_blood_cell": 0, "at_border": 0}
    for r in results:
        for k, v in r.counts().items():
            total[k] += v
    total["nucleated_red_per_100_white"] = round(100.0 * total["nucleated_red"] / total["white"], 1) if total["white"] else None
    return total


#: Share of the cells found at a white cell's size that the default model calls platelets on PBC's own
#: validation images read as fields (63 of 378: a platelet image's clump is white-sized), and the share
#: whose 95% lower bound, twice that, says the model is reading unfamiliar images.
PBC_PLATELET_SIZED, PLATELET_SIZED_LIMIT = 0.17, 0.35


def platelet_share_warning(called: int, counted: int) -> str | None:
    """A warning when far more of the ``counted`` cells found in fields at a white cell's size (the ones
    classified, not flagged not a cell) are ``called`` platelets than on PBC's own fields: a nucleated cell
    of a white cell's size is rarely a platelet, so the model is misreading another lab's stain or
    magnification; else ``None``."""
    if counted < UNFAMILIAR_MIN_CELLS or wilson_interval(called, counted)[0] <= PLATELET_SIZED_LIMIT:
        return None
    return (f"{called} of the {counted} cells found at a white cell's size were classified as platelets "
            f"({called / counted:.0%}; on PBC's own fields about {PBC_PLATELET_SIZED:.0%}): the model is probably "
            "reading another lab's stain or magnification, where its labels are unreliable. Review them, or adapt "
            "the model to your lab's cells (`bloodcell adapt`).")


def platelet_sized_warning(results: list[FieldResult]) -> str | None:
    """:func:`platelet_share_warning` for the cells of a field run."""
    cells = [c for r in results for c in r.cells if c.prediction is not None and not c.prediction.not_a_blood_cell]
    return platelet_share_warning(sum(c.prediction.label == "platelet" for c in cells), len(cells))


def fields_warning(results: list[FieldResult], diff: Differential, model: dict | None) -> str | None:
    """What a field run warns of: most white cells uncertain (:func:`~bloodcell.prediction.differential.run_warning`)
    and white-sized cells taken for platelets (:func:`platelet_sized_warning`), or ``None``."""
    said = [w for w in (run_warning(diff, model), platelet_sized_warning(results)) if w]
    return " ".join(said) or None
