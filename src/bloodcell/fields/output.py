"""Field results as a text table, CSV (one row per cell) or JSON (one object per field)."""

from __future__ import annotations

import csv
import io
import json

from bloodcell.fields.analyse import FieldResult, fields_warning, lab_of, overall_counts, overall_differential, white_differential
from bloodcell.prediction import outputs
from bloodcell.prediction.differential import lab_table

BOX = ("x0", "y0", "x1", "y1")


def fields_csv(results: list[FieldResult], class_names) -> str:
    """One row per cell: source, cell number, box (original pixels), at_border, group, then the
    usual prediction columns (empty for platelets counted by size)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["source", "cell", *BOX, "at_border", "detection_score", "group", "label", "probability", "uncertain",
                "not_a_blood_cell", "ood_score", *[f"p_{c}" for c in class_names]])
    for r in results:
        for i, c in enumerate(r.cells, start=1):
            head = [r.source, i, *c.box, int(c.at_border), f"{c.score:.4f}", c.group]
            p = c.prediction
            if p is None:
                w.writerow(head + ["platelet", "", "", "", ""] + [""] * len(class_names))
                continue
            w.writerow(head + [p.label, f"{p.probability:.6f}", int(p.uncertain),
                               "" if p.not_a_blood_cell is None else int(p.not_a_blood_cell),
                               "" if p.ood_score is None else f"{p.ood_score:.4f}"]
                       + [f"{p.probabilities[k]:.6f}" for k in class_names])
    return buf.getvalue()


def fields_json(model: dict, results: list[FieldResult], problems, class_names) -> str:
    """Every field with its cells (``box: [x0, y0, x1, y1]``, ``at_border``, the prediction), its
    counts and differentials (white cells only, and lab-style), then the totals over all fields and the
    warning when the cells look unlike the model's training data (:func:`fields_warning`; ``null`` otherwise)."""
    diff = overall_differential(results, class_names)
    return json.dumps({
        "model": model,
        "fields": [r.to_dict(class_names) for r in results],
        "counts": overall_counts(results),
        "differential": diff.to_dict(),
        "lab_differential": lab_of([c for r in results for c in r.cells]),
        "skipped": [{"source": q.item, "reason": q.message} for q in problems],
        "warning": fields_warning(results, diff, model),
    }, indent=2)


def _flags(c) -> str:
    out = [outputs.flags(c.prediction)] if c.prediction is not None else []
    if c.at_border:
        out.append("at-border")
    return ",".join(x for x in out if x)


def fields_table(results: list[FieldResult], class_names) -> str:
    """Per field: one line per cell (box, class, probability, flags), then the counts; after all
    fields, the totals and the lab-style differential."""
    lines = []
    for r in results:
        n = r.counts()
        lines.append(f"{r.source}: {n['white']} white, {n['nucleated_red']} nucleated red, {n['platelet']} platelet(s)"
                     + (f", {n['not_a_blood_cell']} not a blood cell" if n["not_a_blood_cell"] else "")
                     + (f"; {len(r.elsewhere)} left to a neighbouring tile" if r.elsewhere else ""))
        for i, c in enumerate(r.cells, start=1):
            box = "{},{},{},{}".format(*c.box)
            prob = f"{c.prediction.probability:.3f}" if c.prediction is not None else "  -  "
            lines.append(f"  {i:>3}  {box:<19} {c.label:<13} {prob:>5}  {_flags(c)}")
    total = overall_counts(results)
    lines.append("")
    lines.append(f"{total['fields']} field(s): {total['white']} white cells, {total['nucleated_red']} nucleated red cells"
                 + (f" ({total['nucleated_red_per_100_white']} per 100 white)" if total["white"] else "")
                 + f", {total['platelet']} platelets; {total['at_border']} cell(s) cut by the image border")
    if any(r.cells for r in results):
        lines.append("")
        lines.append(lab_table(lab_of([c for r in results for c in r.cells])).replace(" image(s)", " cell(s) found", 1))
    return "\n".join(lines)


def render(fmt: str, model: dict, results: list[FieldResult], problems, class_names) -> str:
    """The whole output of ``bloodcell predict --fields`` in one format."""
    if fmt == "json":
        text = fields_json(model, results, problems, class_names)
    elif fmt == "csv":
        text = fields_csv(results, class_names)
    else:
        text = fields_table(results, class_names)
    return text if text.endswith("\n") else text + "\n"


__all__ = ["fields_csv", "fields_json", "fields_table", "render", "white_differential"]
