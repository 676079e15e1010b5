"""The white-cell differential: how many of the classified cells fall in each class."""

from __future__ import annotations

from dataclasses import dataclass

from bloodcell.core.stats import wilson_interval


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


def differential(predictions, class_names) -> Differential:
    """Count predictions per class (see :class:`Differential`); ``predictions`` may be any iterable,
    read once, so the rows of a long run can be counted as they are read back from disk."""
    count = {name: 0 for name in class_names}
    unsure = {name: 0 for name in class_names}
    total = 0
    for p in predictions:
        total += 1
        if p.not_a_blood_cell:
            continue
        count[p.label] = count.get(p.label, 0) + 1
        unsure[p.label] = unsure.get(p.label, 0) + int(bool(p.uncertain))
    n = sum(count.values())
    rows = []
    for name in class_names:
        lo, hi = wilson_interval(count[name], n)
        rows.append({
            "class": name,
            "count": count[name],
            "percent": round(100.0 * count[name] / n, 2) if n else 0.0,
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
            "uncertain": unsure[name],
        })
    return Differential(rows, total, n, total - n, sum(unsure.values()))
