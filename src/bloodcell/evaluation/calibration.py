"""Calibration: expected calibration error, temperature scaling, abstention.

All functions take class probabilities ``probs`` of shape ``(N, C)`` and
integer labels ``y_true`` indexing the same ``C`` classes. Temperature scaling
is fitted on log-probabilities, which equal the logits up to a per-row
constant, so ``softmax(log(p) / T)`` is exactly ``softmax(logits / T)``.

The abstention rule is: refer an image to a hematologist when its top
(calibrated) probability is below ``abstain_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bloodcell.core.errors import DataError

#: Probabilities below this are clipped before taking logarithms.
_TINY = 1e-30


def _check(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if probs.ndim != 2 or y_true.shape != (probs.shape[0],):
        raise DataError(
            f"Expected probabilities (N, C) and labels (N,), got shapes {probs.shape} and {y_true.shape}."
        )
    if probs.shape[0] == 0:
        raise DataError("No images to evaluate: the dataset (or the selected split) is empty.")
    if y_true.min() < 0 or y_true.max() >= probs.shape[1]:
        raise DataError(f"Labels must lie in 0..{probs.shape[1] - 1}, got {y_true.min()}..{y_true.max()}.")
    return probs, y_true


def confidence_and_correct(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top probability and whether the top class is the true one, per image."""
    probs, y_true = _check(probs, y_true)
    return probs.max(axis=1), probs.argmax(axis=1) == y_true


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict:
    """Equal-width confidence bins: edges, image count, mean confidence and accuracy per bin.

    Empty bins have ``None`` confidence and accuracy.
    """
    conf, correct = confidence_and_correct(probs, y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 falls in bin 0.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        acc = np.where(counts > 0, sum_acc / counts, np.nan)
    return {
        "edges": edges.tolist(),
        "count": counts.astype(int).tolist(),
        "confidence": [None if np.isnan(v) else float(v) for v in mean_conf],
        "accuracy": [None if np.isnan(v) else float(v) for v in acc],
    }


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the image-weighted mean gap between confidence and accuracy over equal-width bins.

    Parameters
    ----------
    probs : array (N, C)
        Predicted class probabilities.
    y_true : array (N,)
        True class indices.
    n_bins : int
        Number of equal-width bins on [0, 1] (15, as in Guo et al. 2017).

    Returns
    -------
    float
        ``sum_b (n_b / N) * |accuracy_b - confidence_b|``, in [0, 1].
    """
    bins = reliability_bins(probs, y_true, n_bins)
    n = sum(bins["count"])
    return float(
        sum(c / n * abs(a - m) for c, a, m in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c)
    )


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Natural log of probabilities, clipped away from zero (float64)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities by a temperature: ``softmax(log(p) / T)`` (float32)."""
    if not temperature > 0:
        raise DataError(f"Temperature must be positive, got {temperature!r}.")
    if temperature == 1.0:
        return np.asarray(probs, dtype=np.float32)
    return softmax(log_probs(probs) / float(temperature)).astype(np.float32)


def _nll(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    s = z * beta
    m = s.max(axis=1)
    lse = m + np.log(np.exp(s - m[:, None]).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


def fit_temperature(
    probs: np.ndarray, y_true: np.ndarray, *, logits: bool = False, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Fit the temperature that minimises the negative log-likelihood of ``y_true``.

    The NLL is convex in ``1/T``, so a golden-section search on ``log(1/T)``
    finds the global minimum within ``bounds`` without extra dependencies.

    Parameters
    ----------
    probs : array (N, C)
        Uncalibrated probabilities (or logits when ``logits=True``).
    y_true : array (N,)
        True class indices.
    logits : bool
        Whether ``probs`` already holds logits.
    bounds : (float, float)
        Smallest and largest temperature considered.

    Returns
    -------
    float
        The fitted temperature ``T`` (``> 1`` softens over-confident models).
    """
    if logits:
        z = np.asarray(probs, dtype=np.float64)
        _check(np.zeros_like(z), y_true)
    else:
        _check(probs, y_true)
        z = log_probs(probs)
    y = np.asarray(y_true, dtype=np.int64)
    lo, hi = np.log(1.0 / bounds[1]), np.log(1.0 / bounds[0])
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(z, y, np.exp(c)), _nll(z, y, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(z, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(z, y, np.exp(d))
    return float(1.0 / np.exp((a + b) / 2.0))


def view_probs(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Test-time-augmented probabilities: the mean over views of ``softmax(logits / T)``.

    ``view_logits`` has shape (V, N, C); the result (N, C) float32 equals
    ``predict_proba(..., tta=True)`` with that temperature.
    """
    z = np.asarray(view_logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=2, keepdims=True)).mean(axis=0).astype(np.float32)


def fit_temperature_views(
    view_logits: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """The temperature minimising the NLL of test-time-augmented probabilities.

    Each view's logits are divided by ``T`` before their softmax outputs are
    averaged, as in :func:`view_probs`. A log-spaced grid brackets the minimum,
    then a golden-section search refines it.
    """
    z = np.asarray(view_logits, dtype=np.float64)
    if z.ndim != 3:
        raise DataError(f"Expected view logits (V, N, C), got shape {z.shape}.")
    _check(np.zeros(z.shape[1:]), y_true)
    y = np.asarray(y_true, dtype=np.int64)
    rows = np.arange(len(y))

    def f(log_t: float) -> float:
        p = view_probs(z, float(np.exp(log_t))).astype(np.float64)
        return float(-np.mean(np.log(np.clip(p[rows, y], _TINY, 1.0))))

    grid = np.linspace(np.log(bounds[0]), np.log(bounds[1]), 41)
    values = [f(g) for g in grid]
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2.0))


def nll(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (log loss)."""
    probs, y_true = _check(probs, y_true)
    return float(-np.mean(log_probs(probs)[np.arange(len(y_true)), y_true]))


@dataclass(frozen=True)
class CoverageCurve:
    """Accuracy of the accepted images as the confidence threshold rises.

    One point per distinct confidence value: images with confidence
    ``>= threshold[i]`` are accepted, a fraction ``coverage[i]`` of all images,
    and ``accuracy[i]`` of them are classified correctly.
    """

    threshold: np.ndarray
    coverage: np.ndarray
    accuracy: np.ndarray

    def to_dict(self, max_points: int = 200) -> dict:
        step = max(1, len(self.threshold) // max_points)
        keep = np.unique(np.r_[np.arange(0, len(self.threshold), step), len(self.threshold) - 1])
        return {
            "threshold": [float(v) for v in self.threshold[keep]],
            "coverage": [float(v) for v in self.coverage[keep]],
            "accuracy": [float(v) for v in self.accuracy[keep]],
        }


def accuracy_coverage(probs: np.ndarray, y_true: np.ndarray) -> CoverageCurve:
    """The accuracy–coverage curve of abstaining below a top-probability threshold."""
    conf, correct = confidence_and_correct(probs, y_true)
    order = np.argsort(-conf, kind="stable")
    cs = conf[order]
    cum = np.cumsum(correct[order])
    n = len(cs)
    ends = np.flatnonzero(np.r_[cs[1:] != cs[:-1], True])  # last index of each tie group
    accepted = ends + 1
    return CoverageCurve(cs[ends], accepted / n, cum[ends] / accepted)


def coverage_at_accuracy(probs: np.ndarray, y_true: np.ndarray, target: float) -> dict:
    """The widest coverage whose accepted images reach ``target`` accuracy.

    Returns
    -------
    dict
        ``target``, ``threshold`` (accept when top probability ``>= threshold``;
        ``None`` when no threshold reaches the target), ``coverage`` and
        ``accuracy`` of the accepted images, and ``accepted`` / ``n`` counts.
    """
    if not 0.0 < target <= 1.0:
        raise DataError(f"Target accuracy must be in (0, 1], got {target!r}; e.g. 0.995 for 99.5%.")
    curve = accuracy_coverage(probs, y_true)
    n = len(np.asarray(y_true))
    ok = np.flatnonzero(curve.accuracy >= target)
    if len(ok) == 0:
        return {"target": float(target), "threshold": None, "coverage": 0.0, "accuracy": None, "accepted": 0, "n": n}
    i = ok[-1]  # coverage rises along the curve, so the last qualifying point is the widest
    return {
        "target": float(target),
        "threshold": float(curve.threshold[i]),
        "coverage": float(curve.coverage[i]),
        "accuracy": float(curve.accuracy[i]),
        "accepted": int(round(curve.coverage[i] * n)),
        "n": n,
    }


def apply_threshold(probs: np.ndarray, y_true: np.ndarray, threshold: float | None,
                    familiar: np.ndarray | None = None) -> dict:
    """Coverage and accuracy of the images a stored abstention threshold accepts (and, with ``familiar``,
    a boolean per image, that the familiarity check also accepts)."""
    conf, correct = confidence_and_correct(probs, y_true)
    n = len(conf)
    if threshold is None:
        return {"threshold": None, "coverage": 1.0, "accuracy": float(correct.mean()), "accepted": n, "referred": 0, "n": n}
    keep = (conf >= threshold) & (familiar if familiar is not None else True)
    k = int(keep.sum())
    return {
        "threshold": float(threshold),
        "coverage": k / n,
        "accuracy": float(correct[keep].mean()) if k else None,
        "accepted": k,
        "referred": n - k,
        "n": n,
    }
