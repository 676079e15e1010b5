"""Train one model on in-memory ``uint8`` arrays: the epoch loop and everything around it.

:func:`fit` is the core the ``bloodcell train`` command calls after loading
the data; it takes plain arrays so it can be driven directly from Python and
tested on generated images. Per epoch it trains, validates, and then (rank 0
only) writes a resumable checkpoint, the model folder with the best weights
so far, the history as CSV and JSON, and the curves plot.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json
from bloodcell.core.model_folder import META
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import create_model, get_entry, save_model
from bloodcell.training import distributed
from bloodcell.training.augment import BatchAugment
from bloodcell.training.config import TrainConfig, save_config
from bloodcell.training.device import Runtime, resolve_channels_last, resolve_device, resolve_precision, resolve_threads
from bloodcell.training.loop import (
    EpochContext,
    NonFiniteLoss,
    Normalizer,
    epoch_batches,
    evaluate,
    make_criterion,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)
from bloodcell.training.plots import plot_curves
from bloodcell.training.state import has_checkpoint, read_checkpoint, write_checkpoint
from bloodcell.training.warmstart import InitSource, apply_init, open_init

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds")
PLOT_EVERY_EPOCH_AFTER = 5.0  # seconds
#: Keys that may differ when resuming: they change how long or where the run goes, not what it computes.
RESUME_MAY_CHANGE = ("epochs", "patience", "min_delta", "device", "threads", "eval_batch_size", "data")


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C or SIGTERM; the message says what was kept."""


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


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict]
    metrics: dict
    best_epoch: int
    stopped: str


# ---------------------------------------------------------------- preparation


def make_preprocess(cfg: TrainConfig, class_names, init: InitSource | None = None,
                    image_size_explicit: bool = False) -> PreprocessConfig:
    """The preprocessing of the model to train: the architecture's (or the init model's) plus the config's size."""
    if init is not None:
        base = dict(init.meta["preprocess"])
        if image_size_explicit and cfg.image_size:
            base["image_size"] = cfg.image_size
        base["class_names"] = tuple(class_names)
        return PreprocessConfig.from_dict(base)
    entry = get_entry(cfg.model)
    return PreprocessConfig(image_size=cfg.image_size or entry.default_size, crop_fraction=cfg.crop_fraction,
                            mean=entry.mean, std=entry.std, class_names=tuple(class_names))


def check_data(data: TrainData, pre: PreprocessConfig) -> None:
    """Refuse arrays of the wrong kind and splits that miss a class."""
    names = tuple(data.class_names)
    if names != pre.class_names:
        raise DataError(f"Data classes {list(names)} differ from the model's {list(pre.class_names)}.")
    if len(names) < 2:
        raise DataError(f"Training needs at least 2 classes; the data has {list(names)}.")
    for split, images, labels in (("training", data.train_images, data.train_labels),
                                  ("validation", data.val_images, data.val_labels)):
        s = pre.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise DataError(f"The {split} images must be uint8 (N, {s}, {s}, 3); got {images.dtype} {images.shape}.")
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


def _existing_run(run_dir: Path) -> bool:
    return (run_dir / META).exists() or has_checkpoint(run_dir)


def _resolve(cfg: TrainConfig, pre: PreprocessConfig, model: nn.Module, info: distributed.DistInfo):
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, model)
    channels_last = resolve_channels_last(cfg.channels_last, device)
    threads = resolve_threads(cfg.threads, info.local_world)
    resolved = dataclasses.replace(
        cfg, image_size=pre.image_size, crop_fraction=pre.crop_fraction, precision=precision,
        channels_last="on" if channels_last else "off", threads=threads, device=str(device),
    )
    return resolved, Runtime(device, precision, channels_last)


def _check_resume(ckpt, cfg: TrainConfig, data: TrainData, run_dir: Path) -> TrainConfig:
    saved_meta = ckpt.meta
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
    saved_cfg = saved_meta.get("config", {})
    changed = []
    for key, new in cfg.to_dict().items():
        old = saved_cfg.get(key)
        if key in RESUME_MAY_CHANGE:
            continue
        if old != new:
            changed.append(f"{key}: {old!r} -> {new!r}")
    if cfg.schedule == "onecycle" and saved_cfg.get("epochs") != cfg.epochs:
        changed.append(f"epochs: {saved_cfg.get('epochs')!r} -> {cfg.epochs!r} (a one-cycle schedule cannot be stretched)")
    if changed:
        raise ConfigError(
            f"{run_dir}: resuming with different settings would not continue the same run ({'; '.join(changed)}). "
            f"Resume with the original settings (only {', '.join(RESUME_MAY_CHANGE)} may change), "
            "or train into a new --out folder."
        )
    return cfg


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C and SIGTERM while files are written; act on them right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    sigs = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            raise KeyboardInterrupt


class _Weights:
    """Adapter so :func:`save_model` can write a state dict held in memory."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _cpu_state(model: nn.Module) -> dict:
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if monitor == "val_loss" else value > best + min_delta


def _write_history(run_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run_dir / "history.csv", buf.getvalue().encode())
    atomic_write_json(run_dir / "history.json", history)


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _mark_stopped(run_dir: Path, stopped: str) -> None:
    path = run_dir / META
    try:
        import json

        meta = json.loads(path.read_text())
        meta.setdefault("training", {})["stopped"] = stopped
        atomic_write_json(path, meta)
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------- the run


def fit(cfg: TrainConfig, data: TrainData, run_dir: str | Path, *, pre: PreprocessConfig | None = None,
        init: InitSource | None = None, resume: bool = False, progress: bool = True,
        log=None) -> FitResult:
    """Train ``cfg.model`` on ``data``, writing a model folder and a resumable checkpoint to ``run_dir``.

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration ("auto" values are resolved and saved).
    data : TrainData
        ``uint8`` NHWC training and validation arrays and the class names.
    run_dir : path
        Output folder: ``model.json`` + ``model.safetensors`` (best epoch),
        ``config.yaml``, ``history.csv``/``.json``, ``curves.png`` and
        ``checkpoint/``.
    pre : PreprocessConfig, optional
        The model's preprocessing; by default the architecture's, at ``cfg.image_size``.
    init : InitSource, optional
        A trained model to start from (see :mod:`bloodcell.training.warmstart`).
    resume : bool
        Continue from the checkpoint in ``run_dir`` (starts fresh if there is none yet).
    progress : bool
        Show progress bars and per-epoch lines on stderr.

    Raises
    ------
    ConfigError
        On invalid settings, or when the loss becomes NaN (the last good checkpoint is kept).
    DataError, ModelError
        On unusable data, or a checkpoint that does not match the run.
    TrainingInterrupted
        On Ctrl-C/SIGTERM, after making sure the last complete epoch is saved.
    """
    run_dir = Path(run_dir)
    info = distributed.current()
    say = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if not info.is_main:
        progress, say = False, (lambda msg: None)
    if cfg.init and cfg.pretrained:
        raise ConfigError("init and pretrained both set: start from an existing model (init) or from ImageNet "
                          "weights (pretrained), not both.")
    if init is None and cfg.init and not (resume and has_checkpoint(run_dir)):
        init = open_init(cfg.init)
    if init is not None and cfg.model != init.architecture:
        raise ConfigError(f"model is {cfg.model!r} but the init model {init.folder} is a {init.architecture!r}; "
                          "training from an init model keeps its architecture. Drop the model setting.")
    pre = pre or make_preprocess(cfg, data.class_names, init)
    check_data(data, pre)

    ckpt = None
    if resume and has_checkpoint(run_dir):
        ckpt = read_checkpoint(run_dir)
    elif resume and info.is_main:
        say(f"{run_dir}: no checkpoint yet, starting from the beginning.")
    elif _existing_run(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a training run. Continue it with --resume, or choose a new --out folder."
        )

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    try:
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=len(data.class_names),
                             pretrained=cfg.pretrained if ckpt is None else False)
        init_summary = apply_init(model, init, tuple(data.class_names)) if (init is not None and ckpt is None) else None
        if init_summary is not None:
            new = f"; new classes {', '.join(init_summary['new_classes'])}" if init_summary["new_classes"] else ""
            say(f"Starting from {init_summary['from']} ({init_summary['architecture']}){new}.")
        cfg, rt = _resolve(cfg, pre, model, info)
        if ckpt is not None:
            cfg = _check_resume(ckpt, cfg, data, run_dir)
        torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        return _run(cfg, data, pre, run_dir, model, rt, info, ckpt, init_summary, progress, say)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _run(cfg, data, pre, run_dir, model, rt, info, ckpt, init_summary, progress, say) -> FitResult:
    n_classes = len(data.class_names)
    if ckpt is not None:
        model.load_state_dict(ckpt.weights)
    model.to(rt.device)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if info.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )

    train_images = torch.from_numpy(np.ascontiguousarray(data.train_images))
    train_labels = torch.as_tensor(np.asarray(data.train_labels), dtype=torch.int64)
    val_images = torch.from_numpy(np.ascontiguousarray(data.val_images))
    val_labels = torch.as_tensor(np.asarray(data.val_labels), dtype=torch.int64)
    steps = len(epoch_batches(len(train_labels), cfg.batch_size, 1, cfg.seed, info.rank, info.world))

    optimizer = make_optimizer(cfg, net)
    scheduler = make_scheduler(cfg, optimizer, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
    history: list[dict] = []
    best = {"epoch": 0, "value": None, "since": 0}
    best_weights = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        if ckpt.state.get("scaler"):
            scaler.load_state_dict(ckpt.state["scaler"])
        history = [dict(h) for h in ckpt.meta["history"]]
        best = dict(ckpt.state["best"])
        best_weights = {k: v.clone() for k, v in ckpt.best_weights.items()}
        say(f"Resuming {run_dir} after epoch {ckpt.epoch} (best so far: epoch {best['epoch']}).")

    ctx = EpochContext(net, optimizer, scheduler, make_criterion(cfg, data.train_labels, n_classes, rt.device),
                       BatchAugment(cfg.augment), Normalizer(pre, rt.device), rt, scaler, cfg.grad_clip,
                       cfg.seed, info.rank, info.world)
    meta_base = {
        "architecture": cfg.model,
        "model_kwargs": {},
        "preprocess": pre.to_dict(),
        "config": cfg.to_dict(),
        "data_manifest_sha256": data.manifest_sha256,
        "data": data.info,
        "init": init_summary if ckpt is None else ckpt.meta.get("init"),
    }
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir)
        say(f"Training {cfg.model} on {len(train_labels)} images ({len(val_labels)} validation), "
            f"{n_classes} classes, {pre.image_size} px, {rt.device} {rt.precision}"
            f"{' channels-last' if rt.channels_last else ''}, {cfg.threads} thread(s)"
            f"{f', {info.world} processes' if info.active else ''} -> {run_dir}")

    def meta_now(stopped: str) -> dict:
        b = next((h for h in history if h["epoch"] == best["epoch"]), None)
        metrics = {k: b[k] for k in ("val_loss", "val_acc", "val_macro_f1")} if b else {}
        if b:
            metrics.update(best_epoch=best["epoch"], monitor=cfg.monitor)
        return {**meta_base, "history": history, "metrics": metrics, "training": {
            "stopped": stopped, "epochs_run": len(history), "best_epoch": best["epoch"],
            "world_size": info.world, "device": str(rt.device), "precision": rt.precision,
            "channels_last": rt.channels_last, "threads": cfg.threads, "torch": torch.__version__,
            "python": platform.python_version(),
        }}

    def write_outputs(stopped: str, epoch: int | None) -> None:
        meta = meta_now(stopped)
        with deferred_interrupts():
            if epoch is not None:
                last = _cpu_state(net)
                write_checkpoint(run_dir, epoch, last, None if best["epoch"] == epoch else best_weights, meta, {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None, "best": dict(best),
                })
            if best_weights is not None:
                save_model(run_dir, _Weights(best_weights), meta)
            _write_history(run_dir, history)
        # Plot every epoch when epochs are long enough for the plot not to matter, and at the end.
        if history and (epoch is None or history[-1]["seconds"] >= PLOT_EVERY_EPOCH_AFTER):
            plot()

    def plot() -> None:
        plot_curves(history, run_dir / "curves.png", best_epoch=best["epoch"],
                    title=f"{cfg.model}, {pre.image_size} px, {len(train_labels)} training images")

    stopped = "completed"
    start = len(history) + 1
    epoch = start
    times: list[float] = []
    try:
        for epoch in range(start, cfg.epochs + 1):
            if cfg.patience and best["since"] >= cfg.patience:
                break
            t0 = time.perf_counter()
            batches = epoch_batches(len(train_labels), cfg.batch_size, epoch, cfg.seed, info.rank, info.world)
            row = train_one_epoch(ctx, train_images, train_labels, batches, epoch, progress,
                                  desc=f"epoch {epoch}/{cfg.epochs}")
            row.update(evaluate(net, val_images, val_labels, ctx.normalizer, rt, cfg.eval_batch_size, n_classes,
                                info.rank, info.world))
            row = {"epoch": epoch, **{k: float(row[k]) for k in HISTORY_KEYS[1:-1]},
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            value = row[cfg.monitor]
            is_best = _improved(value, best["value"], cfg.monitor, cfg.min_delta)
            if is_best:
                best.update(epoch=epoch, value=value, since=0)
                best_weights = _cpu_state(net)
            else:
                best["since"] += 1
            if info.is_main:
                write_outputs("running", epoch)
            times.append(time.perf_counter() - t0)
            eta = np.mean(times) * (cfg.epochs - epoch)
            say(f"epoch {epoch}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  "
                f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} macro-F1 {row['val_macro_f1']:.3f}  "
                f"lr {row['lr']:.2e}  {row['seconds']:.1f}s{'  *best' if is_best else ''}"
                + (f"  (at most {_fmt_eta(eta)} left)" if epoch < cfg.epochs else ""))
            distributed.barrier()
        if cfg.patience and best["since"] >= cfg.patience:
            stopped = "early_stopping"
            say(f"Early stopping: {cfg.monitor} has not improved for {cfg.patience} epochs "
                f"(best: epoch {best['epoch']}).")
    except NonFiniteLoss as e:
        if info.is_main and history:
            _mark_stopped(run_dir, "diverged")
            plot()
        kept = (f"the last good checkpoint (epoch {len(history)}) is kept in {run_dir}"
                if history else "no epoch had completed, so no checkpoint was written")
        raise ConfigError(
            f"Training stopped: the loss became {e.value} at epoch {e.epoch}, step {e.step}; {kept}. "
            f"Fix: lower the learning rate (lr is {cfg.lr:g}), set grad_clip (e.g. --grad-clip 1.0), "
            "or use --precision fp32; then start again (or --resume from the kept epoch)."
        ) from None
    except KeyboardInterrupt:
        if info.is_main and history:
            with deferred_interrupts():
                _mark_stopped(run_dir, "interrupted")
                plot()
        kept = (f"epochs 1-{len(history)} are saved in {run_dir}" if history
                else "no epoch had completed, so nothing was saved")
        raise TrainingInterrupted(
            f"Interrupted during epoch {epoch}; {kept}. Continue with: bloodcell train --resume {run_dir}"
        ) from None

    if info.is_main and best_weights is not None:
        write_outputs(stopped, None)
    result = meta_now(stopped)
    return FitResult(run_dir, history, result["metrics"], best["epoch"], stopped)

