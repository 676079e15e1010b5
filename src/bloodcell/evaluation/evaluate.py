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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bloodcell import __version__
from bloodcell.core.classes import CLASSES, canonical_class
from bloodcell.core.errors import DataError, ModelError
from bloodcell.core.model_folder import read_meta
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
from bloodcell.evaluation.metrics import ClassAlignment, align_classes, compute_metrics
from bloodcell.networks.loading import LoadedModel, load_model
from bloodcell.prediction.torch_backend import predict_logits, predict_view_logits, tta_temperature

#: Accuracy targets whose coverage every evaluation reports.
COVERAGE_TARGETS = (0.995, 0.998)


@dataclass
class Evaluation:
    """One model on one dataset: inputs, probabilities and every computed figure.

    Attributes
    ----------
    loaded : LoadedModel
        The model evaluated.
    images : ndarray uint8 (N, S, S, 3)
        The prepared images (kept for the report's image grids).
    y_true : ndarray int (N,)
        True classes as indices into ``loaded.class_names``.
    ids : list of str
        Source ids (file paths or ``npz`` positions) of the images.
    probs : ndarray float32 (N, C)
        The probabilities the metrics describe: temperature-scaled, and with
        test-time augmentation when it was asked for.
    probs_uncalibrated : ndarray float32 (N, C)
        Without temperature scaling or test-time augmentation.
    summary : dict
        JSON-ready results (see :meth:`to_json`).
    """

    loaded: LoadedModel
    images: np.ndarray
    y_true: np.ndarray
    ids: list[str]
    probs: np.ndarray
    probs_uncalibrated: np.ndarray
    alignment: ClassAlignment
    summary: dict = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.loaded.class_names)

    @property
    def metrics(self) -> dict:
        return self.summary["metrics"]

    def to_json(self) -> dict:
        """Everything but the arrays, for ``metrics.json``."""
        return self.summary


def model_info(loaded: LoadedModel) -> dict:
    """What identifies a model in a report: path, architecture, size, calibration."""
    meta = loaded.meta
    ens = meta.get("ensemble")
    params = sum(p.numel() for p in loaded.module.parameters())
    cal = meta.get("calibration") or {}
    return {
        "path": str(loaded.path),
        "name": loaded.path.name,
        "architecture": _ensemble_name(loaded.path, ens) if ens else meta.get("architecture"),
        "ensemble": bool(ens),
        "parameters": int(params),
        "image_size": loaded.preprocess.image_size,
        "class_names": list(loaded.class_names),
        "temperature": loaded.temperature,
        "abstain_threshold": cal.get("abstain_threshold"),
        "tta_temperature": (cal.get("tta") or {}).get("temperature"),
        "tta_abstain_threshold": (cal.get("tta") or {}).get("abstain_threshold"),
        "calibration": cal or None,
        "data_manifest_sha256": meta.get("data_manifest_sha256"),
        "training_metrics": meta.get("metrics"),
        "epochs_trained": len(meta.get("history") or []),
        "weights_sha256": _digest(loaded.path),
    }


def _digest(folder: Path) -> str | None:
    from bloodcell.core.model_folder import weights_digest

    try:
        return weights_digest(folder)
    except OSError:
        return None


def _ensemble_name(folder: Path, ens: dict) -> str:
    archs = []
    for member in ens.get("members", []):
        try:
            archs.append(str(read_meta(Path(folder) / member).get("architecture")))
        except ModelError:
            archs.append(str(member))
    return f"ensemble of {len(archs)}: " + ", ".join(archs)


def _map_labels(labels, label_names, model_classes) -> tuple[np.ndarray, dict[str, int]]:
    """Dataset label indices to model class indices (-1 where the model lacks the class)."""
    model_idx = {canonical_class(c): i for i, c in enumerate(model_classes)}
    names = [canonical_class(n) for n in label_names]
    lut = np.array([model_idx.get(n, -1) for n in names], dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"Labels must index the {len(names)} dataset classes; got {labels.min()}..{labels.max()}.")
    y = lut[labels] if len(labels) else labels
    left_out = {names[k]: int((labels == k).sum()) for k in range(len(names)) if lut[k] < 0 and (labels == k).any()}
    return y, left_out


def _in_chunks(fn, images: np.ndarray, progress: bool, desc: str, chunk: int = 256) -> np.ndarray:
    """Apply ``fn`` to ``images`` in chunks, with a progress bar on stderr."""
    if not progress or len(images) <= chunk:
        return fn(images)
    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), chunk):
            out.append(fn(images[start : start + chunk]))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _headline(y: np.ndarray, probs: np.ndarray, class_names, evaluated, n_bins: int = 15) -> dict:
    m = compute_metrics(y, probs, class_names, evaluated, n_bins=n_bins, n_boot=0)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_avg"]["f1"],
        "balanced_accuracy": m["balanced_accuracy"],
        "ece": m["ece"],
        "log_loss": m["log_loss"],
    }


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
    model_classes = tuple(canonical_class(c) for c in loaded.class_names)
    label_names = [canonical_class(n) for n in label_names]
    labels = np.asarray(labels, dtype=np.int64)
    present = [label_names[k] for k in sorted(set(labels.tolist()))] if len(labels) else []
    if not present:
        raise DataError(f"{source}: no labelled images to evaluate" + (f" in split {split!r}" if split else "") + ".")
    alignment = align_classes(present + list(left_out or {}), model_classes)
    y, dropped = _map_labels(labels, label_names, model_classes)
    left_out = {**(left_out or {}), **dropped}
    keep = y >= 0
    ids = [str(i) for i in (ids if ids is not None else range(len(labels)))]
    images, y = images[keep], y[keep]
    ids = [i for i, k in zip(ids, keep) if k]

    t0 = time.perf_counter()
    logits = _in_chunks(lambda x: predict_logits(loaded, x, batch_size=batch_size, device=device), images,
                        progress, "predicting")
    plain_seconds = time.perf_counter() - t0
    probs_uncal = softmax(logits.astype(np.float64)).astype(np.float32)
    temperature = loaded.temperature
    probs_plain = softmax(logits.astype(np.float64) / temperature).astype(np.float32)
    probs = probs_plain
    tta_block = None
    evaluated = alignment.evaluated
    if tta:
        t0 = time.perf_counter()
        view_logits = _in_chunks(
            lambda x: predict_view_logits(loaded, x, batch_size=batch_size, device=device).transpose(1, 0, 2),
            images, progress, "predicting with TTA").transpose(1, 0, 2)
        tta_seconds = time.perf_counter() - t0
        tta_t = tta_temperature(loaded)
        probs_tta = view_probs(view_logits, tta_t)
        probs_tta_uncal = view_probs(view_logits, 1.0)
        plain = _headline(y, probs_plain, model_classes, evaluated, n_bins)
        aug = _headline(y, probs_tta, model_classes, evaluated, n_bins)
        right_plain = probs_plain.argmax(1) == y
        right_tta = probs_tta.argmax(1) == y
        n = len(y)
        tta_block = {
            "views": 8,
            "plain": {**plain, "seconds": plain_seconds, "images_per_second": n / max(plain_seconds, 1e-9)},
            "tta": {**aug, "seconds": tta_seconds, "images_per_second": n / max(tta_seconds, 1e-9)},
            "gain": {k: aug[k] - plain[k] for k in plain},
            "slowdown": tta_seconds / max(plain_seconds, 1e-9),
            "fixed": int((right_tta & ~right_plain).sum()),
            "broken": int((~right_tta & right_plain).sum()),
            "changed": int((probs_tta.argmax(1) != probs_plain.argmax(1)).sum()),
        }
        probs = probs_tta

    metrics = compute_metrics(y, probs, model_classes, evaluated, n_bins=n_bins, n_boot=n_boot)
    info = model_info(loaded)
    stored = info["abstain_threshold"]
    tta_own = tta and info["tta_abstain_threshold"] is not None
    if tta_own:
        stored = info["tta_abstain_threshold"]
    curve = accuracy_coverage(probs, y)
    counts = {c: int((y == model_classes.index(c)).sum()) for c in evaluated}
    all_notes = [alignment.message()] if alignment.message() else []
    all_notes += list(notes)
    if tta and stored is not None and not tta_own:
        all_notes.append(
            "The temperature and abstention threshold were fitted on predictions without test-time augmentation; "
            "`bloodcell calibrate --tta` fits them for augmented predictions too."
        )
    if temperature == 1.0 and not (loaded.meta.get("calibration") or {}).get("temperature"):
        all_notes.append("The model is not calibrated: run `bloodcell calibrate MODEL DATA --split val` first.")
    summary = {
        "bloodcell_version": __version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": info,
        "data": {
            "source": str(source),
            "split": split,
            "n_images": int(len(y)),
            "class_counts": counts,
            "left_out": left_out,
            "problems": [str(p) for p in problems],
        },
        "notes": all_notes,
        "tta": bool(tta),
        "metrics": metrics,
        "calibration": {
            "temperature": temperature,
            "ece_uncalibrated": expected_calibration_error(probs_uncal, y, n_bins),
            "ece_calibrated": expected_calibration_error(probs_plain, y, n_bins),
            "log_loss_uncalibrated": nll(probs_uncal, y),
            "log_loss_calibrated": nll(probs_plain, y),
            "reliability_uncalibrated": reliability_bins(probs_uncal, y, n_bins),
            "reliability_calibrated": reliability_bins(probs_plain, y, n_bins),
            "reliability": reliability_bins(probs, y, n_bins),
            **({
                "tta_temperature": tta_t,
                "tta_temperature_fitted": tta_own or info["tta_temperature"] is not None,
                "ece_tta_uncalibrated": expected_calibration_error(probs_tta_uncal, y, n_bins),
                "ece_tta_calibrated": expected_calibration_error(probs_tta, y, n_bins),
                "log_loss_tta_uncalibrated": nll(probs_tta_uncal, y),
                "log_loss_tta_calibrated": nll(probs_tta, y),
                "reliability_tta_uncalibrated": reliability_bins(probs_tta_uncal, y, n_bins),
            } if tta else {}),
        },
        "abstention": {
            "coverage_at": [coverage_at_accuracy(probs, y, t) for t in COVERAGE_TARGETS],
            "model_threshold": apply_threshold(probs, y, stored) if stored is not None else None,
            "model_threshold_kind": ("tta" if tta_own else "plain") if stored is not None else None,
            "curve": curve.to_dict(),
        },
        "speed": {
            "images": int(len(y)),
            "seconds": plain_seconds,
            "images_per_second": len(y) / max(plain_seconds, 1e-9),
            "batch_size": batch_size,
            "device": str(next(loaded.module.parameters()).device),
            "torch_threads": torch.get_num_threads(),
        },
        "tta_comparison": tta_block,
    }
    return Evaluation(loaded, images, y, ids, probs, probs_uncal, alignment, summary)


def _problem_text(p) -> str:
    msg = getattr(p, "message", None)
    return str(msg) if msg else str(p)


def load_labelled(data, preprocess, split: str | None = "test", progress: bool = True):
    """Read a labelled dataset's images, prepared for a model, keeping the model's classes.

    Parameters
    ----------
    data : str or Path
        Anything :func:`bloodcell.data.open_dataset` reads (a class-folder
        tree, an ``.npz``, a CSV manifest such as ``bloodcell split`` writes).
    preprocess : PreprocessConfig
        The model's preprocessing (its ``class_names`` are the model's classes).
    split : str or None
        Split to read from a manifest or MedMNIST file; a dataset without
        splits (a folder, a plain ``.npz``) is read whole, with a note.

    Returns
    -------
    tuple
        ``(arrays, split_used, problems, notes, left_out)``: the
        :class:`~bloodcell.data.ArraySet`, the split read, the files skipped
        (messages), notes for the user, and the image count per dataset
        class the model cannot predict (those images are not decoded).

    Raises
    ------
    ModelError
        When the dataset and the model share no class.
    DataError
        When the dataset, or the split, is empty, unlabelled or unreadable.
    """
    from bloodcell.data import load_arrays, open_dataset

    ds = open_dataset(data, skip_unknown=True)
    notes: list[str] = []
    use = split
    if split and not ds.has_splits:
        use = None
        notes.append(f"{data} has no train/val/test split, so all its images were evaluated.")
    indices = ds.split_indices(use) if use else list(range(len(ds)))
    if not indices:
        splits = sorted({s.split for s in ds.samples if s.split})
        raise DataError(
            f"{data}: no images in split {use!r}; the dataset has splits {', '.join(splits) or 'none'}. "
            "Pass --split with one of them."
        )
    unlabelled = [ds.samples[i].source_id for i in indices if ds.samples[i].label is None]
    if len(unlabelled) == len(indices):
        raise DataError(
            f"{data}: the images carry no class labels, so accuracy cannot be measured. Use a class-folder tree "
            "or a manifest with a label column (`bloodcell predict` classifies unlabelled images)."
        )
    if unlabelled:
        raise DataError(
            f"{data}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]}). "
            "Fill in their labels or leave them out of the evaluation data."
        )
    present = [c for c in CLASSES if any(ds.samples[i].label == c for i in indices)]
    alignment = align_classes(present, preprocess.class_names)
    left_out = {c: sum(ds.samples[i].label == c for i in indices) for c in alignment.unknown}
    keep = [i for i in indices if ds.samples[i].label not in left_out]
    arrays = load_arrays(ds.select(keep), preprocess, class_names=preprocess.class_names, progress=progress)
    problems = [_problem_text(p) for p in list(ds.problems) + list(getattr(arrays, "skipped", []) or [])]
    return arrays, use, problems, notes, left_out


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
