"""A self-contained HTML report of an evaluation, with its figures as PNG files.

:func:`write_report` writes into one folder: ``report.html`` (every figure
embedded as a base64 PNG, no external URL), the same figures as ``.png``
files, and ``metrics.json``. :func:`check_writable` fails fast, before any
prediction, when the folder cannot be written.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path

import numpy as np

from bloodcell.core.errors import ConfigError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json
from bloodcell.evaluation import plots
from bloodcell.evaluation.calibration import confidence_and_correct
from bloodcell.evaluation.evaluate import Evaluation
from bloodcell.evaluation.metrics import display

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


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there.

    Raises
    ------
    ConfigError
        Naming the folder and the reason, when it cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"Report folder {folder} is an existing file, not a folder. Pass another -o path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"Cannot write the report folder {folder} ({e.strerror or e}). "
            "Pass a folder you can write to with -o."
        ) from None
    return folder


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
    from bloodcell.prediction.explain import gradcam, overlay

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

_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#12355b;color:#fff;padding:22px 36px}
header h1{margin:0 0 6px;font-size:24px}
header .sub{opacity:.85;font-size:14px}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px}
section{background:#fff;border-radius:8px;padding:16px 24px;margin:18px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:4px 0 12px;color:#12355b}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0 4px}
.card{background:#fff;border-radius:8px;padding:12px 16px;min-width:150px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card .v{font-size:24px;font-weight:600;color:#12355b}
.card .l{font-size:12px;color:#5a6570;text-transform:uppercase;letter-spacing:.04em}
.card .ci{font-size:12px;color:#5a6570}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0}
th,td{padding:5px 12px;border-bottom:1px solid #e3e7eb;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f3f6}
tr.avg td{font-weight:600;background:#fafbfc}
img{max-width:100%;height:auto;display:block;margin:8px auto}
.note{background:#fff7e0;border-left:4px solid #E69F00;padding:8px 12px;margin:8px 0;font-size:14px}
.muted{color:#5a6570;font-size:13px}
nav a{color:#12355b;margin-right:14px;font-size:13px}
code{background:#f0f3f6;padding:1px 4px;border-radius:3px}
ul.problems{max-height:220px;overflow:auto;font-size:12.5px}
"""


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
    return f'<div class="card"><div class="l">{_e(label)}</div><div class="v">{_e(value)}</div><div class="ci">{_e(ci)}</div></div>'


def render_html(ev: Evaluation, figs: dict, missing: dict, n_mistakes: int = 24) -> str:
    """The report as one HTML string (figures inlined)."""
    s = ev.summary
    m, cal, ab, model, data = s["metrics"], s["calibration"], s["abstention"], s["model"], s["data"]
    ci = m.get("ci95") or {}
    ci_txt = (lambda k: f"95% CI {_pct(ci[k][0])} – {_pct(ci[k][1])}" if k in ci else "")
    cov = {f"{100 * c['target']:.1f}": c for c in ab["coverage_at"]}
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
    for key, c in cov.items():
        cards.append(_card(f"Coverage at {key}%", _pct(c["coverage"], 1) if c["threshold"] is not None else "not reached",
                           f"accept when top probability ≥ {_pct(c['threshold'], 1)}" if c["threshold"] is not None else ""))
    mt = ab["model_threshold"]
    if mt and mt["accuracy"] is not None:
        cards.append(_card("Model's threshold", f"{_pct(mt['coverage'], 1)} kept",
                           f"{_pct(mt['accuracy'])} accurate, {mt['referred']} referred"))
    split = f", split {data['split']}" if data["split"] else ""
    temps = f"{cal['temperature']:.3f}" + (f" (with TTA {cal['tta_temperature']:.3f})" if s["tta"] else "")
    title = f"{model['name']} on {Path(data['source']).name}{split}"
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>bloodcell report: {_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>bloodcell evaluation: {_e(model['name'])}</h1><div class='sub'>"
        f"Model <b>{_e(model['architecture'])}</b> ({model['parameters'] / 1e6:.2f}M parameters, "
        f"{model['image_size']} px) · data <b>{_e(data['source'])}</b>{_e(split)} · {data['n_images']} images · "
        f"{'test-time augmentation · ' if s['tta'] else ''}"
        f"temperature {temps} · {_e(s['date'])} · bloodcell {_e(s['bloodcell_version'])}</div></header>",
        "<main>",
        "<nav>" + "".join(f"<a href='#{sid}'>{_e(t)}</a>" for sid, t in SECTIONS) + "</nav>",
        f"<div class='cards'>{''.join(cards)}</div>",
    ]
    for note in s["notes"]:
        out.append(f"<div class='note'>{_e(note)}</div>")
    if m["absent_classes"]:
        ap = m["absent_predictions"]
        by = ", ".join(f"{display(k)}: {v}" for k, v in ap["by_class"].items())
        r = m["restricted"]
        out.append(
            f"<div class='note'>Predictions into classes absent from this dataset "
            f"({_e(', '.join(display(c) for c in m['absent_classes']))}): <b>{ap['count']}</b> of {m['n']} "
            f"({_pct(ap['rate'])}), counted as errors ({_e(by)}). Restricted to the classes present, accuracy "
            f"would be {_pct(r['accuracy'])} and macro-F1 {_pct(r['macro_f1'])}.</div>"
        )
    if data["left_out"]:
        out.append("<div class='note'>Left out (the model does not predict these classes): "
                   + _e(", ".join(f"{display(k)} {v}" for k, v in data["left_out"].items())) + ".</div>")

    def section(sid: str, body: str) -> None:
        t = dict(SECTIONS)[sid]
        out.append(f"<section id='{sid}'><h2>{_e(t)}</h2>{body}</section>")

    rows = []
    for name, r in m["per_class"].items():
        auc = "–" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        rows.append(f"<tr><td>{_e(display(name))}</td><td>{_pct(r['precision'])}</td><td>{_pct(r['recall'])}</td>"
                    f"<td>{_pct(r['f1'])}</td><td>{r['support']}</td><td>{auc}</td></tr>")
    for label, key in (("Macro average", "macro_avg"), ("Weighted average", "weighted_avg")):
        r = m[key]
        rows.append(f"<tr class='avg'><td>{label}</td><td>{_pct(r['precision'])}</td><td>{_pct(r['recall'])}</td>"
                    f"<td>{_pct(r['f1'])}</td><td>{m['n']}</td><td></td></tr>")
    section("summary", "<table><tr><th>Class</th><th>Precision</th><th>Recall</th><th>F1</th><th>Images</th>"
            "<th>ROC-AUC (one-vs-rest)</th></tr>" + "".join(rows) + "</table>")
    section("training", _img(figs, missing, "training_curves", "training curves")
            + f"<p class='muted'>{model['epochs_trained']} epochs recorded in the model's metadata.</p>")
    section("confusion", "<p class='muted'>Rows are the true classes, columns the predicted ones; each cell shows "
            "the share of its row and the image count. The diagonal holds the correct predictions.</p>"
            + _img(figs, missing, "confusion_matrix", "confusion matrix"))
    section("per-class", _img(figs, missing, "per_class", "per-class precision and recall"))
    cal_table = (
        "<table><tr><th></th><th>ECE</th><th>Log loss</th></tr>"
        f"<tr><td>Uncalibrated (T = 1)</td><td>{_pct(cal['ece_uncalibrated'])}</td><td>{cal['log_loss_uncalibrated']:.4f}</td></tr>"
        f"<tr><td>Temperature-scaled (T = {cal['temperature']:.3f})</td><td>{_pct(cal['ece_calibrated'])}</td>"
        f"<td>{cal['log_loss_calibrated']:.4f}</td></tr>"
        + (f"<tr><td>Test-time augmentation, uncalibrated</td><td>{_pct(cal['ece_tta_uncalibrated'])}</td>"
           f"<td>{cal['log_loss_tta_uncalibrated']:.4f}</td></tr>"
           f"<tr><td>Test-time augmentation, T = {cal['tta_temperature']:.3f}"
           f"{'' if cal['tta_temperature_fitted'] else ' (fitted without augmentation)'}</td>"
           f"<td>{_pct(cal['ece_tta_calibrated'])}</td><td>{cal['log_loss_tta_calibrated']:.4f}</td></tr>" if s["tta"] else "")
        + "</table>"
    )
    section("calibration", "<p class='muted'>A calibrated model that says 90% is right 90% of the time. ECE is the "
            f"image-weighted gap between confidence and accuracy over {m['ece_bins']} equal-width bins; the "
            "temperature was fitted on the validation split (<code>bloodcell calibrate</code>).</p>" + cal_table
            + _img(figs, missing, "reliability", "reliability diagram")
            + _img(figs, missing, "confidence", "confidence histogram"))
    ab_rows = []
    for c in ab["coverage_at"]:
        if c["threshold"] is None:
            ab_rows.append(f"<tr><td>{_pct(c['target'], 1)}</td><td colspan='3'>not reached on this data</td></tr>")
        else:
            ab_rows.append(f"<tr><td>{_pct(c['target'], 1)}</td><td>{_pct(c['coverage'], 1)}</td>"
                           f"<td>{c['n'] - c['accepted']}</td><td>{_pct(c['threshold'], 2)}</td></tr>")
    mt = ab["model_threshold"]
    kind = " for augmented predictions" if ab.get("model_threshold_kind") == "tta" else ""
    stored = (
        f"<p>The model's own threshold{kind} (fitted on validation data for "
        f"{_pct((model['calibration'] or {}).get('target_accuracy'), 1)} accuracy): refer when the top probability is "
        f"below {_pct(mt['threshold'], 2)}. On this data it keeps <b>{_pct(mt['coverage'], 1)}</b> of the images "
        f"({mt['referred']} referred) at <b>{_pct(mt['accuracy'])}</b> accuracy.</p>"
        if mt else "<p class='muted'>The model has no stored abstention threshold (run <code>bloodcell calibrate</code>).</p>"
    )
    section("abstention", stored + "<p class='muted'>Best achievable on this data (threshold chosen on this data "
            "itself, an optimistic bound):</p><table><tr><th>Target accuracy</th><th>Coverage</th><th>Referred</th>"
            "<th>Threshold</th></tr>" + "".join(ab_rows) + "</table>"
            + _img(figs, missing, "accuracy_coverage", "accuracy-coverage curve"))
    t = s["tta_comparison"]
    if t:
        g = t["gain"]
        body = (
            "<table><tr><th></th><th>Accuracy</th><th>Macro-F1</th><th>ECE</th><th>Log loss</th><th>Seconds</th>"
            "<th>Images/s</th></tr>"
            + "".join(
                f"<tr><td>{lab}</td><td>{_pct(r['accuracy'])}</td><td>{_pct(r['macro_f1'])}</td><td>{_pct(r['ece'])}</td>"
                f"<td>{r['log_loss']:.4f}</td><td>{r['seconds']:.1f}</td><td>{r['images_per_second']:.0f}</td></tr>"
                for lab, r in (("Single view", t["plain"]), (f"TTA ({t['views']} views)", t["tta"]))
            )
            + "</table>"
            f"<p>Gain: accuracy {100 * g['accuracy']:+.2f} points, macro-F1 {100 * g['macro_f1']:+.2f} points, "
            f"ECE {100 * g['ece']:+.2f} points, for {t['slowdown']:.1f}× the inference time. "
            f"Predictions changed: {t['changed']} (fixed {t['fixed']}, broken {t['broken']}).</p>"
        )
    else:
        body = "<p class='muted'>Not run. Add <code>--tta</code> to average the eight flips and 90° rotations.</p>"
    section("tta", body)
    idx = most_confident_mistakes(ev, n_mistakes)
    listing = ""
    if len(idx):
        names = ev.class_names
        listing = ("<details><summary>File list</summary><table><tr><th>Image</th><th>True</th><th>Predicted</th>"
                   "<th>Confidence</th></tr>" + "".join(
                       f"<tr><td>{_e(ev.ids[i])}</td><td>{_e(display(names[ev.y_true[i]]))}</td>"
                       f"<td>{_e(display(names[ev.probs[i].argmax()]))}</td><td>{_pct(float(ev.probs[i].max()), 1)}</td></tr>"
                       for i in idx) + "</table></details>")
    section("mistakes", "<p class='muted'>The wrong predictions the model was surest of: label errors in the data, "
            "look-alike classes, or blind spots.</p>" + _img(figs, missing, "mistakes", "most confident mistakes")
            + listing)
    section("gradcam", "<p class='muted'>For a random sample of each class: the image, then the Grad-CAM map of "
            "the predicted class (last convolution), captioned with the model's confidence; a red caption marks a "
            "wrong prediction.</p>"
            + _img(figs, missing, "gradcam", "Grad-CAM overlays"))
    details = [
        f"<p>Model folder <code>{_e(model['path'])}</code>; classes: {_e(', '.join(display(c) for c in model['class_names']))}.</p>",
        f"<p>Data: {data['n_images']} images; per class: "
        + _e(", ".join(f"{display(k)} {v}" for k, v in data["class_counts"].items())) + ".</p>",
        f"<p>Speed: {s['speed']['images_per_second']:.0f} images/s on {_e(s['speed']['device'])} "
        f"(batch {s['speed']['batch_size']}, prepared images, no TTA).</p>",
    ]
    if model["data_manifest_sha256"]:
        details.append(f"<p class='muted'>Training manifest SHA-256 {_e(model['data_manifest_sha256'])}</p>")
    if data["problems"]:
        details.append(f"<p>{len(data['problems'])} files were skipped:</p><ul class='problems'>"
                       + "".join(f"<li>{_e(p)}</li>" for p in data["problems"][:200]) + "</ul>")
    section("details", "".join(details))
    out.append("</main></body></html>")
    return "\n".join(out)


def write_report(ev: Evaluation, folder: str | Path, n_mistakes: int = 24, gradcam_per_class: int = 3) -> Path:
    """Write ``report.html``, the figures as PNG files and ``metrics.json`` into ``folder``.

    Returns
    -------
    Path
        The path of ``report.html``.
    """
    folder = check_writable(folder)
    figs, missing = build_figures(ev, n_mistakes, gradcam_per_class)
    try:
        for name, png in figs.items():
            atomic_write_bytes(folder / f"{name}.png", png)
        atomic_write_json(folder / "metrics.json", ev.to_json())
        path = folder / "report.html"
        atomic_write_bytes(path, render_html(ev, figs, missing, n_mistakes).encode("utf-8"))
        mode = 0o666 & ~_umask()
        for name in [*(f"{n}.png" for n in figs), "metrics.json", "report.html"]:
            os.chmod(folder / name, mode)
    except OSError as e:
        raise ConfigError(f"Cannot write the report into {folder} ({e.strerror or e}). Pass another -o folder.") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

