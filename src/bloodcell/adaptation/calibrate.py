"""Calibrate an adapted model on the lab's held-out cells, refit its out-of-distribution check, write its card.

The temperature and abstention threshold are fitted on the held-out cells
(:func:`bloodcell.evaluation.fit_calibration.fit_calibration`). The
out-of-distribution statistics are fitted on the fitting cells' features and
the threshold chosen between held-out cells and generated non-cell images
(:func:`bloodcell.ood.fit.fit_ood`); with fewer than :data:`MIN_OOD_HELD_OUT`
held-out cells the fitting cells join them for the threshold, and the card says
so. The held-out figures of the adapted model, and of the model it started
from on the same cells, go into ``model.json`` and the model card.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from bloodcell.core.model_folder import read_meta, write_meta
from bloodcell.core.preprocess import tta_views
from bloodcell.data import load_arrays
from bloodcell.evaluation.calibration import softmax
from bloodcell.evaluation.fit_calibration import fit_calibration
from bloodcell.evaluation.metrics import compute_metrics
from bloodcell.networks.loading import load_model
from bloodcell.ood.fit import fit_ood, save_head
from bloodcell.prediction.torch_backend import predict_logits

#: Held-out cells needed to choose the out-of-distribution threshold on them alone.
MIN_OOD_HELD_OUT = 10
#: Generated non-cell images per kind for the out-of-distribution threshold.
NON_CELLS_PER_KIND = 30


def _figures(labels: np.ndarray, probs: np.ndarray, names) -> dict:
    m = compute_metrics(labels, probs, names, n_boot=0)
    return {"n": int(len(labels)), "accuracy": round(m["accuracy"], 4),
            "balanced_accuracy": round(m["balanced_accuracy"], 4), "macro_f1": round(m["macro_avg"]["f1"], 4)}


def _before(src: Path, ds, held_idx, progress: bool) -> dict | None:
    """The starting model's figures on the held-out cells (its own calibration applied)."""
    loaded = load_model(src, "cpu")
    held = load_arrays(ds.select(held_idx.tolist()), loaded.preprocess, class_names=loaded.class_names,
                       progress=progress)
    probs = softmax(predict_logits(loaded, held.images) / loaded.temperature)
    return _figures(held.labels, probs, loaded.class_names)


def _calibration(logits: np.ndarray, labels: np.ndarray, target: float, data) -> dict:
    cal = fit_calibration(logits, labels, target)
    cal["validation"].update({"source": str(data), "split": "held-out cells of the adaptation data"})
    cal["fitted_at"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return cal


def views(images: np.ndarray) -> np.ndarray:
    """The eight rotations by multiples of 90 degrees, plain and mirrored, of NHWC images (view-major)."""
    return np.concatenate(tta_views(images))


def _ood(loaded, fit, held) -> dict | None:
    """Refit the out-of-distribution check on the eight views of each cell (a few cells are too few
    for the statistics of a feature space with hundreds of dimensions)."""
    if len(fit.images) + len(held.images) < MIN_OOD_HELD_OUT:
        return None
    cells, note = held.images, None
    if len(held.images) < MIN_OOD_HELD_OUT:
        cells = np.concatenate([held.images, fit.images])
        note = (f"only {len(held.images)} held-out cells: the threshold was chosen on held-out and fitting cells "
                "together, so its false-flag rate is optimistic")
    head, info = fit_ood(loaded, np.ascontiguousarray(views(fit.images)), np.tile(fit.labels, 8),
                         np.ascontiguousarray(views(cells)), per_kind=NON_CELLS_PER_KIND, progress=False)
    save_head(loaded.path, head)
    return {**info, "fitted_on": "the eight rotations and mirror images of the adaptation's fitting cells; "
                                 "threshold from those of the held-out cells", **({"note": note} if note else {})}


def _scale_sentence(scale: dict) -> str:
    if not scale.get("applied"):
        return ""
    crop = scale["crop_fraction"]
    return (f" The lab's cells filled {scale['lab_cell_share']:.0%} of the model's crop against "
            f"{scale['training_cell_share']:.0%} in training, so the crop was scaled from {crop['model']:g} to "
            f"{crop['adapted']:g} of the image's shorter side.")


def _imagenet_sentence(record: dict) -> str:
    member = record.get("imagenet_member")
    if not member:
        return ""
    share = member["weights"][1] / sum(member["weights"])
    return (f" An {member['architecture']} network with its ImageNet weights, its classifier fitted to the same "
            f"cells, votes beside it ({share:.0%} of the vote).")


def _card(old: dict, record: dict) -> dict:
    name = old.get("name") or "bloodcell model"
    counts = ", ".join(f"{c} {n}" for c, n in record["fitting_cells"].items())
    after = record.get("held_out") or {}
    card = {k: v for k, v in old.items() if k in ("intended_use", "citation", "licence", "license")}
    card.update({
        "name": f"{name}, adapted to {Path(record['data']).name}",
        "summary": (f"Adapted from {name} to the labelled cells in {record['data']} with `bloodcell adapt` "
                    f"(method {record['method']}): it is the original model's network with {record['networks'][0]['tuned']} "
                    "adapted to the lab's cells, then calibrated on cells held out from them."
                    + _scale_sentence(record.get("scale") or {}) + _imagenet_sentence(record)),
        "data": (f"Fitting cells: {counts}. Held out for calibration: "
                 + ", ".join(f"{c} {n}" for c, n in record["held_out_cells"].items()) + "."),
        "metrics": {"held_out": after, "original_model_on_the_same_cells": record.get("held_out_before")},
        "limitations": ("Figures come from a few held-out cells of the lab's own data, so their uncertainty is wide. "
                        + ("Classes absent from the adaptation data ("
                           + ", ".join(record["classes_absent_from_data"]) + ") keep the original model's classifier, "
                           "lowered so the lab's cells do not fall into them; their accuracy on this lab's images is "
                           "unmeasured." if record["classes_absent_from_data"] and record["absent_classes"] == "kept"
                           else "")).strip(),
        "adaptation": record,
        "original_card": {k: v for k, v in old.items() if k in ("name", "data", "training", "metrics")},
    })
    return card


def calibrate_adapted(folder: Path, src: Path, ds, fit_idx, held_idx, record: dict, target: float,
                      progress: bool) -> None:
    """Calibrate the adapted model in ``folder`` on the held-out cells and write its record and card; ``src`` is
    the model the user named (its figures on the same cells and its card are kept beside the adapted ones)."""
    loaded = load_model(folder, "cpu")
    names = loaded.class_names
    fit = load_arrays(ds.select(fit_idx.tolist()), loaded.preprocess, class_names=names, progress=progress)
    meta = read_meta(folder)
    if len(held_idx):
        held = load_arrays(ds.select(held_idx.tolist()), loaded.preprocess, class_names=names, progress=progress)
        logits = predict_logits(loaded, held.images)
        meta["calibration"] = _calibration(logits, held.labels, target, record["data"])
        probs = softmax(logits / meta["calibration"]["temperature"])
        record["held_out"] = _figures(held.labels, probs, names)
        record["held_out_before"] = _before(src, ds, held_idx, progress)
    else:
        held = fit
        record["held_out"] = None
        record["note"] = "no class had enough cells to hold any out: the model is not calibrated"
    meta["ood"] = _ood(loaded, fit, held) if len(fit.images) >= 4 else None
    if meta["ood"] is None:
        meta.pop("ood")
        record["ood_note"] = "too few cells to fit the out-of-distribution check: not_a_blood_cell is not flagged"
    old_card = read_meta(src).get("model_card") or {}
    meta["adaptation"] = record
    meta["model_card"] = _card(old_card, record)
    meta["metrics"] = {"held_out": record["held_out"]} if record["held_out"] else {}
    write_meta(folder, meta)
