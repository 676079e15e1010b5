"""Classification metrics on ``(y_true, probs, class_names)``.

``probs`` holds the model's probabilities over its own classes
(``class_names``); ``y_true`` indexes the same classes. A dataset may hold only
some of them (a *partial label set*, e.g. five white-cell types from another
lab): metrics are then computed over the classes present, and predictions into
the absent classes count as errors and are also reported on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from bloodcell.core.classes import DISPLAY_NAMES, canonical_class
from bloodcell.core.errors import DataError, ModelError
from bloodcell.evaluation.calibration import _check, expected_calibration_error


@dataclass(frozen=True)
class ClassAlignment:
    """How a dataset's classes map onto a model's classes (by canonical name).

    Attributes
    ----------
    model_classes : tuple of str
        The model's output classes, in logit order.
    evaluated : tuple of str
        Classes in both; the metrics are computed over these, in model order.
    absent : tuple of str
        Model classes the dataset lacks; predictions into them are errors.
    unknown : tuple of str
        Dataset classes the model cannot predict; their images are left out.
    """

    model_classes: tuple[str, ...]
    evaluated: tuple[str, ...]
    absent: tuple[str, ...]
    unknown: tuple[str, ...]

    def message(self) -> str | None:
        """A one-paragraph note for the user, or ``None`` when the classes match."""
        parts = []
        if self.unknown:
            parts.append(
                f"the model does not predict {', '.join(self.unknown)}, so those images are left out"
            )
        if self.absent:
            parts.append(
                f"the dataset has no {', '.join(self.absent)} images, so metrics cover the "
                f"{len(self.evaluated)} classes present and predictions into the absent classes count as errors"
            )
        return ("Partial label set: " + "; ".join(parts) + ".") if parts else None


def align_classes(dataset_classes, model_classes) -> ClassAlignment:
    """Match dataset classes to model classes by canonical name.

    Raises
    ------
    ModelError
        When the two share no class, so nothing can be evaluated.
    """
    model = tuple(canonical_class(c) for c in model_classes)
    data = {canonical_class(c) for c in dataset_classes}
    evaluated = tuple(c for c in model if c in data)
    if not evaluated:
        raise ModelError(
            f"The model and the dataset share no class: the model predicts {', '.join(model)}; "
            f"the dataset holds {', '.join(sorted(data)) or 'no labelled images'}. "
            "Evaluate on a dataset labelled with the model's classes (folder names or the manifest's label column)."
        )
    absent = tuple(c for c in model if c not in data)
    unknown = tuple(sorted(data - set(model)))
    return ClassAlignment(model, evaluated, absent, unknown)


def display(name: str) -> str:
    """Human-readable class name."""
    return DISPLAY_NAMES.get(name, name)


def _f1_from_counts(tp: np.ndarray, true_n: np.ndarray, pred_n: np.ndarray) -> np.ndarray:
    denom = true_n + pred_n
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap confidence intervals of accuracy and macro-F1.

    Images are resampled with replacement ``n_boot`` times; macro-F1 averages
    the F1 of ``labels`` (the evaluated classes), as :func:`compute_metrics` does.
    """
    n = len(y_true)
    rng = np.random.default_rng(seed)
    acc = np.empty(n_boot)
    f1 = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        t, p = y_true[idx], y_pred[idx]
        acc[start : start + b] = (t == p).mean(axis=1)
        key = (np.arange(b)[:, None] * n_classes + t) * n_classes + p
        cm = np.bincount(key.ravel(), minlength=b * n_classes * n_classes).reshape(b, n_classes, n_classes)
        tp = cm[:, labels, labels]
        true_n = cm.sum(axis=2)[:, labels]
        pred_n = cm.sum(axis=1)[:, labels]
        f1[start : start + b] = _f1_from_counts(tp, true_n, pred_n).mean(axis=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {
        "level": level,
        "n_bootstrap": n_boot,
        "accuracy": [float(v) for v in np.percentile(acc, q)],
        "macro_f1": [float(v) for v in np.percentile(f1, q)],
    }


def compute_metrics(
    y_true,
    probs,
    class_names,
    evaluated=None,
    *,
    n_bins: int = 15,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Every classification metric bloodcell reports, as a JSON-ready dict.

    Parameters
    ----------
    y_true : array (N,)
        True class indices into ``class_names``.
    probs : array (N, C)
        Predicted probabilities over ``class_names`` (the model's classes).
    class_names : sequence of str
        The model's classes, in the order of ``probs``' columns.
    evaluated : sequence of str, optional
        The classes the dataset holds (default: those occurring in
        ``y_true``). Classes of ``class_names`` outside it are *absent*.
    n_bins : int
        Bins of the expected calibration error.
    n_boot : int
        Bootstrap resamples for the 95% intervals (0 skips them).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``per_class`` (precision,
        recall, f1, support, roc_auc), ``macro_avg``, ``weighted_avg``,
        ``confusion_matrix`` (rows: evaluated classes, columns: all model
        classes; counts and row-normalised), ``roc_auc_ovr_macro``,
        ``log_loss``, ``ece``, ``absent_predictions`` and ``ci95``; with
        absent classes also ``restricted`` (argmax over the evaluated classes
        only, as if the model knew which classes can occur).
    """
    probs, y_true = _check(probs, y_true)
    class_names = tuple(class_names)
    labels, absent = _evaluated_labels(y_true, probs, class_names, evaluated)
    y_pred = probs.argmax(axis=1)
    out = {
        "n": len(y_true),
        "class_names": list(class_names),
        "evaluated_classes": [class_names[k] for k in labels],
        "absent_classes": [class_names[k] for k in absent],
        **_class_scores(y_true, y_pred, probs, class_names, labels),
        **_probability_scores(y_true, probs, n_bins),
        "confusion_matrix": _confusion(y_true, y_pred, class_names, labels),
        "absent_predictions": _absent_predictions(y_pred, class_names, absent),
    }
    if len(absent):
        out["restricted"] = _restricted(y_true, probs, labels)
    if n_boot:
        out["ci95"] = bootstrap_ci(y_true, y_pred, labels, len(class_names), n_boot=n_boot, seed=seed)
    return out


def _class_scores(y_true, y_pred, probs, class_names, labels) -> dict:
    """Accuracy, balanced accuracy, macro and weighted averages, per-class scores and the macro ROC-AUC."""
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class, aucs = _per_class(y_true, probs, class_names, labels, (prec, rec, f1, support))
    weights = support / max(support.sum(), 1)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(rec)),
        "macro_avg": {"precision": float(prec.mean()), "recall": float(rec.mean()), "f1": float(f1.mean())},
        "weighted_avg": {
            "precision": float(weights @ prec),
            "recall": float(weights @ rec),
            "f1": float(weights @ f1),
        },
        "per_class": per_class,
        "roc_auc_ovr_macro": float(np.mean(aucs)) if aucs else None,
    }


def _probability_scores(y_true: np.ndarray, probs: np.ndarray, n_bins: int) -> dict:
    """Log loss, expected calibration error and mean confidence."""
    C = probs.shape[1]
    return {
        "log_loss": float(log_loss(y_true, probs / probs.sum(axis=1, keepdims=True), labels=np.arange(C))),
        "ece": expected_calibration_error(probs, y_true, n_bins),
        "ece_bins": n_bins,
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def _evaluated_labels(y_true: np.ndarray, probs: np.ndarray, class_names: tuple, evaluated):
    """Indices of the evaluated classes and of the absent ones (model classes the dataset lacks)."""
    if probs.shape[1] != len(class_names):
        raise DataError(f"probs has {probs.shape[1]} columns but {len(class_names)} class names were given.")
    if evaluated is None:
        labels = np.unique(y_true)
    else:
        labels = np.array([class_names.index(c) for c in class_names if c in set(evaluated)], dtype=np.int64)
    stray = np.setdiff1d(np.unique(y_true), labels)
    if len(stray):
        raise DataError(
            f"Labels {[class_names[i] for i in stray]} occur in y_true but are not among the evaluated classes."
        )
    absent = np.array([i for i in range(len(class_names)) if i not in set(labels.tolist())], dtype=np.int64)
    return labels, absent


def _per_class(y_true, probs, class_names, labels, prfs) -> tuple[dict, list[float]]:
    """Precision, recall, F1, support and one-vs-rest ROC-AUC of each evaluated class; the AUCs defined."""
    prec, rec, f1, support = prfs
    n = len(y_true)
    per_class = {}
    aucs = []
    for j, k in enumerate(labels):
        positive = y_true == k
        auc = None
        if 0 < positive.sum() < n:
            auc = float(roc_auc_score(positive, probs[:, k]))
            aucs.append(auc)
        per_class[class_names[k]] = {
            "precision": float(prec[j]),
            "recall": float(rec[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "roc_auc": auc,
        }
    return per_class, aucs


def _confusion(y_true, y_pred, class_names, labels) -> dict:
    """Rows: evaluated classes; columns: all model classes; counts and row-normalised shares."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))[labels]
    row_sum = cm.sum(axis=1, keepdims=True)
    return {
        "rows": [class_names[k] for k in labels],
        "columns": list(class_names),
        "counts": cm.astype(int).tolist(),
        "row_normalized": np.where(row_sum > 0, cm / np.maximum(row_sum, 1), 0.0).round(6).tolist(),
    }


def _absent_predictions(y_pred, class_names, absent) -> dict:
    into_absent = np.isin(y_pred, absent)
    return {
        "count": int(into_absent.sum()),
        "rate": float(into_absent.mean()),
        "by_class": {class_names[k]: int((y_pred == k).sum()) for k in absent},
    }


def _restricted(y_true, probs, labels) -> dict:
    """Accuracy and macro-F1 with the argmax taken over the evaluated classes only."""
    restricted_pred = labels[probs[:, labels].argmax(axis=1)]
    _, _, rf1, _ = precision_recall_fscore_support(y_true, restricted_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float((restricted_pred == y_true).mean()),
        "macro_f1": float(rf1.mean()),
    }


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def format_table(m: dict) -> str:
    """A plain-text summary of :func:`compute_metrics` output for the terminal."""
    lines = []
    ci = m.get("ci95")
    acc = f"accuracy {100 * m['accuracy']:.2f}%"
    f1 = f"macro-F1 {100 * m['macro_avg']['f1']:.2f}%"
    if ci:
        acc += f" (95% CI {100 * ci['accuracy'][0]:.2f}-{100 * ci['accuracy'][1]:.2f})"
        f1 += f" (95% CI {100 * ci['macro_f1'][0]:.2f}-{100 * ci['macro_f1'][1]:.2f})"
    lines.append(f"{m['n']} images, {len(m['evaluated_classes'])} classes: {acc}; {f1}")
    auc = m.get("roc_auc_ovr_macro")
    lines.append(
        f"balanced accuracy {100 * m['balanced_accuracy']:.2f}%; ROC-AUC (one-vs-rest, macro) "
        f"{'-' if auc is None else f'{auc:.4f}'}; log loss {m['log_loss']:.4f}; ECE {100 * m['ece']:.2f}%"
    )
    width = max(len(display(c)) for c in list(m["per_class"]) + ["weighted avg"])
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall     F1  support  ROC-AUC")
    for name, r in m["per_class"].items():
        auc = "     -" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        lines.append(
            f"{display(name):<{width}}     {_pct(r['precision'])}  {_pct(r['recall'])} {_pct(r['f1'])}  {r['support']:>7}   {auc}"
        )
    total = sum(r["support"] for r in m["per_class"].values())
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        r = m[key]
        lines.append(f"{label:<{width}}     {_pct(r['precision'])}  {_pct(r['recall'])} {_pct(r['f1'])}  {total:>7}")
    ab = m["absent_predictions"]
    if m["absent_classes"]:
        by = ", ".join(f"{display(k)} {v}" for k, v in ab["by_class"].items() if v) or "none"
        lines.append("")
        lines.append(
            f"Predictions into classes absent from the dataset ({', '.join(display(c) for c in m['absent_classes'])}): "
            f"{ab['count']} of {m['n']} ({100 * ab['rate']:.2f}%), counted as errors; by class: {by}."
        )
        r = m["restricted"]
        lines.append(
            f"Restricted to the {len(m['evaluated_classes'])} classes present: accuracy {100 * r['accuracy']:.2f}%, "
            f"macro-F1 {100 * r['macro_f1']:.2f}%."
        )
    return "\n".join(lines)
