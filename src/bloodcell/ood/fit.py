"""Fitting the out-of-distribution score (:mod:`bloodcell.ood.score`) and choosing its threshold.

The statistics are fitted on training features; the threshold is chosen
between held-out real cells and generated non-cell images
(:mod:`bloodcell.ood.noncell`) on one half of each, and measured on the other
half.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from safetensors.numpy import save
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from bloodcell.core.errors import ModelError
from bloodcell.core.files import atomic_write_bytes
from bloodcell.core.stats import wilson_interval
from bloodcell.ood.noncell import non_cell_images
from bloodcell.ood.score import (
    CELL_CHECK,
    FILE,
    METHOD,
    CellCheckHead,
    MahalanobisHead,
    extract_features,
    head_scores,
    stored_names,
)

#: Inverse regularisation strength of the cell check's logistic regression (standardised features).
CELL_CHECK_C = 0.01
#: Seed offset of the non-cell images the cell check is fitted on (the threshold's are other draws).
FIT_DRAW = 1000


def default_dims(feature_dim: int) -> int:
    """Principal components kept: 128, or half the feature size for small networks."""
    return int(min(128, max(1, feature_dim // 2)))


def fit_head(features: np.ndarray, labels: np.ndarray, dims: int | None = None) -> MahalanobisHead:
    """Fit the scoring statistics on training features.

    Parameters
    ----------
    features : ndarray, shape (N, F)
        Penultimate features of training images.
    labels : ndarray of int, shape (N,)
        Their classes.
    dims : int, optional
        Principal components of the Mahalanobis subspace (default
        :func:`default_dims`); the rest of the feature space gives the
        residual term.
    """
    x = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(x) < 2 * len(classes) or len(classes) < 2:
        raise ModelError(
            f"Fitting the out-of-distribution statistics needs at least two images of each of two classes; "
            f"got {len(x)} images of {len(classes)} classes."
        )
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    center = x.mean(0)
    x = x - center
    k = int(min(dims or default_dims(x.shape[1]), x.shape[1], len(x) - 1))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    basis = vt[:k].T
    y = x @ basis
    residual = np.maximum((x * x).sum(1) - (y * y).sum(1), 0.0)
    means = np.stack([y[labels == c].mean(0) for c in classes])
    cov = LedoitWolf(assume_centered=True).fit(y - means[np.searchsorted(classes, labels)]).covariance_
    evals, evecs = np.linalg.eigh(cov)
    whiten = evecs / np.sqrt(np.maximum(evals, 1e-12 * evals.max()))
    scale = float(residual.mean()) if residual.mean() > 1e-12 else 1.0
    return MahalanobisHead(center, basis, whiten, means @ whiten, scale)


def fit_cell_check(cell_features: np.ndarray, other_features: np.ndarray, c: float = CELL_CHECK_C) -> CellCheckHead:
    """A logistic regression telling cells (0) from non-cell images (1) on standardised features,
    classes weighted equally, its standardisation folded into one weight vector and bias."""
    if not len(cell_features) or not len(other_features):
        raise ModelError("Fitting the cell check needs real cells and non-cell images.")
    x = np.concatenate([cell_features, other_features]).astype(np.float64)
    y = np.r_[np.zeros(len(cell_features)), np.ones(len(other_features))]
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit((x - mean) / std, y)
    weight = clf.coef_[0] / std
    return CellCheckHead(weight, float(clf.intercept_[0] - weight @ mean))


def choose_threshold(cell_scores: np.ndarray, other_scores: np.ndarray, max_false_flag: float = 0.02) -> float:
    """The threshold separating real cells (below) from non-cell images (above).

    Among thresholds that flag at most ``max_false_flag`` of the real cells,
    take those maximising (non-cells flagged) - (cells flagged); the midpoint
    (geometric, scores are positive) of that optimal interval is returned.
    """
    cells = np.sort(np.asarray(cell_scores, np.float64))
    other = np.sort(np.asarray(other_scores, np.float64))
    if not len(cells) or not len(other):
        raise ModelError("Choosing the out-of-distribution threshold needs real cells and non-cell images.")
    candidates = np.unique(np.concatenate([cells, other, [0.0]]))
    # flagged means score > t
    false_flag = 1.0 - np.searchsorted(cells, candidates, side="right") / len(cells)
    caught = 1.0 - np.searchsorted(other, candidates, side="right") / len(other)
    allowed = false_flag <= max_false_flag + 1e-12
    gain = np.where(allowed, caught - false_flag, -np.inf)
    best = np.flatnonzero(gain >= gain.max() - 1e-12)
    run_end = best[0]
    while run_end + 1 < len(candidates) and gain[run_end + 1] >= gain.max() - 1e-12:
        run_end += 1
    lo = candidates[best[0]]
    upper_idx = run_end + 1
    hi = candidates[upper_idx] if upper_idx < len(candidates) else lo * 2.0 + 1.0
    return float(math.sqrt(max(lo, 1e-9) * hi)) if lo > 0 else float(hi / 2.0)


def evaluate_threshold(threshold: float, cell_scores: np.ndarray, other_scores: np.ndarray, other_kinds: list[str]) -> dict:
    """False-flag rate on real cells and detection rate per non-cell kind, with 95% CIs."""
    cell_flags = np.asarray(cell_scores) > threshold
    other_flags = np.asarray(other_scores) > threshold
    kinds = np.asarray(other_kinds)
    k, n = int(cell_flags.sum()), len(cell_flags)
    d, m = int(other_flags.sum()), len(other_flags)
    per_kind = {}
    for kind in dict.fromkeys(other_kinds):
        sel = other_flags[kinds == kind]
        per_kind[kind] = {"n": int(len(sel)), "detected": round(float(sel.mean()), 4)}
    y = np.r_[np.zeros(n), np.ones(m)]
    return {
        "cells": n,
        "cells_flagged": k,
        "false_flag_rate": round(k / n, 4) if n else None,
        "false_flag_rate_ci95": [round(v, 4) for v in wilson_interval(k, n)],
        "non_cells": m,
        "non_cells_detected": d,
        "detection_rate": round(d / m, 4) if m else None,
        "detection_rate_ci95": [round(v, 4) for v in wilson_interval(d, m)],
        "detection_by_kind": per_kind,
        "auroc": round(float(roc_auc_score(y, np.r_[cell_scores, other_scores])), 4) if n and m else None,
    }


def save_head(folder: str | Path, head: MahalanobisHead | CellCheckHead, file: str = FILE) -> Path:
    """Write the head's buffers to ``folder/ood.safetensors`` (or ``file``), atomically."""
    tensors = {k: np.ascontiguousarray(head.state_dict()[k].cpu().numpy()) for k in stored_names(head)}
    path = Path(folder) / file
    atomic_write_bytes(path, save(tensors))
    return path


def _halves(n_cells: int, kinds: list[str], seed: int) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Random halves of the held-out cells and of each non-cell kind: one to choose the threshold, one to report it."""
    rng = np.random.default_rng(seed)
    cell_perm = rng.permutation(n_cells)
    kinds_arr = np.asarray(kinds)
    choose_o, report_o = [], []
    for kind in dict.fromkeys(kinds):
        idx = rng.permutation(np.flatnonzero(kinds_arr == kind))
        choose_o += list(idx[: len(idx) // 2])
        report_o += list(idx[len(idx) // 2 :])
    return cell_perm[: n_cells // 2], cell_perm[n_cells // 2 :], choose_o, report_o


def _fit_score(method: str, loaded, train_feats, train_labels, dims, per_kind: int, seed: int, batch_size: int,
               progress: bool) -> MahalanobisHead | CellCheckHead:
    if method == CELL_CHECK:
        fit_others, _ = non_cell_images(per_kind, size=loaded.preprocess.image_size, seed=seed + FIT_DRAW)
        return fit_cell_check(train_feats, extract_features(loaded, fit_others, batch_size, progress))
    if method != METHOD:
        raise ModelError(f"Unknown out-of-distribution method {method!r}; choose {METHOD!r} or {CELL_CHECK!r}.")
    return fit_head(train_feats, train_labels, dims)


def _features(loaded, images: np.ndarray, known: np.ndarray | None, batch_size: int, progress: bool) -> np.ndarray:
    """Features of ``images``, of which ``known`` holds those of the first rows already."""
    if known is None:
        return extract_features(loaded, images, batch_size, progress)
    rest = images[len(known):]
    return np.concatenate([known, extract_features(loaded, rest, batch_size, progress)]) if len(rest) else known


def fit_ood(
    loaded,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    heldout_images: np.ndarray,
    *,
    dims: int | None = None,
    per_kind: int = 60,
    max_false_flag: float = 0.02,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    method: str = METHOD,
    known: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[MahalanobisHead | CellCheckHead, dict]:
    """Fit the score on training images and measure its threshold.

    Parameters
    ----------
    loaded : LoadedModel
        The model whose features are scored.
    train_images, train_labels : ndarray
        Prepared ``uint8`` training images ``(N, S, S, 3)`` and their class indices.
    heldout_images : ndarray
        Real cells not fitted on: half choose the threshold with half of the non-cells, the rest measure it.
    per_kind : int
        Generated non-cell images per kind (see :data:`bloodcell.ood.noncell.KINDS`).
    max_false_flag : float
        Largest share of held-out real cells the threshold may flag.
    method : str
        :data:`~bloodcell.ood.score.METHOD` (distance to the training features' statistics) or
        :data:`~bloodcell.ood.score.CELL_CHECK` (cells against non-cell images of other draws).
    known : (ndarray, ndarray)
        Features already extracted of the first rows of ``train_images`` and ``heldout_images``, not extracted again.

    Returns ``(head, info)``: the head and, for ``model.json["ood"]``, its method, threshold, sizes and evaluation.
    """
    if len(heldout_images) < 10:
        raise ModelError(f"The out-of-distribution threshold needs at least 10 held-out real cells; got {len(heldout_images)}.")
    train_feats = _features(loaded, train_images, known[0], batch_size, progress)
    head = _fit_score(method, loaded, train_feats, train_labels, dims, per_kind, seed, batch_size, progress)
    cells = head_scores(head, _features(loaded, heldout_images, known[1], batch_size, progress))
    others, kinds = non_cell_images(per_kind, size=loaded.preprocess.image_size, seed=seed)
    other_scores = head_scores(head, extract_features(loaded, others, batch_size, progress))
    choose_c, report_c, choose_o, report_o = _halves(len(cells), kinds, seed)
    threshold = choose_threshold(cells[choose_c], other_scores[choose_o], max_false_flag)
    evaluation = evaluate_threshold(threshold, cells[report_c], other_scores[report_o], [kinds[i] for i in report_o])
    info = {
        "method": method,
        "threshold": round(threshold, 6),
        "feature_dim": int(train_feats.shape[1]),
        "dims": head.dims,
        "fitted_on_images": int(len(train_images)),
        "max_false_flag": max_false_flag,
        "train_score_median": round(float(np.median(head_scores(head, train_feats))), 4),
        "threshold_chosen_on": {"cells": int(len(choose_c)), "non_cells": int(len(choose_o))},
        "evaluation": evaluation,
        "non_cell_kinds": list(dict.fromkeys(kinds)),
    }
    return head, info


#: Share of held-out cells the familiarity check lets through: the rest (1%) are called unfamiliar.
FAMILIAR_QUANTILE = 0.99


def fit_familiarity(train_feats: np.ndarray, train_labels: np.ndarray, heldout_feats: np.ndarray,
                    quantile: float = FAMILIAR_QUANTILE):
    """The familiarity check (:class:`~bloodcell.ood.score.MahalanobisHead` on the penultimate features
    ``train_feats`` of plain training cells) and its record: the threshold is the ``quantile`` of held-out
    cells' scores (``heldout_feats``), so a cell farther from the training cells than all but
    ``1 - quantile`` of them is called unfamiliar.

    Returns ``(head, info)`` for ``familiar.safetensors`` and ``model.json["familiarity"]``.
    """
    if len(heldout_feats) < 10:
        raise ModelError(f"Choosing the familiarity threshold needs at least 10 held-out cells; got {len(heldout_feats)}.")
    head = fit_head(train_feats, train_labels)
    threshold = float(np.quantile(head_scores(head, heldout_feats), quantile))
    return head, {
        "method": METHOD,
        "threshold": round(threshold, 6),
        "quantile": quantile,
        "fitted_on_images": int(len(train_feats)),
        "threshold_chosen_on": int(len(heldout_feats)),
        "rule": "a cell scoring above the threshold is called uncertain (unfamiliar): it lies farther from the "
                f"training cells than {quantile:.0%} of held-out cells of the training data's source",
    }
