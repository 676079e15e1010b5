"""Fit a model's calibration on validation data and store it in its ``model.json``.

The stored ``calibration`` block holds the temperature (applied by
:func:`bloodcell.prediction.torch_backend.predict_proba` when ``calibrated=True``), the
abstention threshold on the temperature-scaled top probability, the target it
was chosen for, and the validation figures behind both.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from bloodcell.core.errors import DataError
from bloodcell.core.model_folder import meta_path, read_meta, write_meta
from bloodcell.evaluation.calibration import (
    coverage_at_accuracy,
    expected_calibration_error,
    fit_temperature,
    fit_temperature_views,
    nll,
    softmax,
    view_probs,
)
from bloodcell.evaluation.labelled import load_labelled
from bloodcell.evaluation.scoring import COVERAGE_TARGETS, in_chunks, predict_views
from bloodcell.networks.loading import load_model
from bloodcell.prediction.torch_backend import TTA_VIEWS, predict_logits

ABSTAIN_RULE = "refer the image to a hematologist when its top temperature-scaled probability is below abstain_threshold"


def _abstention(before: np.ndarray, after: np.ndarray, y: np.ndarray, t: float, target: float, n_bins: int) -> dict:
    chosen = coverage_at_accuracy(after, y, target)
    return {
        "temperature": t,
        "abstain_threshold": chosen["threshold"],
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


def fit_calibration(
    logits: np.ndarray,
    y_true: np.ndarray,
    target_accuracy: float = 0.995,
    n_bins: int = 15,
    view_logits: np.ndarray | None = None,
) -> dict:
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
    view_logits : array (V, N, C), optional
        Logits of the test-time-augmentation views
        (:func:`bloodcell.prediction.torch_backend.predict_view_logits`); when given, a
        ``tta`` block holds a temperature and threshold fitted for augmented
        predictions.

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
    plain = _abstention(softmax(z), softmax(z / t), y, t, target_accuracy, n_bins)
    out = {**plain, "target_accuracy": float(target_accuracy), "abstain_rule": ABSTAIN_RULE}
    if view_logits is not None:
        t_tta = fit_temperature_views(view_logits, y)
        out["tta"] = _abstention(view_probs(view_logits, 1.0), view_probs(view_logits, t_tta), y, t_tta,
                                 target_accuracy, n_bins)
    return out


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
    tta: bool = False,
) -> dict:
    """Fit calibration on ``data`` (its ``split``) and store it in the model's ``model.json``.

    With ``tta``, also fit a temperature and threshold for test-time-augmented
    predictions (stored under ``calibration.tta``; eight forward passes). The
    file is rewritten atomically with every other field kept. Returns the
    stored ``calibration`` block plus ``model_json`` (the file's path).
    """
    if not 0.0 < target_accuracy <= 1.0:
        raise DataError(f"--target-accuracy must be in (0, 1], got {target_accuracy!r}; e.g. 0.995 for 99.5%.")
    loaded = load_model(model, device or "cpu")
    arrays, used, problems, notes, left_out = load_labelled(data, loaded.preprocess, split, progress)
    views = None
    if tta:
        views = predict_views(loaded, arrays.images, batch_size, device, progress)
        logits = views[TTA_VIEWS.index((0, False))]  # the identity view is the plain prediction
    else:
        logits = in_chunks(lambda x: predict_logits(loaded, x, batch_size=batch_size, device=device),
                           arrays.images, progress, "predicting")
    cal = fit_calibration(logits, arrays.labels, target_accuracy, view_logits=views)
    cal["validation"].update({
        "source": str(data),
        "split": used,
        "skipped_files": len(problems),
        "left_out": left_out,
        "notes": notes,
    })
    cal["fitted_at"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    path = store_calibration(loaded.path, cal) if write else meta_path(loaded.path)
    return {**cal, "model_json": str(path)}


def store_calibration(folder: str | Path, calibration: dict) -> Path:
    """Set the ``calibration`` block of a model folder's ``model.json``, keeping every other field.

    The file is re-read just before writing and replaced atomically.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    meta["calibration"] = calibration
    return write_meta(folder, meta)
