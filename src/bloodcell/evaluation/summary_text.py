"""Plain-text summaries for the terminal: an evaluation's and a calibration fit's."""

from __future__ import annotations

from bloodcell.core.model_folder import META
from bloodcell.evaluation.metrics import format_table


def _calibration_line(summary: dict) -> list[str]:
    cal = summary["calibration"]
    lines = [f"Calibration: temperature {cal['temperature']:.3f}; ECE {100 * cal['ece_uncalibrated']:.2f}% "
             f"uncalibrated -> {100 * cal['ece_calibrated']:.2f}% temperature-scaled; log loss "
             f"{cal['log_loss_uncalibrated']:.4f} -> {cal['log_loss_calibrated']:.4f}."]
    if summary["tta"]:
        lines.append(f"With test-time augmentation: temperature {cal['tta_temperature']:.3f}"
                     + ("" if cal["tta_temperature_fitted"] else
                        " (the plain one; fit one with `bloodcell calibrate --tta`)")
                     + f"; ECE {100 * cal['ece_tta_uncalibrated']:.2f}% uncalibrated -> "
                     f"{100 * cal['ece_tta_calibrated']:.2f}%.")
    return lines


def _abstention_lines(ab: dict) -> list[str]:
    parts = []
    for c in ab["coverage_at"]:
        parts.append(f"{100 * c['target']:.1f}% accuracy at {100 * c['coverage']:.1f}% coverage"
                     if c["threshold"] is not None else f"{100 * c['target']:.1f}% accuracy not reached")
    lines = ["Abstention (threshold chosen on this data): " + "; ".join(parts) + "."]
    mt = ab["model_threshold"]
    if mt:
        acc = "-" if mt["accuracy"] is None else f"{100 * mt['accuracy']:.2f}%"
        kind = " for augmented predictions" if ab["model_threshold_kind"] == "tta" else ""
        lines.append(f"Model's threshold{kind} {100 * mt['threshold']:.2f}% (fitted on validation): keeps "
                     f"{100 * mt['coverage']:.1f}% ({mt['referred']} referred to a hematologist) at {acc} accuracy.")
    both = ab.get("with_familiarity")
    if both:
        acc = "-" if both["accuracy"] is None else f"{100 * both['accuracy']:.2f}%"
        lines.append(f"With the familiarity check as well ({ab['unfamiliar']} image(s) unlike the training cells): "
                     f"keeps {100 * both['coverage']:.1f}% ({both['referred']} referred) at {acc} accuracy, as "
                     "`predict` serves it.")
    return lines


def summary_text(summary: dict) -> str:
    """An evaluation's summary (see :class:`~bloodcell.evaluation.results.Evaluation`) for the terminal."""
    d = summary["data"]
    lines = [f"{summary['model']['name']} ({summary['model']['architecture']}) on {d['source']}"
             + (f", split {d['split']}" if d["split"] else "")
             + (", with test-time augmentation" if summary["tta"] else "")]
    lines += [f"note: {note}" for note in summary["notes"]]
    if d["problems"]:
        lines.append(f"note: {len(d['problems'])} file(s) skipped, e.g. {d['problems'][0]}")
    lines += ["", format_table(summary["metrics"]), ""]
    lines += _calibration_line(summary)
    lines += _abstention_lines(summary["abstention"])
    t = summary["tta_comparison"]
    if t:
        g = t["gain"]
        lines.append(
            f"Test-time augmentation ({t['views']} views): accuracy {100 * t['plain']['accuracy']:.2f}% -> "
            f"{100 * t['tta']['accuracy']:.2f}% ({100 * g['accuracy']:+.2f} points), macro-F1 "
            f"{100 * g['macro_f1']:+.2f} points, ECE {100 * g['ece']:+.2f} points; {t['plain']['seconds']:.1f} s -> "
            f"{t['tta']['seconds']:.1f} s ({t['slowdown']:.1f}x); {t['fixed']} fixed, {t['broken']} broken.")
    sp = summary["speed"]
    lines.append(f"Speed: {sp['images_per_second']:.0f} images/s on {sp['device']} (prepared images, batch "
                 f"{sp['batch_size']}).")
    return "\n".join(lines)


def _fit_lines(prefix: str, fit: dict, target: float) -> list[str]:
    v = fit["validation"]
    lines = [f"{prefix}Temperature {fit['temperature']:.4f}: ECE {100 * v['ece_before']:.2f}% -> "
             f"{100 * v['ece_after']:.2f}%, log loss {v['nll_before']:.4f} -> {v['nll_after']:.4f}."]
    if fit["abstain_threshold"] is None:
        lines.append(f"{prefix}No threshold reaches {100 * target:.2f}% accuracy on this split "
                     f"(overall {100 * v['accuracy']:.2f}%); abstention is off (abstain_threshold null).")
    else:
        lines.append(f"{prefix}Abstention: refer an image when its top probability is below "
                     f"{100 * fit['abstain_threshold']:.2f}%; on this split that keeps {100 * v['coverage']:.1f}% "
                     f"of images at {100 * v['accuracy_accepted']:.2f}% accuracy (target {100 * target:.2f}%; "
                     f"all images: {100 * v['accuracy']:.2f}%).")
    for c in v["coverage_at"]:
        if c["threshold"] is not None:
            lines.append(f"  {100 * c['target']:.1f}% accuracy: {100 * c['coverage']:.1f}% coverage "
                         f"(threshold {100 * c['threshold']:.2f}%)")
        else:
            lines.append(f"  {100 * c['target']:.1f}% accuracy: not reached")
    return lines


def calibration_text(result: dict, dry_run: bool = False) -> str:
    """A calibration fit (see :func:`~bloodcell.evaluation.verbs.calibrate`) for the terminal."""
    v = result["validation"]
    lines = [f"Fitted on {v['source']}" + (f", split {v['split']}" if v["split"] else "")
             + f": {v['n_images']} images."]
    lines += _fit_lines("", result, result["target_accuracy"])
    if "tta" in result:
        lines += _fit_lines("With test-time augmentation: ", result["tta"], result["target_accuracy"])
    lines.append(f"Dry run: {META} left unchanged." if dry_run else f"Stored in {result['model_json']}.")
    return "\n".join(lines)
