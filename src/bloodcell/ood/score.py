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

The packaged default model uses a second kind of head instead (``CELL_CHECK``,
:class:`CellCheckHead`): a logistic regression on the same penultimate features that
tells cells from non-cells, fitted on training cells (and copies of them under
augmentation that imitates other labs' colour, stain, scale and optics) against
generated non-cell images of other draws than those that choose the threshold. Its
score is the probability that the image is not a cell, so a cell that only looks
unlike PBC is not flagged for that alone, where a distance to PBC's feature
statistics flags most of other labs' cells.

A packaged model also carries the distance score as a familiarity check
(``familiar.safetensors``, ``model.json["familiarity"]``): a cell whose features lie
farther from the training cells' than those of all but 1% of held-out PBC cells is
called uncertain and marked ``unfamiliar``, whatever its top probability, so a cell
unlike the training data is referred to a person rather than labelled with confidence.

The statistics live in the model folder (``ood.safetensors``, and the
threshold and its evaluation in ``model.json["ood"]``). The scoring head is an
``nn.Module``, so the same computation is exported into the ONNX graph as a
second output, ``ood_score`` (and the familiarity score as a third, ``familiarity``).
This module scores; :mod:`bloodcell.ood.fit` fits the statistics and chooses the threshold.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from torch import nn
from tqdm import tqdm

from bloodcell.core.errors import ModelError
from bloodcell.core.model_folder import FAMILIAR
from bloodcell.core.model_folder import OOD as FILE
from bloodcell.networks.batches import tensor_batches

METHOD = "mahalanobis-penultimate"
CELL_CHECK = "logistic-cell-vs-non-cell-penultimate"


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
    """A classifier whose forward returns ``(logits, penultimate features)``.

    Its final layers are wrapped in a copy of the classifier's module structure that shares
    every weight and buffer with the classifier, so the network is held once in memory and the
    classifier itself is left as it was.
    """

    def __init__(self, module: nn.Module, num_classes: int):
        super().__init__()
        shared = {id(t): t for t in (*module.parameters(), *module.buffers())}
        self.model = copy.deepcopy(module, memo=shared).eval()
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


class CellCheckHead(nn.Module):
    """Score penultimate features by the probability that the image is not a cell (0 to 1):
    ``sigmoid(features @ weight + bias)``, a logistic regression with its standardisation folded in."""

    def __init__(self, weight, bias):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight).float().reshape(-1).contiguous())
        self.register_buffer("bias", torch.as_tensor(bias).float().reshape(()))

    @property
    def dims(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(features @ self.weight + self.bias)


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
    """``(logits, ood_score)`` from a classifier and its fitted head; with a ``familiar`` head (a
    :class:`MahalanobisHead`), ``(logits, scores)`` with ``scores`` ``(N, 2)``: the head's score and the
    familiarity score, or, with ``split``, ``(logits, ood_score, familiarity)`` (the ONNX graph's outputs)."""

    def __init__(self, module: nn.Module, num_classes: int, head: nn.Module, familiar: MahalanobisHead | None = None,
                 split: bool = False):
        super().__init__()
        self.features = FeatureModel(module, num_classes)
        self.head = head
        self.familiar = familiar
        self.split = split

    def forward(self, x: torch.Tensor):
        logits, feats = self.features(x)
        score = self.head(feats)
        if self.familiar is None:
            return logits, score
        familiarity = self.familiar(feats)
        return (logits, score, familiarity) if self.split else (logits, torch.stack([score, familiarity], 1))


def extract_features(loaded, images: np.ndarray, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Penultimate features ``(N, F)`` of prepared ``uint8`` images."""
    return features_and_logits(loaded, images, batch_size, progress)[0]


@torch.inference_mode()
def features_and_logits(loaded, images: np.ndarray, batch_size: int = 64, progress: bool = False,
                        model: FeatureModel | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features ``(N, F)`` and logits ``(N, C)`` of prepared ``uint8`` images, from one forward
    pass (``model``: a :class:`FeatureModel` of ``loaded`` to reuse across calls)."""
    model = model or FeatureModel(loaded.module, len(loaded.class_names))
    device = next(loaded.module.parameters()).device
    feats, logits = [], []
    starts = range(0, len(images), batch_size)
    if progress:
        starts = tqdm(starts, desc="features", unit="batch", leave=False)
    for _, x in zip(starts, tensor_batches(images, loaded.preprocess, batch_size, device)):
        out = model(x)
        logits.append(out[0].float().cpu().numpy())
        feats.append(out[1].float().cpu().numpy())
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, len(loaded.class_names)), np.float32)
    return np.concatenate(feats), np.concatenate(logits)


def head_scores(head: MahalanobisHead, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Scores ``(N,)`` of penultimate features ``(N, F)``, in batches."""
    with torch.inference_mode():
        parts = [head(torch.from_numpy(np.asarray(features[i : i + batch_size], np.float32))).numpy()
                 for i in range(0, len(features), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


#: The head's buffers stored in ``ood.safetensors``, in :class:`MahalanobisHead` argument order.
STORED = ("center", "basis", "whiten", "class_means", "residual_scale")
#: The same for :class:`CellCheckHead`.
CELL_CHECK_STORED = ("weight", "bias")


def stored_names(head: nn.Module) -> tuple[str, ...]:
    """The buffers of ``head`` that ``ood.safetensors`` stores."""
    return CELL_CHECK_STORED if isinstance(head, CellCheckHead) else STORED


def load_familiar(folder: str | Path) -> MahalanobisHead | None:
    """The familiarity head stored in a model folder (``familiar.safetensors``), or ``None``."""
    return load_head(folder, FAMILIAR)


def load_head(folder: str | Path, file: str = FILE) -> MahalanobisHead | CellCheckHead | None:
    """The head stored in a model folder, or ``None`` when the folder has none."""
    path = Path(folder) / file
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
        if set(t) == set(CELL_CHECK_STORED):
            return CellCheckHead(*(torch.from_numpy(t[k]) for k in CELL_CHECK_STORED))
        return MahalanobisHead(*(torch.from_numpy(t[k]) for k in STORED))
    except Exception as e:  # noqa: BLE001 - any decoding failure is the file's fault
        raise ModelError(
            f"{path}: corrupt out-of-distribution statistics ({e}). Re-run `bloodcell export --format default`."
        ) from None
