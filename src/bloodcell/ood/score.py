"""Out-of-distribution score: is an image a blood cell at all?

The score uses only the trained model. Its penultimate features (the input of
the final linear layer; for an ensemble, the members' concatenated) are
L2-normalized and centred on the training mean, then split in two parts:

* inside the top ``dims`` principal components of the training features: the
  squared Mahalanobis distance to the nearest class mean, with one shared
  Ledoit-Wolf covariance (Lee et al., NeurIPS 2018; normalizing the features
  first follows Mueller and Hein, "Mahalanobis++", 2025), divided by ``dims``;
* outside them: the squared norm of the residual (the principal-space residual
  of Wang et al., "ViM", CVPR 2022), divided by its training mean.

The score is their sum, about 2 for a typical training image. Images that are
not blood cells (:mod:`bloodcell.ood.noncell`: noise, flat colours, gradients,
text, shapes, checkerboards, natural photographs) score far higher; the
threshold is chosen between them and held-out real cells, on one half of each,
and the false-flag and detection rates are measured on the other half.

The statistics live in the model folder (``ood.safetensors``, and the
threshold and its evaluation in ``model.json["ood"]``). The scoring head is an
``nn.Module``, so the same computation is exported into the ONNX graph as a
second output, ``ood_score``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bloodcell.core.errors import ModelError
from bloodcell.core.stats import wilson_interval
from bloodcell.prediction.torch_backend import tensor_batches

FILE = "ood.safetensors"
METHOD = "mahalanobis-penultimate"


class _Tap(nn.Module):
    """A final linear layer that remembers its input (the penultimate features)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features = x
        return self.linear(x)


def head_layers(module: nn.Module, num_classes: int) -> list[str]:
    """Names of the final linear layers (``out_features == num_classes``) inside ``module``."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


class FeatureModel(nn.Module):
    """A copy of a classifier whose forward returns ``(logits, penultimate features)``."""

    def __init__(self, module: nn.Module, num_classes: int):
        super().__init__()
        self.model = copy.deepcopy(module).eval()
        names = head_layers(self.model, num_classes)
        if not names:
            raise ModelError(
                f"The model has no final linear layer with {num_classes} outputs, so its penultimate "
                "features cannot be read for out-of-distribution scoring."
            )
        self._taps: list[_Tap] = []
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            tap = _Tap(getattr(parent, attr))
            setattr(parent, attr, tap)
            self._taps.append(tap)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        feats = [t.features.flatten(1) for t in self._taps]
        for t in self._taps:
            t.features = None
        return logits, feats[0] if len(feats) == 1 else torch.cat(feats, 1)


class MahalanobisHead(nn.Module):
    """Score penultimate features; about 2 for a typical training image, larger means less cell-like.

    ``score = d2 / dims + r2 / residual_scale`` where, for the L2-normalized
    and centred feature ``x``, ``d2`` is the squared Mahalanobis distance of
    its principal-subspace part to the nearest class mean, and ``r2`` the
    squared norm of the part outside that subspace.
    """

    def __init__(self, center, basis, whiten, class_means, residual_scale):
        super().__init__()
        self.register_buffer("center", torch.as_tensor(center).float().contiguous())
        self.register_buffer("basis", torch.as_tensor(basis).float().contiguous())
        self.register_buffer("whiten", torch.as_tensor(whiten).float().contiguous())
        self.register_buffer("class_means", torch.as_tensor(class_means).float().contiguous())
        self.register_buffer("class_sq", (self.class_means**2).sum(1))
        self.register_buffer("residual_scale", torch.as_tensor(residual_scale).float().reshape(()))

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = f - self.center
        z = x @ self.basis
        residual = ((x * x).sum(1) - (z * z).sum(1)).clamp_min(0.0)
        w = z @ self.whiten
        d = (w * w).sum(1, keepdim=True) - 2.0 * (w @ self.class_means.T) + self.class_sq
        return d.clamp_min(0.0).min(1).values / float(self.dims) + residual / self.residual_scale


class ScoredModel(nn.Module):
    """``(logits, ood_score)`` from a classifier and a fitted :class:`MahalanobisHead`."""

    def __init__(self, module: nn.Module, num_classes: int, head: MahalanobisHead):
        super().__init__()
        self.features = FeatureModel(module, num_classes)
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.features(x)
        return logits, self.head(feats)


@torch.inference_mode()
def extract_features(loaded, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Penultimate features ``(N, F)`` of prepared ``uint8`` images."""
    model = FeatureModel(loaded.module, len(loaded.class_names))
    device = next(loaded.module.parameters()).device
    out = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="features", unit="batch", leave=False)
    for _, x in zip(starts, tensor_batches(images, loaded.preprocess, batch_size, device)):
        out.append(model(x)[1].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


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
    from sklearn.covariance import LedoitWolf

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


def head_scores(head: MahalanobisHead, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    with torch.inference_mode():
        parts = [head(torch.from_numpy(np.asarray(features[i : i + batch_size], np.float32))).numpy() for i in range(0, len(features), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


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
    from sklearn.metrics import roc_auc_score

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


_STORED = ("center", "basis", "whiten", "class_means", "residual_scale")


def save_head(folder: str | Path, head: MahalanobisHead) -> Path:
    """Write the head's statistics to ``folder/ood.safetensors`` (atomically)."""
    from safetensors.numpy import save

    from bloodcell.core.files import atomic_write_bytes

    tensors = {k: np.ascontiguousarray(head.state_dict()[k].cpu().numpy()) for k in _STORED}
    path = Path(folder) / FILE
    atomic_write_bytes(path, save(tensors))
    return path


def load_head(folder: str | Path) -> MahalanobisHead | None:
    """The head stored in a model folder, or ``None`` when the folder has none."""
    from safetensors.numpy import load_file

    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
        return MahalanobisHead(*(torch.from_numpy(t[k]) for k in _STORED))
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ModelError(f"{path}: corrupt out-of-distribution statistics ({e}). Re-run `bloodcell export --format default`.") from None


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
) -> tuple[MahalanobisHead, dict]:
    """Fit the score on training images and measure its threshold.

    Parameters
    ----------
    loaded : LoadedModel
        The model whose features are scored.
    train_images, train_labels : ndarray
        Prepared ``uint8`` training images ``(N, S, S, 3)`` and their class indices.
    heldout_images : ndarray
        Prepared real cells not used for fitting: half choose the threshold
        with half of the non-cell images, the other halves measure it.
    per_kind : int
        Generated non-cell images per kind (see :data:`bloodcell.ood.noncell.KINDS`).
    max_false_flag : float
        Largest share of held-out real cells the threshold may flag.

    Returns
    -------
    head : MahalanobisHead
    info : dict
        For ``model.json["ood"]``: method, threshold, sizes and the evaluation
        on the reporting halves.
    """
    from bloodcell.ood import noncell

    if len(heldout_images) < 10:
        raise ModelError(f"Measuring the out-of-distribution threshold needs at least 10 held-out real cells; got {len(heldout_images)}.")
    train_feats = extract_features(loaded, train_images, batch_size, progress)
    head = fit_head(train_feats, train_labels, dims)
    cells = head_scores(head, extract_features(loaded, heldout_images, batch_size, progress))
    others, kinds = noncell.non_cell_images(per_kind, size=loaded.preprocess.image_size, seed=seed)
    other_scores = head_scores(head, extract_features(loaded, others, batch_size, progress))
    rng = np.random.default_rng(seed)
    cell_perm = rng.permutation(len(cells))
    choose_c, report_c = cell_perm[: len(cells) // 2], cell_perm[len(cells) // 2 :]
    kinds_arr = np.asarray(kinds)
    choose_o, report_o = [], []
    for kind in dict.fromkeys(kinds):
        idx = rng.permutation(np.flatnonzero(kinds_arr == kind))
        choose_o += list(idx[: len(idx) // 2])
        report_o += list(idx[len(idx) // 2 :])
    threshold = choose_threshold(cells[choose_c], other_scores[choose_o], max_false_flag)
    evaluation = evaluate_threshold(threshold, cells[report_c], other_scores[report_o], [kinds[i] for i in report_o])
    info = {
        "method": METHOD,
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
