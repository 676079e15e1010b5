"""Fit a model's calibration on validation data and store it in its ``model.json``.

The stored ``calibration`` block holds the temperature (applied by
:func:`bloodcell.inference.predict_proba` when ``calibrated=True``), the
abstention threshold on the temperature-scaled top probability, the target it
was chosen for, and the validation figures behind both.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..inference import predict_logits
from ..models.checkpoint import META, atomic_write_json, load_model, read_meta
from .calibration import (
    coverage_at_accuracy,
    expected_calibration_error,
    fit_temperature,
    nll,
    softmax,
)
from .evaluation import COVERAGE_TARGETS, _in_chunks, load_labelled

ABSTAIN_RULE = "refer the image to a hematologist when its top temperature-scaled probability is below abstain_threshold"


def fit_calibration(logits: np.ndarray, y_true: np.ndarray, target_accuracy: float = 0.995, n_bins: int = 15) -> dict:
    """Temperature and abstention threshold from validation logits and labels.

    Parameters
    ----------
    logits : array (N, C)
        Raw model outputs (log-probabilities work as well).
    y_true : array (N,)
        True class indices.
    target_accuracy : float
        Accuracy the accepted images must reach; the threshold keeps as many
        images as possible subject to it.

    Returns
    -------
    dict
        ``temperature``, ``abstain_threshold`` (``None`` when the target is
        not reachable), ``target_accuracy``, ``abstain_rule`` and
        ``validation`` figures (ECE and log loss before/after, coverage).
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise DataError(f"--target-accuracy must be in (0, 1], got {target_accuracy!r}; e.g. 0.995 for 99.5%.")
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    t = fit_temperature(z, y, logits=True)
    before, after = softmax(z), softmax(z / t)
    chosen = coverage_at_accuracy(after, y, target_accuracy)
    return {
        "temperature": t,
        "abstain_threshold": chosen["threshold"],
        "target_accuracy": float(target_accuracy),
        "abstain_rule": ABSTAIN_RULE,
        "validation": {
            "n_images": int(len(y)),
            "accuracy": float((after.argmax(1) == y).mean()),
            "ece_before": expected_calibration_error(before, y, n_bins),
            "ece_after": expected_calibration_error(after, y, n_bins),
            "nll_before": nll(before, y),
            "nll_after": nll(after, y),
            "coverage": chosen["coverage"],
            "accuracy_accepted": chosen["accuracy"],
            "coverage_at": [coverage_at_accuracy(after, y, a) for a in COVERAGE_TARGETS],
        },
    }


def calibrate_model(
    model: str | Path,
    data: str | Path,
    split: str | None = "val",
    *,
    target_accuracy: float = 0.995,
    batch_size: int = 64,
    device=None,
    write: bool = True,
    progress: bool = True,
) -> dict:
    """Fit calibration on ``data`` (its ``split``) and store it in the model's ``model.json``.

    The file is rewritten atomically with every other field kept. Returns the
    stored ``calibration`` block plus ``model_json`` (the file's path).
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise DataError(f"--target-accuracy must be in (0, 1], got {target_accuracy!r}; e.g. 0.995 for 99.5%.")
    loaded = load_model(model, device or "cpu")
    arrays, used, problems, notes, left_out = load_labelled(data, loaded.preprocess, split, progress)
    logits = _in_chunks(lambda x: predict_logits(loaded, x, batch_size=batch_size, device=device), arrays.images,
                        progress, "predicting")
    cal = fit_calibration(logits, arrays.labels, target_accuracy)
    cal["validation"].update({
        "source": str(data),
        "split": used,
        "skipped_files": len(problems),
        "left_out": left_out,
        "notes": notes,
    })
    cal["fitted_at"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    path = store_calibration(loaded.path, cal) if write else Path(loaded.path) / META
    return {**cal, "model_json": str(path)}


def store_calibration(folder: str | Path, calibration: dict) -> Path:
    """Set the ``calibration`` block of a model folder's ``model.json``, keeping every other field.

    The file is re-read just before writing and replaced atomically.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    meta["calibration"] = calibration
    path = folder / META
    atomic_write_json(path, meta)
    return path
