"""The soft-voting module of an ensemble folder (:mod:`bloodcell.networks.ensemble` writes them).

How members with different inputs are combined
----------------------------------------------
Members must predict the same set of classes (their order may differ; outputs
are reordered by class name) and use the same crop fraction. Their input size
and normalization may differ:

* the ensemble's preprocessing uses the **largest** member input size, the
  shared crop, and the mean/std of the first member with that size, so images
  are prepared once, at the finest resolution any member needs;
* inside ``forward`` each member's input is derived from the ensemble's: it is
  un-normalized with the ensemble's mean/std, re-normalized with the member's,
  and, if the member is smaller, resized with antialiased bilinear
  interpolation (exactly ``F.interpolate(..., mode="bilinear",
  antialias=True)``, written as two matrix products so that it exports to ONNX,
  where the antialiased resize operator has no TorchScript export).

The output is the log of the weighted mean of the members' softmax
probabilities, each member's calibration temperature (if it has one) applied
to its logits first. Softmax of the output is therefore the ensemble
probability, and the ensemble can be calibrated again as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as F
from torch import nn

from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.model_folder import META
from bloodcell.core.preprocess import PreprocessConfig


def resize_matrix(src: int, dst: int) -> torch.Tensor:
    """The ``(dst, src)`` matrix ``A`` with ``A @ x @ A.T`` equal to antialiased bilinear resizing.

    PyTorch's antialiased bilinear resize is separable and linear, so resizing
    a square image ``x`` of side ``src`` to ``dst`` is ``A @ x @ A.T``. The
    matrix is read off by resizing the unit impulses.
    """
    eye = torch.eye(src, dtype=torch.float64).view(src, 1, 1, src)
    cols = F.interpolate(eye, size=(1, dst), mode="bilinear", antialias=True, align_corners=False)
    return cols.view(src, dst).t().contiguous().float()


class _Member(nn.Module):
    """One member with the input adaptation and output reordering it needs."""

    def __init__(
        self,
        module: nn.Module,
        member: PreprocessConfig,
        ensemble: PreprocessConfig,
        temperature: float,
        log_weight: float,
    ):
        super().__init__()
        self.model = module
        self.temperature = float(temperature)
        self.log_weight = float(log_weight)
        e_mean, e_std = torch.tensor(ensemble.mean), torch.tensor(ensemble.std)
        m_mean, m_std = torch.tensor(member.mean), torch.tensor(member.std)
        # x_member = (x * e_std + e_mean - m_mean) / m_std
        same = torch.equal(e_mean, m_mean) and torch.equal(e_std, m_std)
        self.renormalize = member.normalization == "dataset" and not same  # image-normalized inputs need no change
        self.register_buffer("scale", (e_std / m_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((e_mean - m_mean) / m_std).view(1, 3, 1, 1), persistent=False)
        self.resize = member.image_size != ensemble.image_size
        matrix = resize_matrix(ensemble.image_size, member.image_size) if self.resize else torch.ones(1, 1)
        self.register_buffer("matrix", matrix, persistent=False)
        order = [member.class_names.index(name) for name in ensemble.class_names]
        self.reorder = order != list(range(len(order)))
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalize:
            x = x * self.scale + self.shift
        if self.resize:
            x = torch.matmul(torch.matmul(self.matrix, x), self.matrix.t())
        logits = self.model(x)
        if self.reorder:
            logits = logits.index_select(1, self.order)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.log_softmax(logits.float(), dim=1) + self.log_weight


class EnsembleModule(nn.Module):
    """Soft voting: ``log(sum_i w_i * softmax(member_i(x) / T_i))``."""

    def __init__(self, members: list[_Member]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(torch.stack([m(x) for m in self.members]), dim=0)


def normalize_weights(weights, n: int, what: str = "Ensemble weights") -> list[float]:
    """Check ensemble weights (one positive finite number per member) and scale them to sum 1;
    ``what`` names them in the error.

    Raises
    ------
    ConfigError
        When the count is wrong or a weight is not a positive finite number.
    """
    if weights is None:
        return [1.0 / n] * n
    example = " ".join(["1"] * (n - 1) + ["2"])
    fix = f"Fix: pass {n} positive numbers in member order, e.g. --weights {example}; they are scaled to sum 1."
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be numbers; got {weights!r}. {fix}") from None
    if len(values) != n:
        raise ConfigError(f"{what}: expected {n} (one per member), got {len(values)}: {values}. {fix}")
    bad = [w for w in values if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ConfigError(f"{what} must be positive finite numbers; got {values} (bad: {bad}). {fix}")
    total = sum(values)
    return [w / total for w in values]


def check_compatible(name: str, member: PreprocessConfig, reference: PreprocessConfig, reference_name: str) -> None:
    """Refuse a member whose classes, crop or framing differ from the reference's, naming both and the difference."""
    mine, theirs = set(member.class_names), set(reference.class_names)
    if mine != theirs or len(member.class_names) != len(reference.class_names):
        parts = []
        if theirs - mine:
            parts.append(f"lacks {sorted(theirs - mine)}")
        if mine - theirs:
            parts.append(f"adds {sorted(mine - theirs)}")
        if not parts:
            parts.append(f"lists {list(member.class_names)}")
        raise ModelError(
            f"Ensemble member {name} predicts classes {list(member.class_names)}, which "
            f"{' and '.join(parts)} compared with {reference_name} ({list(reference.class_names)}). "
            "All members must predict the same classes; ensemble models trained on the same class set."
        )
    if not math.isclose(member.crop_fraction, reference.crop_fraction, abs_tol=1e-6):
        raise ModelError(
            f"Ensemble member {name} crops {member.crop_fraction:g} of the shorter side, but "
            f"{reference_name} crops {reference.crop_fraction:g}. All members must use the same "
            "crop_fraction (the ensemble prepares each image once); retrain one of them with the other's crop."
        )
    if (member.framing, member.cell_share) != (reference.framing, reference.cell_share):
        raise ModelError(
            f"Ensemble member {name} frames images by {member.framing!r} (cell share {member.cell_share}), but "
            f"{reference_name} by {reference.framing!r} (cell share {reference.cell_share}). All members must frame "
            "images the same way (the ensemble prepares each image once); retrain one of them with the other's framing."
        )
    if member.normalization != reference.normalization:
        raise ModelError(
            f"Ensemble member {name} normalizes pixels by {member.normalization!r}, but {reference_name} by "
            f"{reference.normalization!r}. All members must normalize the same way (the ensemble normalizes "
            "each image once); retrain one of them with the other's normalization."
        )


def ensemble_preprocess(configs: list[PreprocessConfig]) -> PreprocessConfig:
    """The shared preprocessing: largest input size, the shared crop, first member's class order.

    Mean and std come from the first member with the largest input size, so
    that member sees its inputs unchanged.
    """
    size = max(c.image_size for c in configs)
    first_large = next(c for c in configs if c.image_size == size)
    return PreprocessConfig(
        image_size=size,
        crop_fraction=configs[0].crop_fraction,
        framing=configs[0].framing,
        cell_share=configs[0].cell_share,
        normalization=configs[0].normalization,
        mean=first_large.mean,
        std=first_large.std,
        class_names=configs[0].class_names,
    )


def member_dir(folder: Path, name) -> Path:
    path = PurePosixPath(name) if isinstance(name, str) else None
    if path is None or not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ModelError(
            f"{folder / META}: ensemble member {name!r} is not a sub-folder name; an ensemble lists "
            "its members as sub-folders such as 'member_0'. Rebuild it with `bloodcell ensemble`."
        )
    return folder / name


def build_ensemble_module(folder: str | Path, meta: dict, device: str | torch.device, load: Callable) -> nn.Module:
    """Build the soft-voting module of the ensemble stored in ``folder`` (its ``model.json`` is ``meta``).

    Parameters
    ----------
    folder : str or Path
        The ensemble folder holding ``model.json`` and the member sub-folders.
    meta : dict
        Its parsed ``model.json``.
    device : str or torch.device
        Where the members are loaded.
    load : callable
        ``load(path, device) -> LoadedModel`` for one member folder
        (:func:`bloodcell.networks.loading.load_model`, which calls this for ensembles).

    Returns
    -------
    nn.Module
        Maps an input prepared with the ensemble's preprocessing to the log of
        the weighted mean of member probabilities.

    Raises
    ------
    ModelError
        When the ensemble metadata is malformed, a member folder is missing or
        unreadable, or a member's classes or crop differ from the ensemble's.
    """
    folder = Path(folder)
    spec = meta.get("ensemble")
    members = spec.get("members") if isinstance(spec, dict) else None
    if not isinstance(members, list) or not members:
        raise ModelError(
            f"{folder / META}: the 'ensemble' entry must list member sub-folders, got {spec!r}. "
            "Rebuild the ensemble with `bloodcell ensemble`."
        )
    try:
        weights = normalize_weights(spec.get("weights"), len(members))
    except ConfigError as e:
        raise ModelError(f"{folder / META}: {e}") from None
    reference = PreprocessConfig.from_dict(meta["preprocess"])
    parts = []
    for name, weight in zip(members, weights):
        path = member_dir(folder, name)
        if not path.is_dir() or not (path / META).is_file():
            raise ModelError(
                f"{folder}: ensemble member {name!r} is missing (expected the model folder {path} with "
                f"{META}). An ensemble folder holds a copy of every member: move or copy the whole "
                "folder, or rebuild it with `bloodcell ensemble`."
            )
        loaded = load(path, device)
        check_compatible(f"{name!r} ({path})", loaded.preprocess, reference, f"the ensemble {folder}")
        parts.append(_Member(loaded.module, loaded.preprocess, reference, loaded.temperature, math.log(weight)))
    return EnsembleModule(parts).to(device)
