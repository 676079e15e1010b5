"""Prediction output as a text table, CSV or JSON, and the differential count.

Column names for the class probabilities are ``p_<class>``; short headers
in the table use :data:`SHORT`. While a run goes on, :class:`PartialResults`
keeps the rows classified so far in ``<output>.partial``, so an interrupted run
loses nothing it computed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_with
from bloodcell.prediction.differential import Differential, lab_differential_of, lab_table, run_warning
from bloodcell.prediction.results import Prediction, PredictionRun

SHORT = {
    "basophil": "baso",
    "eosinophil": "eos",
    "erythroblast": "ery",
    "ig": "ig",
    "lymphocyte": "lym",
    "monocyte": "mono",
    "neutrophil": "neut",
    "platelet": "plt",
}
FORMATS = ("table", "csv", "json")


#: What ``predict`` does with the differential: beside the predictions, alone, or not at all.
DIFFERENTIAL_MODES = ("auto", "only", "no")


def check_choices(format: str, differential: str) -> None:
    """Refuse an unknown output format or differential mode before any work."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}.")
    if differential not in DIFFERENTIAL_MODES:
        raise ConfigError(f"differential must be one of {list(DIFFERENTIAL_MODES)}, got {differential!r}.")


def flags(p: Prediction) -> str:
    out = []
    if p.not_a_blood_cell:
        out.append("not-a-cell")
    if p.uncertain:
        out.append("uncertain")
    if p.unfamiliar:
        out.append("unfamiliar")
    if p.framing == "centre":
        out.append("no-cell-found")
    return ",".join(out)


def _short(name: str) -> str:
    return SHORT.get(name, name[:5])


def table(predictions: list[Prediction], class_names) -> str:
    """Fixed-width table: image, class, top probability, flags, then every class probability."""
    with_truth = any(p.true_label is not None for p in predictions)
    width = min(60, max([5] + [len(p.source) for p in predictions]))
    head = f"{'image':<{width}}  {'class':<12} {'prob':>5}  {'flags':<20}"
    if with_truth:
        head += f" {'true':<12}"
    head += " " + " ".join(f"{_short(c):>5}" for c in class_names)
    lines = [head]
    for p in predictions:
        src = p.source if len(p.source) <= width else "..." + p.source[-(width - 3):]
        line = f"{src:<{width}}  {p.label:<12} {p.probability:>5.3f}  {flags(p):<20}"
        if with_truth:
            line += f" {p.true_label or '-':<12}"
        line += " " + " ".join(f"{p.probabilities[c]:>5.3f}" for c in class_names)
        lines.append(line)
    if with_truth:
        known = [p for p in predictions if p.true_label is not None]
        right = sum(p.label == p.true_label for p in known)
        lines.append(f"accuracy against the given labels: {right}/{len(known)} = {100.0 * right / len(known):.1f}%")
    return "\n".join(lines)


def differential_table(d: Differential) -> str:
    """The differential as a lab-style table."""
    head = f"Differential: {d.counted} cells"
    if d.excluded:
        head += f" ({d.excluded} image(s) flagged not a blood cell and left out)"
    lines = [head, f"{'class':<14} {'count':>6} {'%':>7}   {'95% CI':<15} {'uncertain':>9}"]
    for r in d.rows:
        ci = "-" if r["ci95"] is None else f"{r['ci95'][0]:.1f}-{r['ci95'][1]:.1f}"
        pct = "-" if r["percent"] is None else f"{r['percent']:.1f}"
        lines.append(f"{r['class']:<14} {r['count']:>6} {pct:>7}   {ci:<15} {r['uncertain']:>9}")
    lines.append(f"{'total':<14} {d.counted:>6} {'100.0' if d.counted else '-':>7}")
    return "\n".join(lines)


def _with_framing(predictions: list[Prediction]) -> bool:
    """Whether the model frames cells, so the CSV gets a ``framing`` column (centre-framed models' CSV is unchanged)."""
    return any(p.framing is not None for p in predictions)


def _csv_header(class_names, with_truth: bool, with_framing: bool = False) -> list[str]:
    return (["source", "label", "probability", "uncertain", "not_a_blood_cell", "ood_score"]
            + (["framing"] if with_framing else [])
            + (["true_label"] if with_truth else []) + [f"p_{c}" for c in class_names])


def _csv_row(p: Prediction, class_names, with_truth: bool, with_framing: bool = False) -> list:
    return ([p.source, p.label, f"{p.probability:.6f}", int(p.uncertain),
             "" if p.not_a_blood_cell is None else int(p.not_a_blood_cell),
             "" if p.ood_score is None else f"{p.ood_score:.4f}"]
            + ([p.framing or ""] if with_framing else [])
            + ([p.true_label or ""] if with_truth else []) + [f"{p.probabilities[c]:.6f}" for c in class_names])


def predictions_csv(predictions: list[Prediction], class_names) -> str:
    """One row per image: source, class, probability, flags, OOD score, framing (cell-framing models
    only), every class probability."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    with_truth = any(p.true_label is not None for p in predictions)
    with_framing = _with_framing(predictions)
    w.writerow(_csv_header(class_names, with_truth, with_framing))
    for p in predictions:
        w.writerow(_csv_row(p, class_names, with_truth, with_framing))
    return buf.getvalue()


def _two(x) -> str:
    """A percentage with two decimals; empty for none."""
    return "" if x is None or x == "" else f"{x:.2f}"


def differential_csv(d: Differential) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "count", "percent", "ci95_low", "ci95_high", "uncertain"])
    for r in d.rows:
        low, high = r["ci95"] or ("", "")
        w.writerow([r["class"], r["count"], _two(r["percent"]), _two(low), _two(high), r["uncertain"]])
    return buf.getvalue()


def as_json(model: dict, predictions: list[Prediction], problems, d: Differential | None,
            lab: dict | None = None) -> str:
    """The whole run as one JSON document (``differential`` and ``lab_differential`` are ``null`` for
    a single image)."""
    return json.dumps({
        "model": model,
        "predictions": [p.to_dict() for p in predictions],
        "skipped": [{"source": q.item, "reason": q.message} for q in problems],
        "differential": d.to_dict() if d is not None else None,
        "lab_differential": lab,
        "warning": run_warning(d, model),
    }, indent=2)


def notes(abstain_source: str, abstain_threshold: float, has_ood: bool) -> list[str]:
    """The remarks printed under the table about what the model lacks."""
    out = []
    if abstain_source == "default":
        out.append("note: the model has no calibrated abstention threshold; "
                   f"'uncertain' means top probability < {abstain_threshold}.")
    if not has_ood:
        out.append("note: the model carries no out-of-distribution statistics, "
                   "so no image is checked for being a blood cell.")
    return out


def render(fmt: str, model: dict, predictions: list[Prediction], problems, d: Differential | None, class_names,
           only_differential: bool = False, notes: list[str] | tuple = ()) -> str:
    """The whole output of ``bloodcell predict`` in one format (``table``, ``csv`` or ``json``).

    ``only_differential`` leaves out the per-image rows; ``notes`` follow the table. With a
    differential, the table and JSON also carry the lab-style differential
    (:func:`~bloodcell.prediction.differential.lab_differential`).
    """
    lab = lab_differential_of(predictions) if d is not None else None
    if fmt == "json":
        text = as_json(model, [] if only_differential else predictions, problems, d, lab)
    elif fmt == "csv":
        text = differential_csv(d) if only_differential else predictions_csv(predictions, class_names)
    else:
        parts = [] if only_differential else [table(predictions, class_names)]
        if d is not None:
            parts += [differential_table(d), lab_table(lab)]
        if not only_differential:
            parts += list(notes)
        text = "\n\n".join(parts)
    return text if text.endswith("\n") else text + "\n"


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write_with(Path(path), write)


class PartialResults:
    """The predictions of a run so far, appended to ``<output>.partial`` (CSV) batch by batch.

    The file is removed once the finished output is written; when the run stops
    early it stays, with every image classified until then.
    """

    def __init__(self, output: str | Path, class_names):
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".partial")
        self.class_names = tuple(class_names)
        self.rows = 0
        self.with_framing = False
        self._file = None
        self._writer = None

    def add(self, predictions: list[Prediction]) -> None:
        if not predictions:
            return
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8", newline="")  # kept open across batches
            self._writer = csv.writer(self._file, lineterminator="\n")
            self.with_framing = _with_framing(predictions)  # one model per run: the first batch tells
            self._writer.writerow(_csv_header(self.class_names, True, self.with_framing))
        for p in predictions:
            self._writer.writerow(_csv_row(p, self.class_names, True, self.with_framing))
        self._file.flush()
        self.rows += len(predictions)

    def finish(self, text: str) -> None:
        """Write the finished output (the partial file stays if that fails) and remove the partial file."""
        try:
            write_text(self.output, text)
        except BaseException:
            self.close(keep=True)
            raise
        self.close(keep=False)

    def close(self, keep: bool) -> Path | None:
        """Close the file; remove it unless ``keep``. Returns its path when it is kept with rows in it."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if keep and self.rows:
            return self.path
        self.path.unlink(missing_ok=True)
        return None


def gather(chunks, partial: PartialResults | None = None) -> PredictionRun:
    """Collect ``(predictions, problems)`` pairs as they come, appending each to ``partial``;
    if the run stops early the rows so far stay in the partial file, and the user is told where."""
    run = PredictionRun([], [])
    try:
        for predictions, problems in chunks:
            run.predictions += predictions
            run.problems += problems
            if partial is not None:
                partial.add(predictions)
    except BaseException:
        kept = partial.close(keep=True) if partial is not None else None
        if kept is not None:
            print(f"bloodcell predict: stopped; the {partial.rows} image(s) classified so far are in {kept}.", file=sys.stderr)
        raise
    return run
