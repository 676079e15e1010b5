"""Run a model over a labelled dataset and collect everything a report needs.

:func:`evaluate_dataset` reads a dataset through :mod:`bloodcell.data` (a
manifest split, a class-folder tree or an ``.npz``), maps its classes onto the
model's by name, predicts once without test-time augmentation (giving both the
uncalibrated and the temperature-scaled probabilities) and, when asked, once
more with it, and computes the metrics, calibration, abstention and
test-time-augmentation figures. :func:`evaluate_arrays` does the same for
arrays already in memory.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bloodcell.core import __version__
from bloodcell.core.classes import canonical_class
from bloodcell.core.errors import DataError
from bloodcell.evaluation.calibration import (
    accuracy_coverage,
    apply_threshold,
    coverage_at_accuracy,
    expected_calibration_error,
    nll,
    reliability_bins,
    softmax,
    view_probs,
)
from bloodcell.evaluation.labelled import load_labelled, map_labels
from bloodcell.evaluation.metrics import align_classes, compute_metrics
from bloodcell.evaluation.results import Evaluation, model_info
from bloodcell.networks.loading import LoadedModel, load_model
from bloodcell.ood.score import FeatureModel, features_and_logits, head_scores, load_familiar
from bloodcell.prediction.torch_backend import predict_logits, predict_view_logits, tta_temperature

__all__ = ["COVERAGE_TARGETS", "Evaluation", "evaluate_arrays", "evaluate_dataset", "in_chunks", "model_info"]

#: Accuracy targets whose coverage every evaluation reports.
COVERAGE_TARGETS = (0.995, 0.998)


@dataclass
class _Predictions:
    """The probabilities of one evaluation, with and without calibration and augmentation."""

    uncalibrated: np.ndarray
    plain: np.ndarray
    seconds: float
    tta: np.ndarray | None = None
    tta_uncalibrated: np.ndarray | None = None
    tta_seconds: float = 0.0
    tta_temperature: float | None = None
    familiar: np.ndarray | None = None  # per image: the model's familiarity check accepts it (None: no check)

    @property
    def reported(self) -> np.ndarray:
        """The probabilities the metrics describe."""
        return self.plain if self.tta is None else self.tta


def in_chunks(fn, images: np.ndarray, progress: bool, desc: str, chunk: int = 256) -> np.ndarray:
    """Apply ``fn`` to ``images`` in chunks, with a progress bar on stderr."""
    if not progress or len(images) <= chunk:
        return fn(images)
    out = []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), chunk):
            out.append(fn(images[start : start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def predict_views(loaded: LoadedModel, images: np.ndarray, batch_size: int, device, progress: bool) -> np.ndarray:
    """Logits of the eight test-time-augmentation views, ``(V, N, C)``, in chunks."""
    return in_chunks(
        lambda x: predict_view_logits(loaded, x, batch_size=batch_size, device=device).transpose(1, 0, 2),
        images, progress, "predicting with TTA").transpose(1, 0, 2)


def _predict(loaded: LoadedModel, images: np.ndarray, tta: bool, batch_size: int, device, progress: bool):
    t0 = time.perf_counter()
    familiar, logits = _logits(loaded, images, batch_size, device, progress)
    seconds = time.perf_counter() - t0
    out = _Predictions(uncalibrated=softmax(logits).astype(np.float32),
                       plain=softmax(logits / loaded.temperature).astype(np.float32), seconds=seconds)
    if tta:
        t0 = time.perf_counter()
        views = predict_views(loaded, images, batch_size, device, progress)
        out.tta_seconds = time.perf_counter() - t0
        out.tta_temperature = tta_temperature(loaded)
        out.tta = view_probs(views, out.tta_temperature)
        out.tta_uncalibrated = view_probs(views, 1.0)
    out.familiar = familiar
    return out


def _logits(loaded: LoadedModel, images: np.ndarray, batch_size: int, device, progress: bool):
    """``(familiar, logits)``: the plain logits (float64) and, for a model with the familiarity check, which
    images it accepts as ``predict`` applies it (``None`` without one), from the same forward pass."""
    threshold = (loaded.meta.get("familiarity") or {}).get("threshold")
    head = load_familiar(loaded.path) if threshold is not None and loaded.path is not None else None
    if head is None:
        logits = in_chunks(lambda x: predict_logits(loaded, x, batch_size=batch_size, device=device), images,
                           progress, "predicting")
        return None, logits.astype(np.float64)
    model, n = FeatureModel(loaded.module, len(loaded.class_names)), len(loaded.class_names)
    both = in_chunks(lambda x: np.hstack(features_and_logits(loaded, x, batch_size, model=model)[::-1]), images,
                     progress, "predicting")
    return head_scores(head, both[:, n:]) <= float(threshold), both[:, :n].astype(np.float64)


def _headline(y: np.ndarray, probs: np.ndarray, class_names, evaluated, n_bins: int = 15) -> dict:
    m = compute_metrics(y, probs, class_names, evaluated, n_bins=n_bins, n_boot=0)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_avg"]["f1"],
        "balanced_accuracy": m["balanced_accuracy"],
        "ece": m["ece"],
        "log_loss": m["log_loss"],
    }


def _tta_comparison(y: np.ndarray, p: _Predictions, model_classes, evaluated, n_bins: int) -> dict:
    """Test-time augmentation against single-view prediction: gain, cost, predictions fixed and broken."""
    plain = _headline(y, p.plain, model_classes, evaluated, n_bins)
    aug = _headline(y, p.tta, model_classes, evaluated, n_bins)
    right_plain = p.plain.argmax(1) == y
    right_tta = p.tta.argmax(1) == y
    n = len(y)
    return {
        "views": 8,
        "plain": {**plain, "seconds": p.seconds, "images_per_second": n / max(p.seconds, 1e-9)},
        "tta": {**aug, "seconds": p.tta_seconds, "images_per_second": n / max(p.tta_seconds, 1e-9)},
        "gain": {k: aug[k] - plain[k] for k in plain},
        "slowdown": p.tta_seconds / max(p.seconds, 1e-9),
        "fixed": int((right_tta & ~right_plain).sum()),
        "broken": int((~right_tta & right_plain).sum()),
        "changed": int((p.tta.argmax(1) != p.plain.argmax(1)).sum()),
    }


def _calibration(y: np.ndarray, p: _Predictions, temperature: float, tta_fitted: bool, n_bins: int) -> dict:
    """ECE, log loss and reliability bins before and after temperature scaling (and with augmentation)."""
    out = {
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(p.uncalibrated, y, n_bins),
        "ece_calibrated": expected_calibration_error(p.plain, y, n_bins),
        "log_loss_uncalibrated": nll(p.uncalibrated, y),
        "log_loss_calibrated": nll(p.plain, y),
        "reliability_uncalibrated": reliability_bins(p.uncalibrated, y, n_bins),
        "reliability_calibrated": reliability_bins(p.plain, y, n_bins),
        "reliability": reliability_bins(p.reported, y, n_bins),
    }
    if p.tta is not None:
        out.update({
            "tta_temperature": p.tta_temperature,
            "tta_temperature_fitted": tta_fitted,
            "ece_tta_uncalibrated": expected_calibration_error(p.tta_uncalibrated, y, n_bins),
            "ece_tta_calibrated": expected_calibration_error(p.tta, y, n_bins),
            "log_loss_tta_uncalibrated": nll(p.tta_uncalibrated, y),
            "log_loss_tta_calibrated": nll(p.tta, y),
            "reliability_tta_uncalibrated": reliability_bins(p.tta_uncalibrated, y, n_bins),
        })
    return out


def _abstention(probs: np.ndarray, y: np.ndarray, stored: float | None, tta_own: bool,
                familiar: np.ndarray | None = None) -> dict:
    both = familiar is not None and stored is not None
    return {
        "coverage_at": [coverage_at_accuracy(probs, y, t) for t in COVERAGE_TARGETS],
        "model_threshold": apply_threshold(probs, y, stored) if stored is not None else None,
        "model_threshold_kind": ("tta" if tta_own else "plain") if stored is not None else None,
        "with_familiarity": apply_threshold(probs, y, stored, familiar) if both else None,
        "unfamiliar": int((~familiar).sum()) if familiar is not None else None,
        "curve": accuracy_coverage(probs, y).to_dict(),
    }


def _notes(loaded: LoadedModel, alignment, notes, tta: bool, stored, tta_own: bool) -> list[str]:
    out = [alignment.message()] if alignment.message() else []
    out += list(notes)
    if tta and stored is not None and not tta_own:
        out.append(
            "The temperature and abstention threshold were fitted on predictions without test-time augmentation; "
            "`bloodcell calibrate --tta` fits them for augmented predictions too."
        )
    if loaded.temperature == 1.0 and not (loaded.meta.get("calibration") or {}).get("temperature"):
        out.append("The model is not calibrated: run `bloodcell calibrate MODEL DATA --split val` first.")
    return out


def _speed(loaded: LoadedModel, n: int, seconds: float, batch_size: int) -> dict:
    return {
        "images": n,
        "seconds": seconds,
        "images_per_second": n / max(seconds, 1e-9),
        "batch_size": batch_size,
        "device": str(next(loaded.module.parameters()).device),
        "torch_threads": torch.get_num_threads(),
    }


def _evaluable(loaded: LoadedModel, labels, label_names, ids, left_out, source, split):
    """The classes to evaluate and the labels, ids and mask of the images the model can be judged on."""
    model_classes = tuple(canonical_class(c) for c in loaded.class_names)
    label_names = [canonical_class(n) for n in label_names]
    labels = np.asarray(labels, dtype=np.int64)
    present = [label_names[k] for k in sorted(set(labels.tolist()))] if len(labels) else []
    if not present:
        raise DataError(f"{source}: no labelled images to evaluate" + (f" in split {split!r}" if split else "") + ".")
    alignment = align_classes(present + list(left_out or {}), model_classes)
    y, dropped = map_labels(labels, label_names, model_classes)
    keep = y >= 0
    ids = [str(i) for i in (ids if ids is not None else range(len(labels)))]
    return alignment, y[keep], [i for i, k in zip(ids, keep) if k], keep, {**(left_out or {}), **dropped}


def evaluate_arrays(
    loaded: LoadedModel,
    images: np.ndarray,
    labels: np.ndarray,
    label_names,
    *,
    ids=None,
    tta: bool = False,
    batch_size: int = 64,
    device=None,
    n_boot: int = 1000,
    n_bins: int = 15,
    source: str = "<arrays>",
    split: str | None = None,
    problems=(),
    notes=(),
    left_out=None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate ``loaded`` on prepared images with labels indexing ``label_names``.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`bloodcell.networks.load_model`.
    images : ndarray uint8 (N, S, S, 3)
        Images prepared with ``loaded.preprocess``.
    labels : ndarray int (N,)
        Indices into ``label_names``.
    label_names : sequence of str
        The dataset's class names; matched to the model's by canonical name.
        Images of classes the model cannot predict are left out (and counted).
    tta : bool
        Also predict with test-time augmentation (8 flips/rotations); the
        metrics then describe the augmented predictions and a ``tta`` block
        compares them with the plain ones, gain and cost.
    n_boot : int
        Bootstrap resamples for the 95% intervals.
    source, split, problems, notes, left_out
        Descriptions of the data carried into the results (``left_out``:
        images per class already removed because the model lacks the class).
    progress : bool
        Show prediction progress on stderr.

    Raises
    ------
    ModelError
        When the dataset and the model share no class.
    DataError
        When no image is left to evaluate.
    """
    alignment, y, ids, keep, left_out = _evaluable(loaded, labels, label_names, ids, left_out, source, split)
    images = images[keep]
    p = _predict(loaded, images, tta, batch_size, device, progress)
    data = {"source": str(source), "split": split, "problems": [str(q) for q in problems], "left_out": left_out}
    summary = _summary(loaded, alignment, y, p, data, notes, tta=tta, n_boot=n_boot, n_bins=n_bins,
                       batch_size=batch_size)
    return Evaluation(loaded, images, y, ids, p.reported, p.uncalibrated, alignment, summary)


def _summary(loaded: LoadedModel, alignment, y: np.ndarray, p: _Predictions, data: dict, notes, *, tta: bool,
             n_boot: int, n_bins: int, batch_size: int) -> dict:
    """The JSON-ready results of one evaluation (see :class:`Evaluation`)."""
    model_classes = alignment.model_classes
    info = model_info(loaded)
    tta_own = tta and info["tta_abstain_threshold"] is not None
    stored = info["tta_abstain_threshold"] if tta_own else info["abstain_threshold"]
    return {
        "bloodcell_version": __version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": info,
        "data": {
            "source": data["source"],
            "split": data["split"],
            "n_images": int(len(y)),
            "class_counts": {c: int((y == model_classes.index(c)).sum()) for c in alignment.evaluated},
            "left_out": data["left_out"],
            "problems": data["problems"],
        },
        "notes": _notes(loaded, alignment, notes, tta, stored, tta_own),
        "tta": bool(tta),
        "metrics": compute_metrics(y, p.reported, model_classes, alignment.evaluated, n_bins=n_bins, n_boot=n_boot),
        "calibration": _calibration(y, p, loaded.temperature, tta_own or info["tta_temperature"] is not None,
                                    n_bins),
        "abstention": _abstention(p.reported, y, stored, tta_own, p.familiar),
        "speed": _speed(loaded, int(len(y)), p.seconds, batch_size),
        "tta_comparison": _tta_comparison(y, p, model_classes, alignment.evaluated, n_bins) if tta else None,
    }


def evaluate_dataset(
    model: str | Path | LoadedModel,
    data: str | Path,
    split: str | None = "test",
    *,
    tta: bool = False,
    batch_size: int = 64,
    device=None,
    n_boot: int = 1000,
    progress: bool = True,
) -> Evaluation:
    """Evaluate a model folder on a dataset (see :func:`evaluate_arrays`)."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device or "cpu")
    arrays, used, problems, notes, left_out = load_labelled(data, loaded.preprocess, split, progress)
    return evaluate_arrays(
        loaded, arrays.images, arrays.labels, arrays.class_names, ids=list(arrays.ids), tta=tta,
        batch_size=batch_size, device=device, n_boot=n_boot, source=str(data), split=used,
        problems=problems, notes=notes, left_out=left_out, progress=progress,
    )
