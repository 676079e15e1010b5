"""A self-contained HTML report of an evaluation, with its figures as PNG files.

:func:`write_report` writes into one folder: ``report.html`` (every figure
embedded as a base64 PNG, no external URL), the same figures as ``.png``
files, and ``metrics.json``. The page is ``report_template.html`` (shipped
beside this module) filled in by :func:`render_html`; every value that comes
from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json, check_writable_folder
from bloodcell.evaluation import plots
from bloodcell.evaluation.calibration import confidence_and_correct
from bloodcell.evaluation.metrics import display
from bloodcell.evaluation.results import Evaluation
from bloodcell.prediction.explain import gradcam, overlay

#: Section ids of the report, in order (each present in every report; a
#: section without data says why).
SECTIONS = (
    ("summary", "Per-class results"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Precision and recall per class"),
    ("calibration", "Calibration"),
    ("abstention", "Abstention: refer to a hematologist"),
    ("tta", "Test-time augmentation"),
    ("mistakes", "Most confident mistakes"),
    ("gradcam", "Grad-CAM"),
    ("details", "Model and data details"),
)

TEMPLATE = "report_template.html"


def most_confident_mistakes(ev: Evaluation, k: int = 24) -> np.ndarray:
    """Indices of the ``k`` wrong predictions with the highest confidence."""
    conf, correct = confidence_and_correct(ev.probs, ev.y_true)
    wrong = np.flatnonzero(~correct)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:k]


def gradcam_rows(ev: Evaluation, per_class: int = 3, seed: int = 0) -> tuple[list[dict], str | None]:
    """Grad-CAM overlays for a random sample of each evaluated class.

    Returns the rows for :func:`plots.gradcam_grid` and, when Grad-CAM cannot
    run on this model, the reason instead.
    """
    if per_class <= 0:
        return [], "Grad-CAM examples were not asked for (--gradcam-per-class 0)."
    rng = np.random.default_rng(seed)
    names = ev.class_names
    pred = ev.probs.argmax(1)
    picks = []
    for name in ev.alignment.evaluated:
        idx = np.flatnonzero(ev.y_true == names.index(name))
        if len(idx):
            picks.append((name, np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))))
    flat = np.concatenate([p for _, p in picks]) if picks else np.zeros(0, int)
    try:
        cams = gradcam(ev.loaded, ev.images[flat]) if len(flat) else np.zeros((0,))
    except (ValueError, RuntimeError) as e:
        return [], f"Grad-CAM is not available for this model ({e})."
    rows, start = [], 0
    for name, idx in picks:
        c = cams[start : start + len(idx)]
        start += len(idx)
        rows.append({
            "class": name,
            "images": ev.images[idx],
            "overlays": np.stack([overlay(ev.images[i], m, cmap=plots.GRADCAM_CMAP) for i, m in zip(idx, c)]),
            "pred": [names[pred[i]] for i in idx],
            "confidence": [float(ev.probs[i].max()) for i in idx],
        })
    return rows, None


def build_figures(ev: Evaluation, n_mistakes: int = 24, gradcam_per_class: int = 3) -> tuple[dict, dict]:
    """Render every figure of the report: ``({name: png_bytes}, {name: reason it is missing})``."""
    s = ev.summary
    m = s["metrics"]
    cal = s["calibration"]
    figs: dict[str, bytes] = {}
    missing: dict[str, str] = {}

    def add(name, fig, why):
        if fig is None:
            missing[name] = why
        else:
            figs[name] = plots.to_png(fig)

    add("training_curves", plots.training_curves(ev.loaded.meta.get("history") or []),
        "The model's metadata holds no training history.")
    add("confusion_matrix", plots.confusion_matrix(m["confusion_matrix"]), "")
    add("per_class", plots.per_class_bars(m), "")
    panels = [("Uncalibrated", cal["reliability_uncalibrated"], cal["ece_uncalibrated"])]
    if cal["temperature"] != 1.0:
        panels.append((f"Temperature-scaled (T = {cal['temperature']:.3f})", cal["reliability_calibrated"],
                       cal["ece_calibrated"]))
    if s["tta"]:
        panels.append((f"Test-time augmentation (T = {cal['tta_temperature']:.3f})", cal["reliability"], m["ece"]))
    add("reliability", plots.reliability_diagram(panels), "")
    conf, correct = confidence_and_correct(ev.probs, ev.y_true)
    threshold = (s["abstention"]["model_threshold"] or {}).get("threshold")
    add("confidence", plots.confidence_histogram(conf, correct, threshold), "")
    add("accuracy_coverage", plots.accuracy_coverage(s["abstention"]["curve"], s["abstention"]["coverage_at"],
                                                     s["abstention"]["model_threshold"]), "")
    idx = most_confident_mistakes(ev, n_mistakes)
    names = ev.class_names
    add("mistakes", plots.mistakes_grid(ev.images[idx], [names[ev.y_true[i]] for i in idx],
                                        [names[ev.probs[i].argmax()] for i in idx],
                                        [float(conf[i]) for i in idx], [ev.ids[i] for i in idx]),
        "No image was misclassified.")
    rows, why = gradcam_rows(ev, gradcam_per_class)
    add("gradcam", plots.gradcam_grid(rows) if rows else None, why or "No images to explain.")
    return figs, missing


# --------------------------------------------------------------------------- HTML


def _e(v) -> str:
    return html.escape(str(v))


def _pct(v, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _img(figs: dict, missing: dict, name: str, alt: str) -> str:
    if name in figs:
        data = base64.b64encode(figs[name]).decode("ascii")
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
    return f'<p class="muted">{_e(missing.get(name) or "Not available.")}</p>'


def _card(label: str, value: str, ci: str = "") -> str:
    return (f'<div class="card"><div class="l">{_e(label)}</div><div class="v">{_e(value)}</div>'
            f'<div class="ci">{_e(ci)}</div></div>')


def _cards(s: dict) -> str:
    """The headline figures: accuracy, macro-F1, calibration, coverage at the target accuracies."""
    m, cal, ab = s["metrics"], s["calibration"], s["abstention"]
    ci = m.get("ci95") or {}

    def ci_txt(k):
        return f"95% CI {_pct(ci[k][0])} – {_pct(ci[k][1])}" if k in ci else ""

    cards = [
        _card("Accuracy", _pct(m["accuracy"]), ci_txt("accuracy")),
        _card("Macro-F1", _pct(m["macro_avg"]["f1"]), ci_txt("macro_f1")),
        _card("Balanced accuracy", _pct(m["balanced_accuracy"])),
        _card("ROC-AUC (OvR macro)", "–" if m["roc_auc_ovr_macro"] is None else f"{m['roc_auc_ovr_macro']:.4f}"),
        _card("ECE with TTA" if s["tta"] else "ECE", _pct(m["ece"]),
              f"uncalibrated {_pct(cal['ece_tta_uncalibrated'])}; single view {_pct(cal['ece_calibrated'])}"
              if s["tta"] else f"uncalibrated {_pct(cal['ece_uncalibrated'])}"),
        _card("Log loss", f"{m['log_loss']:.4f}"),
    ]
    for c in ab["coverage_at"]:
        reached = c["threshold"] is not None
        cards.append(_card(f"Coverage at {100 * c['target']:.1f}%", _pct(c["coverage"], 1) if reached else "not reached",
                           f"accept when top probability ≥ {_pct(c['threshold'], 1)}" if reached else ""))
    mt = ab["model_threshold"]
    if mt and mt["accuracy"] is not None:
        cards.append(_card("Model's threshold", f"{_pct(mt['coverage'], 1)} kept",
                           f"{_pct(mt['accuracy'])} accurate, {mt['referred']} referred"))
    return "".join(cards)


def _notes(s: dict) -> str:
    """The notes under the cards, each on its own line: partial label sets, left-out classes, advice."""
    m, data = s["metrics"], s["data"]
    notes = [f"<div class='note'>{_e(note)}</div>" for note in s["notes"]]
    if m["absent_classes"]:
        ap, r = m["absent_predictions"], m["restricted"]
        by = ", ".join(f"{display(k)}: {v}" for k, v in ap["by_class"].items())
        notes.append(
            f"<div class='note'>Predictions into classes absent from this dataset "
            f"({_e(', '.join(display(c) for c in m['absent_classes']))}): <b>{ap['count']}</b> of {m['n']} "
            f"({_pct(ap['rate'])}), counted as errors ({_e(by)}). Restricted to the classes present, accuracy "
            f"would be {_pct(r['accuracy'])} and macro-F1 {_pct(r['macro_f1'])}.</div>"
        )
    if data["left_out"]:
        notes.append("<div class='note'>Left out (the model does not predict these classes): "
                     + _e(", ".join(f"{display(k)} {v}" for k, v in data["left_out"].items())) + ".</div>")
    return "".join("\n" + n for n in notes)


def _header(s: dict) -> dict:
    model, data, cal = s["model"], s["data"], s["calibration"]
    split = f", split {data['split']}" if data["split"] else ""
    return {
        "title": _e(f"{model['name']} on {Path(data['source']).name}{split}"),
        "name": _e(model["name"]),
        "architecture": _e(model["architecture"]),
        "parameters": f"{model['parameters'] / 1e6:.2f}M",
        "image_size": model["image_size"],
        "source": _e(data["source"]),
        "split": _e(split),
        "n_images": data["n_images"],
        "tta_tag": "test-time augmentation · " if s["tta"] else "",
        "temperatures": f"{cal['temperature']:.3f}" + (f" (with TTA {cal['tta_temperature']:.3f})" if s["tta"] else ""),
        "date": _e(s["date"]),
        "version": _e(s["bloodcell_version"]),
        "nav": "".join(f"<a href='#{sid}'>{_e(t)}</a>" for sid, t in SECTIONS),
    }


def _per_class_rows(m: dict) -> str:
    rows = []
    for name, r in m["per_class"].items():
        auc = "–" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        rows.append(f"<tr><td>{_e(display(name))}</td><td>{_pct(r['precision'])}</td><td>{_pct(r['recall'])}</td>"
                    f"<td>{_pct(r['f1'])}</td><td>{r['support']}</td><td>{auc}</td></tr>")
    for label, key in (("Macro average", "macro_avg"), ("Weighted average", "weighted_avg")):
        r = m[key]
        rows.append(f"<tr class='avg'><td>{label}</td><td>{_pct(r['precision'])}</td><td>{_pct(r['recall'])}</td>"
                    f"<td>{_pct(r['f1'])}</td><td>{m['n']}</td><td></td></tr>")
    return "".join(rows)


def _calibration_rows(s: dict) -> str:
    cal = s["calibration"]
    rows = (
        f"<tr><td>Uncalibrated (T = 1)</td><td>{_pct(cal['ece_uncalibrated'])}</td>"
        f"<td>{cal['log_loss_uncalibrated']:.4f}</td></tr>"
        f"<tr><td>Temperature-scaled (T = {cal['temperature']:.3f})</td><td>{_pct(cal['ece_calibrated'])}</td>"
        f"<td>{cal['log_loss_calibrated']:.4f}</td></tr>"
    )
    if s["tta"]:
        rows += (
            f"<tr><td>Test-time augmentation, uncalibrated</td><td>{_pct(cal['ece_tta_uncalibrated'])}</td>"
            f"<td>{cal['log_loss_tta_uncalibrated']:.4f}</td></tr>"
            f"<tr><td>Test-time augmentation, T = {cal['tta_temperature']:.3f}"
            f"{'' if cal['tta_temperature_fitted'] else ' (fitted without augmentation)'}</td>"
            f"<td>{_pct(cal['ece_tta_calibrated'])}</td><td>{cal['log_loss_tta_calibrated']:.4f}</td></tr>"
        )
    return rows


def _stored_threshold(s: dict) -> str:
    """What the model's own abstention threshold does on this data."""
    ab, model = s["abstention"], s["model"]
    mt = ab["model_threshold"]
    if not mt:
        return "<p class='muted'>The model has no stored abstention threshold (run <code>bloodcell calibrate</code>).</p>"
    kind = " for augmented predictions" if ab.get("model_threshold_kind") == "tta" else ""
    return (
        f"<p>The model's own threshold{kind} (fitted on validation data for "
        f"{_pct((model['calibration'] or {}).get('target_accuracy'), 1)} accuracy): refer when the top probability is "
        f"below {_pct(mt['threshold'], 2)}. On this data it keeps <b>{_pct(mt['coverage'], 1)}</b> of the images "
        f"({mt['referred']} referred) at <b>{_pct(mt['accuracy'])}</b> accuracy.</p>" + _with_familiarity(ab)
    )


def _with_familiarity(ab: dict) -> str:
    both = ab.get("with_familiarity")
    if not both:
        return ""
    return (f"<p>With the model's familiarity check as well ({ab['unfamiliar']} image(s) unlike its training cells), "
            f"as <code>predict</code> serves it: keeps <b>{_pct(both['coverage'], 1)}</b> ({both['referred']} referred) "
            f"at <b>{_pct(both['accuracy'])}</b> accuracy.</p>")


def _abstention_rows(ab: dict) -> str:
    rows = []
    for c in ab["coverage_at"]:
        if c["threshold"] is None:
            rows.append(f"<tr><td>{_pct(c['target'], 1)}</td><td colspan='3'>not reached on this data</td></tr>")
        else:
            rows.append(f"<tr><td>{_pct(c['target'], 1)}</td><td>{_pct(c['coverage'], 1)}</td>"
                        f"<td>{c['n'] - c['accepted']}</td><td>{_pct(c['threshold'], 2)}</td></tr>")
    return "".join(rows)


def _tta(t: dict | None) -> str:
    if not t:
        return "<p class='muted'>Not run. Add <code>--tta</code> to average the eight flips and 90° rotations.</p>"
    g = t["gain"]
    rows = "".join(
        f"<tr><td>{lab}</td><td>{_pct(r['accuracy'])}</td><td>{_pct(r['macro_f1'])}</td><td>{_pct(r['ece'])}</td>"
        f"<td>{r['log_loss']:.4f}</td><td>{r['seconds']:.1f}</td><td>{r['images_per_second']:.0f}</td></tr>"
        for lab, r in (("Single view", t["plain"]), (f"TTA ({t['views']} views)", t["tta"]))
    )
    return (
        "<table><tr><th></th><th>Accuracy</th><th>Macro-F1</th><th>ECE</th><th>Log loss</th><th>Seconds</th>"
        f"<th>Images/s</th></tr>{rows}</table>"
        f"<p>Gain: accuracy {100 * g['accuracy']:+.2f} points, macro-F1 {100 * g['macro_f1']:+.2f} points, "
        f"ECE {100 * g['ece']:+.2f} points, for {t['slowdown']:.1f}× the inference time. "
        f"Predictions changed: {t['changed']} (fixed {t['fixed']}, broken {t['broken']}).</p>"
    )


def _mistake_list(ev: Evaluation, n_mistakes: int) -> str:
    idx = most_confident_mistakes(ev, n_mistakes)
    if not len(idx):
        return ""
    names = ev.class_names
    rows = "".join(
        f"<tr><td>{_e(ev.ids[i])}</td><td>{_e(display(names[ev.y_true[i]]))}</td>"
        f"<td>{_e(display(names[ev.probs[i].argmax()]))}</td><td>{_pct(float(ev.probs[i].max()), 1)}</td></tr>"
        for i in idx)
    return ("<details><summary>File list</summary><table><tr><th>Image</th><th>True</th><th>Predicted</th>"
            f"<th>Confidence</th></tr>{rows}</table></details>")


def _details(s: dict) -> str:
    model, data, speed = s["model"], s["data"], s["speed"]
    classes = ", ".join(display(c) for c in model["class_names"])
    out = [
        f"<p>Model folder <code>{_e(model['path'])}</code>; classes: {_e(classes)}.</p>",
        f"<p>Data: {data['n_images']} images; per class: "
        + _e(", ".join(f"{display(k)} {v}" for k, v in data["class_counts"].items())) + ".</p>",
        f"<p>Speed: {speed['images_per_second']:.0f} images/s on {_e(speed['device'])} "
        f"(batch {speed['batch_size']}, prepared images, no TTA).</p>",
    ]
    if model["data_manifest_sha256"]:
        out.append(f"<p class='muted'>Training manifest SHA-256 {_e(model['data_manifest_sha256'])}</p>")
    if data["problems"]:
        out.append(f"<p>{len(data['problems'])} files were skipped:</p><ul class='problems'>"
                   + "".join(f"<li>{_e(p)}</li>" for p in data["problems"][:200]) + "</ul>")
    return "".join(out)


def render_html(ev: Evaluation, figs: dict, missing: dict, n_mistakes: int = 24) -> str:
    """The report as one HTML string (figures inlined), from ``report_template.html``."""
    s = ev.summary
    m = s["metrics"]
    template = Template(resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(
        _header(s),
        cards=_cards(s),
        notes=_notes(s),
        per_class_rows=_per_class_rows(m),
        training_curves=_img(figs, missing, "training_curves", "training curves"),
        epochs_trained=s["model"]["epochs_trained"],
        confusion_matrix=_img(figs, missing, "confusion_matrix", "confusion matrix"),
        per_class=_img(figs, missing, "per_class", "per-class precision and recall"),
        ece_bins=m["ece_bins"],
        calibration_rows=_calibration_rows(s),
        reliability=_img(figs, missing, "reliability", "reliability diagram"),
        confidence=_img(figs, missing, "confidence", "confidence histogram"),
        stored_threshold=_stored_threshold(s),
        abstention_rows=_abstention_rows(s["abstention"]),
        accuracy_coverage=_img(figs, missing, "accuracy_coverage", "accuracy-coverage curve"),
        tta=_tta(s["tta_comparison"]),
        mistakes=_img(figs, missing, "mistakes", "most confident mistakes"),
        mistake_list=_mistake_list(ev, n_mistakes),
        gradcam=_img(figs, missing, "gradcam", "Grad-CAM overlays"),
        details=_details(s),
    ).removesuffix("\n")


def write_report(ev: Evaluation, folder: str | Path, n_mistakes: int = 24, gradcam_per_class: int = 3) -> Path:
    """Write ``report.html``, the figures as PNG files and ``metrics.json`` into ``folder``.

    Returns
    -------
    Path
        The path of ``report.html``.

    Raises
    ------
    ConfigError
        When ``folder`` cannot be created or written.
    """
    folder = check_writable_folder(folder, "report folder")
    figs, missing = build_figures(ev, n_mistakes, gradcam_per_class)
    try:
        for name, png in figs.items():
            atomic_write_bytes(folder / f"{name}.png", png)
        atomic_write_json(folder / "metrics.json", ev.to_json())
        path = folder / "report.html"
        atomic_write_bytes(path, render_html(ev, figs, missing, n_mistakes).encode("utf-8"))
    except OSError as e:
        raise ConfigError(f"Cannot write the report into {folder} ({e.strerror or e}). Pass another -o folder.") from None
    return path
