"""Everything decided before the first epoch: the data's shape, the preprocessing, the runtime, resume checks."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.model_folder import META
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import create_model, get_entry
from bloodcell.networks.devices import resolve_device
from bloodcell.training import distributed
from bloodcell.training.config import TrainConfig
from bloodcell.training.device import Runtime, resolve_channels_last, resolve_precision, resolve_threads
from bloodcell.training.state import has_checkpoint
from bloodcell.training.warmstart import InitSource

#: Keys that may differ when resuming: they change how long or where the run goes, not what it computes.
RESUME_MAY_CHANGE = ("epochs", "patience", "min_delta", "device", "threads", "eval_batch_size", "data")
#: Largest input side the smallest-size search tries (the config's own upper bound).
LARGEST_SIZE = 2048


@dataclass
class TrainData:
    """Training and validation images (``uint8`` NHWC) with integer labels into ``class_names``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: tuple[str, ...]
    info: dict = field(default_factory=dict)
    manifest_sha256: str | None = None


def make_preprocess(cfg: TrainConfig, class_names, init: InitSource | None = None,
                    explicit: frozenset[str] | set[str] = frozenset()) -> PreprocessConfig:
    """The preprocessing of the model to train: the architecture's (or the init model's) plus the config's.

    Starting from a model (``init``), its preprocessing is kept except for the
    keys the config sets explicitly (``explicit``: input size, crop,
    normalization), so a model can be fine-tuned on a wider field or with
    another pixel scaling.
    """
    if init is not None:
        base = dict(init.meta["preprocess"])
        if "image_size" in explicit and cfg.image_size:
            base["image_size"] = cfg.image_size
        for key in ("crop_fraction", "normalization"):
            if key in explicit:
                base[key] = getattr(cfg, key)
        base["class_names"] = tuple(class_names)
        return PreprocessConfig.from_dict(base)
    entry = get_entry(cfg.model)
    return PreprocessConfig(image_size=cfg.image_size or entry.default_size, crop_fraction=cfg.crop_fraction,
                            mean=entry.mean, std=entry.std, normalization=cfg.normalization,
                            class_names=tuple(class_names))


@functools.lru_cache(maxsize=64)
def _accepts(architecture: str, size: int) -> bool:
    """Whether ``architecture`` runs on a ``size`` px input: a forward pass on the meta device (shapes only).

    An architecture that cannot be built on the meta device is not judged here
    (``True``): building it for real reports its own problems.
    """
    try:
        with torch.device("meta"):
            model = create_model(architecture, num_classes=2, pretrained=False)
    except Exception:  # noqa: BLE001 - any builder failure means "cannot tell", not "too small"
        return True
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    except RuntimeError:
        return False
    return True


def smallest_image_size(architecture: str, start: int = 1) -> int | None:
    """The smallest input side from ``start`` up that ``architecture`` accepts (``None`` when none does)."""
    if _accepts(architecture, start):
        return start
    lo, hi = start, start * 2
    while not _accepts(architecture, hi):
        if hi >= LARGEST_SIZE:
            return None
        lo, hi = hi, min(hi * 2, LARGEST_SIZE)
    while hi - lo > 1:  # lo fails, hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _accepts(architecture, mid) else (mid, hi)
    return hi


def check_image_size(architecture: str, size: int) -> None:
    """Refuse an input side too small for the architecture's downsampling, before any work."""
    if _accepts(architecture, size):
        return
    smallest = smallest_image_size(architecture, size)
    fix = f"use --image-size {smallest} or larger" if smallest else "choose another architecture"
    raise ConfigError(f"image_size {size} is too small for {architecture!r}: its layers shrink the image to nothing. "
                      f"The smallest size {architecture!r} accepts is {smallest}; {fix}.")


def _check_split(split: str, images, labels, names: tuple[str, ...], size: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise DataError(f"The {split} images must be uint8 (N, {size}, {size}, 3); got {images.dtype} {images.shape}.")
    if len(images) != len(labels):
        raise DataError(f"The {split} split has {len(images)} images but {len(labels)} labels.")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise DataError(f"The {split} labels must be in 0..{len(names) - 1}; got {labels.min()}..{labels.max()}.")
    counts = np.bincount(labels, minlength=len(names))
    missing = [names[i] for i in range(len(names)) if counts[i] == 0]
    if missing:
        raise DataError(
            f"The {split} split has no images of {', '.join(repr(m) for m in missing)} "
            f"(counts: {dict(zip(names, counts.tolist()))}). Every class needs images in both the training "
            "and the validation split: add images, or remove the class folder from the dataset."
        )


def check_data(data: TrainData, pre: PreprocessConfig) -> None:
    """Refuse arrays of the wrong kind and splits that miss a class."""
    names = tuple(data.class_names)
    if names != pre.class_names:
        raise DataError(f"Data classes {list(names)} differ from the model's {list(pre.class_names)}.")
    if len(names) < 2:
        raise DataError(f"Training needs at least 2 classes; the data has {list(names)}.")
    for split, images, labels in (("training", data.train_images, data.train_labels),
                                  ("validation", data.val_images, data.val_labels)):
        _check_split(split, images, labels, names, pre.image_size)


def existing_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a training run (a model or a checkpoint)."""
    return (Path(run_dir) / META).exists() or has_checkpoint(run_dir)


def resolve_runtime(cfg: TrainConfig, pre: PreprocessConfig, model: nn.Module, info: distributed.DistInfo):
    """The config with every "auto" decided, and the :class:`Runtime` it describes."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, model)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    threads = resolve_threads(cfg.threads, info.local_world)
    resolved = dataclasses.replace(
        cfg, image_size=pre.image_size, crop_fraction=pre.crop_fraction, precision=precision,
        channels_last="on" if channels_last else "off", threads=threads, device=str(device),
    )
    return resolved, Runtime(device, precision, channels_last)


def _check_same_model_and_data(saved_meta: dict, cfg: TrainConfig, data: TrainData, run_dir: Path) -> None:
    if saved_meta.get("architecture") != cfg.model:
        raise ModelError(
            f"{run_dir}: the checkpoint is a {saved_meta.get('architecture')!r} model but this run builds "
            f"{cfg.model!r}. Resume with the same model, or train into a new --out folder."
        )
    saved_classes = list(saved_meta["preprocess"]["class_names"])
    if saved_classes != list(data.class_names):
        raise ModelError(
            f"{run_dir}: the checkpoint was trained on classes {saved_classes} but the data has "
            f"{list(data.class_names)}. Resume with the same data, or train into a new --out folder."
        )
    saved_hash = saved_meta.get("data_manifest_sha256")
    if saved_hash and data.manifest_sha256 and saved_hash != data.manifest_sha256:
        raise DataError(
            f"{run_dir}: the training/validation images differ from those the run started with "
            "(data manifest hash changed). Resume with the same data and split, or start a new run."
        )


def check_resume(saved_meta: dict, cfg: TrainConfig, data: TrainData, run_dir: Path) -> None:
    """Refuse to resume a checkpoint with another model, other data or settings that change the computation."""
    _check_same_model_and_data(saved_meta, cfg, data, run_dir)
    saved_cfg = saved_meta.get("config", {})
    changed = [f"{key}: {saved_cfg.get(key)!r} -> {new!r}" for key, new in cfg.to_dict().items()
               if key not in RESUME_MAY_CHANGE and saved_cfg.get(key) != new]
    if cfg.schedule == "onecycle" and saved_cfg.get("epochs") != cfg.epochs:
        changed.append(f"epochs: {saved_cfg.get('epochs')!r} -> {cfg.epochs!r} (a one-cycle schedule cannot be stretched)")
    if changed:
        raise ConfigError(
            f"{run_dir}: resuming with different settings would not continue the same run ({'; '.join(changed)}). "
            f"Resume with the original settings (only {', '.join(RESUME_MAY_CHANGE)} may change), "
            "or train into a new --out folder."
        )
