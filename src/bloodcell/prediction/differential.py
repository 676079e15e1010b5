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
    intervals; with no cell counted, both are ``None`` (as in the lab-style differential).
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
            "percent": round(100.0 * count[name] / n, 2) if n else None,
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)] if n else None,
            "uncertain": unsure[name],
        })
    return Differential(rows, total, n, total - n, sum(unsure.values()))


#: A run whose share of uncertain cells is surely (95% Wilson lower bound) above this many times the
#: model's share on its validation images, and above the floor, is said to look unlike its training data.
UNFAMILIAR_FACTOR, UNFAMILIAR_FLOOR, UNFAMILIAR_MIN_CELLS = 5.0, 0.10, 20


def unfamiliar_warning(diff: Differential, validation_uncertain: float | None) -> str | None:
    """A warning when far more of a run's cells are uncertain than the model's validation images were
    (``validation_uncertain``: their share, or ``None`` when unknown or the threshold was given); else ``None``.

    The out-of-distribution check tells cells from non-cells, so another lab's cells pass it; this is
    what says that the model is reading images unlike its training data, where its labels are unreliable.
    """
    return uncertain_share_warning(diff.uncertain, diff.counted, validation_uncertain)


def uncertain_share_warning(uncertain: int, counted: int, validation_uncertain: float | None) -> str | None:
    """:func:`unfamiliar_warning` from the counts: ``uncertain`` of ``counted`` cells (those not flagged
    not a blood cell) against the model's share on its validation images."""
    if validation_uncertain is None or counted < UNFAMILIAR_MIN_CELLS:
        return None
    low, _ = wilson_interval(uncertain, counted)
    if low <= max(UNFAMILIAR_FLOOR, UNFAMILIAR_FACTOR * validation_uncertain):
        return None
    return (f"{uncertain / counted:.0%} of these {counted} cells are uncertain, against "
            f"{validation_uncertain:.1%} of the model's validation images: they probably come from another "
            "microscope, camera or stain than its training data, where its labels are unreliable. Review them, "
            "or adapt the model to your lab's cells (`bloodcell adapt`).")


def run_warning(diff: Differential | None, model: dict | None) -> str | None:
    """:func:`unfamiliar_warning` for a run of the model ``model`` describes
    (:meth:`~bloodcell.prediction.classifier.Classifier.describe`); ``None`` without a differential."""
    return unfamiliar_warning(diff, (model or {}).get("validation_uncertain")) if diff is not None else None


#: The white cells of a lab differential, in the order a report lists them.
WHITE_CELLS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")
#: Labels a reviewer gives to an image that is not a countable cell.
EXCLUSION_LABELS = ("not_a_cell", "smudge", "artefact")
#: The reason an unreviewed image flagged by the model's out-of-distribution check is left out.
NOT_A_BLOOD_CELL = "not_a_blood_cell"


def _percent(k: int, n: int) -> dict:
    lo, hi = wilson_interval(k, n)
    return {"percent": round(100.0 * k / n, 2) if n else None,
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)] if n else None}


def _per_100(k: int, wbc: int) -> dict:
    """NRBC per 100 white cells, its interval from the Wilson interval of NRBC / (NRBC + WBC)."""
    if not wbc:
        return {"count": k, "per_100_wbc": None, "ci95": None}
    lo, hi = wilson_interval(k, k + wbc)
    ratio = [100 * p / (1 - p) if p < 1 else None for p in (lo, hi)]
    return {"count": k, "per_100_wbc": round(100.0 * k / wbc, 2),
            "ci95": [None if r is None else round(r, 2) for r in ratio]}


def _final_labels(labels, reviewed, not_a_blood_cell) -> list[str]:
    out = []
    for label, done, flagged in zip(labels, reviewed, not_a_blood_cell):
        out.append(NOT_A_BLOOD_CELL if flagged and not done else label)
    return out


def lab_differential(labels, *, reviewed=None, predicted=None, not_a_blood_cell=None) -> dict:
    """The differential as a haematology lab reports it, from each image's final label.

    White cells (:data:`WHITE_CELLS`) are percentages of the white cells counted; erythroblasts
    are reported as NRBC per 100 white cells; platelets are counted apart; images labelled
    ``not_a_cell``, ``smudge`` or ``artefact`` (or any label that is not a class), and unreviewed
    images the model flags as not a blood cell, are listed under ``excluded`` by reason.
    Intervals are 95% Wilson intervals, in percent.

    Parameters
    ----------
    labels : sequence of str
        The final label of each image: the reviewer's label if any, else the model's class.
    reviewed : sequence of bool, optional
        Whether each final label is a reviewer's (default: none is).
    predicted : sequence of str, optional
        The model's class of each image, for ``agreement`` (default: ``labels``).
    not_a_blood_cell : sequence of bool or None, optional
        The model's not-a-blood-cell flag of each image; it excludes only unreviewed images.

    Returns
    -------
    dict
        ``white_cells`` (rows ``{class, count, percent, ci95}``), ``nrbc`` (``{count, per_100_wbc,
        ci95}``), ``platelets`` (``{count}``), ``excluded`` (``[{reason, count}]``), ``reviewed``,
        ``unreviewed``, ``total``, ``wbc_total`` and ``agreement`` (``{reviewed, agreed, percent,
        ci95}``: reviewed images whose review equals the model's class).
    """
    labels = list(labels)
    n = len(labels)
    reviewed = [bool(r) for r in reviewed] if reviewed is not None else [False] * n
    predicted = list(predicted) if predicted is not None else labels
    flags = list(not_a_blood_cell) if not_a_blood_cell is not None else [False] * n
    final = _final_labels(labels, reviewed, flags)
    counts: dict[str, int] = {}
    for label in final:
        counts[label] = counts.get(label, 0) + 1
    wbc = sum(counts.get(c, 0) for c in WHITE_CELLS)
    known = set(WHITE_CELLS) | {"erythroblast", "platelet"}
    excluded = [{"reason": r, "count": c} for r, c in sorted(counts.items()) if r not in known]
    agreed = sum(1 for lab, pre, done in zip(labels, predicted, reviewed) if done and lab == pre)
    n_reviewed = sum(reviewed)
    return {
        "white_cells": [{"class": c, "count": counts.get(c, 0), **_percent(counts.get(c, 0), wbc)}
                        for c in WHITE_CELLS],
        "nrbc": _per_100(counts.get("erythroblast", 0), wbc),
        "platelets": {"count": counts.get("platelet", 0)},
        "excluded": excluded,
        "reviewed": n_reviewed,
        "unreviewed": n - n_reviewed,
        "total": n,
        "wbc_total": wbc,
        "agreement": {"reviewed": n_reviewed, "agreed": agreed, **_percent(agreed, n_reviewed)},
    }


def lab_differential_of(predictions) -> dict:
    """:func:`lab_differential` of unreviewed predictions (any iterable, read once)."""
    labels, flagged = [], []
    for p in predictions:
        labels.append(p.label)
        flagged.append(bool(p.not_a_blood_cell))
    return lab_differential(labels, not_a_blood_cell=flagged)


def _ci(ci) -> str:
    if ci is None:
        return "-"
    return f"{'-' if ci[0] is None else f'{ci[0]:.1f}'}-{'inf' if ci[1] is None else f'{ci[1]:.1f}'}"


def lab_table(d: dict) -> str:
    """:func:`lab_differential` as a text table: white cells, NRBC, platelets, excluded, review."""
    lines = [f"Lab differential: {d['wbc_total']} white cells of {d['total']} image(s)",
             f"{'white cell':<14} {'count':>6} {'%':>7}   {'95% CI':<13}"]
    for r in d["white_cells"]:
        pct = "-" if r["percent"] is None else f"{r['percent']:.1f}"
        lines.append(f"{r['class']:<14} {r['count']:>6} {pct:>7}   {_ci(r['ci95']):<13}")
    nrbc = d["nrbc"]
    per = "-" if nrbc["per_100_wbc"] is None else f"{nrbc['per_100_wbc']:.1f}"
    lines.append(f"{'NRBC/100 WBC':<14} {nrbc['count']:>6} {per:>7}   {_ci(nrbc['ci95']):<13}")
    lines.append(f"{'platelets':<14} {d['platelets']['count']:>6}")
    for e in d["excluded"]:
        lines.append(f"{'excluded':<14} {e['count']:>6}   {e['reason']}")
    lines.append(f"reviewed {d['reviewed']}, unreviewed {d['unreviewed']}")
    a = d["agreement"]
    if a["reviewed"]:
        lines.append(f"review agrees with the model: {a['agreed']}/{a['reviewed']} = {a['percent']:.1f}% "
                     f"(95% CI {_ci(a['ci95'])})")
    return "\n".join(lines)
