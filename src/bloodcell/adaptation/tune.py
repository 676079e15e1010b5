"""Adapt one network to a lab's labelled cells.

Methods (``method``):

``prototype``
    the classifier rows of the lab's classes become the mean direction of their
    penultimate features (nearest class mean, as a linear layer); nothing is trained;
``linear``
    a new classifier for the lab's classes, started from the prototypes and
    trained on the frozen features of the eight rotations and mirror images of
    each cell (multinomial logistic regression);
``finetune``
    the same start, then the classifier and the network's last stages (see
    :mod:`bloodcell.adaptation.network`) are trained together on the eight
    views of each cell and of its jittered copies (``copies``, see
    :mod:`bloodcell.adaptation.jitter`). The frozen front runs once per view,
    so an epoch costs only the last stages.

Batch-norm statistics (``batch_norm``): ``keep`` leaves the training lab's; ``lab`` first
re-estimates every batch-norm layer's mean and variance on the eight views of the fitting cells
(AdaBN, Li et al. 2018), so a lab's colour and contrast no longer shift every activation, then
adapts as above on the re-normalised network.

Classes the lab's data lacks keep the model's rows (they are never trained),
with their biases lowered by the smallest amount that makes each fitting cell's
own class beat them by :data:`ABSENT_MARGIN` logits: the model can still name
them, but not for cells like the ones the lab labelled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bloodcell.adaptation.jitter import jittered_copies
from bloodcell.adaptation.network import dihedral_views, split_network
from bloodcell.core.errors import ConfigError
from bloodcell.core.preprocess import normalize
from bloodcell.networks.batch_norm import reestimate_batch_norm

METHODS = ("finetune", "linear", "prototype")
BATCH_NORM = ("keep", "lab")
#: Logits by which every fitting cell's class must beat each class absent from the data.
ABSENT_MARGIN = 1.0
#: Scale of the prototype rows: cosine similarity 1 gives this logit.
PROTOTYPE_SCALE = 20.0


@dataclass
class TuneSettings:
    """How one network is adapted (see the module docstring)."""

    method: str = "finetune"
    epochs: int = 5
    copies: int = 2
    lr: float = 3e-4
    head_lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    max_steps: int = 600
    batch_norm: str = "lab"
    crop_fraction: float | None = None
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"Adaptation method must be one of {list(METHODS)}, got {self.method!r}.")
        if self.batch_norm not in BATCH_NORM:
            raise ConfigError(f"Batch-norm statistics must be one of {list(BATCH_NORM)}, got {self.batch_norm!r}.")
        numbers = {"--epochs": self.epochs, "--copies": self.copies, "batch_size": self.batch_size,
                   "max_steps": self.max_steps}
        bad = [f"{k} {v!r}" for k, v in numbers.items() if not (isinstance(v, int) and v >= 1)]
        if bad:
            raise ConfigError(f"Adaptation: {', '.join(bad)}: must be a whole number of at least 1.")
        if not (self.lr > 0 and self.head_lr > 0 and math.isfinite(self.lr) and math.isfinite(self.head_lr)):
            raise ConfigError(f"Adaptation learning rates must be positive; got lr {self.lr!r}, head_lr {self.head_lr!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def _front_views(front: nn.Module, images: np.ndarray, preprocess, batch: int = 64) -> torch.Tensor:
    """Front outputs ``(8, N, ...)`` of the eight views of prepared ``uint8`` images (NHWC)."""
    parts = []
    for start in range(0, len(images), batch):
        x = normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + batch])), preprocess)
        parts.append(torch.stack([front(v.contiguous()) for v in dihedral_views(x)]))
    return torch.cat(parts, 1)


@torch.no_grad()
def _features(back: nn.Module, cached: torch.Tensor, batch: int = 256) -> torch.Tensor:
    flat = cached.reshape(-1, *cached.shape[2:])
    out = torch.cat([back(flat[i : i + batch]) for i in range(0, len(flat), batch)])
    return out.view(cached.shape[0], cached.shape[1], -1)


def _prototypes(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, present: list[int]) -> None:
    """Set the present classes' rows to their scaled mean feature direction (views averaged)."""
    f = feats.reshape(-1, feats.shape[-1])
    y = labels.repeat(feats.shape[0])
    unit = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    scale = PROTOTYPE_SCALE / float(f.norm(dim=1).mean().clamp_min(1e-12))
    with torch.no_grad():
        for c in present:
            mean = unit[y == c].mean(0)
            head.weight[c] = mean / mean.norm().clamp_min(1e-12) * scale
            head.bias[c] = 0.0


def _train(back, head, cached, labels, present, settings: TuneSettings, report) -> int:
    """Train ``head`` (and ``back`` for fine-tuning) on the cached views; returns the steps taken."""
    body = back.tuned_parameters() if settings.method == "finetune" else []
    inputs = cached if body else _features(back, cached)
    n = inputs.shape[0] * inputs.shape[1]
    flat = inputs.reshape(n, *inputs.shape[2:])
    y = labels.repeat(inputs.shape[0])
    steps_per_epoch = math.ceil(n / settings.batch_size)
    epochs = max(1, min(settings.epochs, settings.max_steps // steps_per_epoch))
    groups = [{"params": list(head.parameters()), "lr": settings.head_lr}]
    if body:
        groups.append({"params": body, "lr": settings.lr})
    opt = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                pct_start=0.15)
    # the loss sees only the present classes: smoothing over absent ones would push features towards them
    columns = torch.tensor(present)
    local = torch.full((head.out_features,), -1, dtype=torch.long)
    local[columns] = torch.arange(len(present))
    y = local[y]
    g = torch.Generator().manual_seed(settings.seed)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x = back(flat[idx]) if body else flat[idx]
            loss = F.cross_entropy(head(x)[:, columns], y[idx], label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        report((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.3f}")
    return total


@torch.no_grad()
def _lower_absent(back, head, cached: torch.Tensor, labels: torch.Tensor, present: list[int]) -> float:
    """Lower the absent classes' biases so each fitting cell's class beats them by :data:`ABSENT_MARGIN`."""
    absent = [c for c in range(head.out_features) if c not in present]
    if not absent:
        return 0.0
    logits = head(_features(back, cached[:1])[0])
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    gap = float((logits[:, absent].max(1).values - own).max()) + ABSENT_MARGIN
    shift = max(0.0, gap)
    head.bias[absent] -= shift
    return shift


def tune_network(net: nn.Module, preprocess, images: np.ndarray, labels: np.ndarray, settings: TuneSettings,
                 report=lambda fraction, message: None) -> dict:
    """Adapt ``net`` (in place) to prepared images and their class indices in the network's class space.

    Parameters
    ----------
    net : nn.Module
        One network (not an ensemble) returning logits over ``preprocess.class_names``.
    preprocess : PreprocessConfig
        Its preprocessing (for normalization).
    images : ndarray, uint8 (N, S, S, 3)
        Prepared fitting images.
    labels : ndarray of int (N,)
        Their classes, indices into the network's classes.
    settings : TuneSettings
    report : callable
        ``report(fraction, message)`` as training goes.

    Returns
    -------
    dict
        What was tuned, the epochs and steps, and the absent classes' bias shift.
    """
    settings.check()
    torch.manual_seed(settings.seed)
    net.to(memory_format=torch.channels_last)  # faster convolutions on CPU; saving stores plain tensors
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    renormalised = reestimate_batch_norm(net, images, preprocess) if settings.batch_norm == "lab" else 0
    front, back, head, where = split_network(net, len(preprocess.class_names))
    images, labels = jittered_copies(images, np.asarray(labels, np.int64), settings.copies, settings.seed)
    y = torch.from_numpy(labels)
    present = sorted(set(y.tolist()))
    report(0.0, f"computing the frozen part on 8 views of {len(images)} images ({settings.copies} per cell)")
    cached = _front_views(front, images, preprocess)
    _prototypes(head, _features(back, cached), y, present)
    steps = 0
    tuned = [*back.tuned_parameters(), *head.parameters()] if settings.method == "finetune" else [*head.parameters()]
    if settings.method != "prototype":
        for p in tuned:
            p.requires_grad_(True)
        steps = _train(back, head, cached, y, present, settings, report)
        for p in tuned:
            p.requires_grad_(False)
    shift = _lower_absent(back, head, cached, y, present)
    return {"tuned": where if settings.method == "finetune" else "the final linear layer", "steps": steps,
            "absent_bias_shift": round(shift, 4), "batch_norm_layers_reestimated": renormalised}
