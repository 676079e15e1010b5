"""The white-cell differential: how many of the classified cells fall in each class."""

from __future__ import annotations

from dataclasses import dataclass

from bloodcell.core.stats import wilson_interval
from bloodcell.prediction.results import Prediction


@dataclass
class Differential:
    """A white-cell differential: count and share of each class among the images classified as cells.

    Images flagged ``not_a_blood_cell`` are left out of the count (``excluded``);
    uncertain images are counted in their predicted class and also tallied in
    each row's ``uncertain`` column for review. Percentages carry 95% Wilson
    intervals.
    """

    rows: list[dict]
    total: int
    counted: int
    excluded: int
    uncertain: int

    def to_dict(self) -> dict:
        return {"total": self.total, "counted": self.counted, "excluded_not_a_blood_cell": self.excluded,
                "uncertain": self.uncertain, "classes": self.rows}


def differential(predictions: list[Prediction], class_names) -> Differential:
    """Count predictions per class (see :class:`Differential`)."""
    cells = [p for p in predictions if not p.not_a_blood_cell]
    n = len(cells)
    rows = []
    for name in class_names:
        mine = [p for p in cells if p.label == name]
        lo, hi = wilson_interval(len(mine), n)
        rows.append({
            "class": name,
            "count": len(mine),
            "percent": round(100.0 * len(mine) / n, 2) if n else 0.0,
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
            "uncertain": sum(p.uncertain for p in mine),
        })
    return Differential(rows, len(predictions), n, len(predictions) - n, sum(p.uncertain for p in cells))
