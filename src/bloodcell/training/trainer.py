"""Train one model on in-memory ``uint8`` arrays: the epoch loop and everything around it.

:func:`fit` is the core the ``bloodcell train`` command calls after loading
the data; it takes plain arrays so it can be driven directly from Python and
tested on generated images. A :class:`Trainer` runs it in named steps: check
the inputs, build the model, set up the optimisation (restoring a checkpoint
when resuming), then per epoch train, validate, and (rank 0 only) write a
resumable checkpoint, the model folder with the best weights so far, the
history as CSV and JSON, and the curves plot.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bloodcell.core.errors import ConfigError
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import create_model, save_model
from bloodcell.training import distributed
from bloodcell.training.augment import BatchAugment
from bloodcell.training.config import TrainConfig, save_config
from bloodcell.training.data import measure_cell_share, write_split_csv
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
from bloodcell.training.outputs import (
    HISTORY_KEYS,
    SPLIT_FILE,
    HeldWeights,
    cpu_state,
    deferred_interrupts,
    fmt_eta,
    improved,
    mark_stopped,
    undone_on_failure,
    write_history,
)
from bloodcell.training.plots import plot_curves
from bloodcell.training.prepare import (
    TrainData,
    check_data,
    check_image_size,
    check_resume,
    existing_run,
    make_preprocess,
    resolve_runtime,
)
from bloodcell.training.state import has_checkpoint, read_checkpoint, write_checkpoint
from bloodcell.training.teacher import with_teacher
from bloodcell.training.warmstart import InitSource, apply_init, init_message, open_init

__all__ = ["FitResult", "TrainData", "Trainer", "TrainingInterrupted", "fit", "make_preprocess"]

PLOT_EVERY_EPOCH_AFTER = 5.0  # seconds


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C or SIGTERM; the message says what was kept."""


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict]
    metrics: dict
    best_epoch: int
    stopped: str


class Trainer:
    """One training run of ``cfg.model`` on ``data`` into ``run_dir`` (see :func:`fit` for the parameters)."""

    def __init__(self, cfg: TrainConfig, data: TrainData, run_dir: str | Path, *, pre: PreprocessConfig | None = None,
                 init: InitSource | None = None, resume: bool = False, progress: bool = True, log=None,
                 split_ids: dict | None = None, teacher_images=None):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.pre, self.init, self.resume, self.split_ids = pre, init, resume, split_ids
        self.teacher_images = teacher_images
        self.info = distributed.current()
        self.progress = progress and self.info.is_main
        self.say = (log or (lambda msg: tqdm.write(msg, file=sys.stderr))) if self.info.is_main else (lambda msg: None)
        self.ckpt = None
        self.init_summary = None
        self.history: list[dict] = []
        self.best = {"epoch": 0, "value": None, "since": 0}
        self.best_weights: dict | None = None
        self.times: list[float] = []
        self.epoch = 0

    # ------------------------------------------------------------ before training

    def check_inputs(self) -> None:
        """Refuse contradictory settings and unusable data; find the checkpoint to resume."""
        cfg, run_dir = self.cfg, self.run_dir
        if cfg.init and cfg.pretrained:
            raise ConfigError("init and pretrained both set: start from an existing model (init) or from ImageNet "
                              "weights (pretrained), not both.")
        if self.init is None and cfg.init and not (self.resume and has_checkpoint(run_dir)):
            self.init = open_init(cfg.init)
        if self.init is not None:
            self.init.check_fits(cfg.model)
        self.pre = self.pre or make_preprocess(cfg, self.data.class_names, self.init)
        check_data(self.data, self.pre)
        check_image_size(cfg.model, self.pre.image_size)
        if self.resume and has_checkpoint(run_dir):
            self.ckpt = read_checkpoint(run_dir)
        elif self.resume:
            self.say(f"{run_dir}: no checkpoint yet, starting from the beginning.")
        elif existing_run(run_dir):
            raise ConfigError(
                f"{run_dir} already holds a training run. Continue it with --resume, or choose a new --out folder."
            )

    def build_model(self) -> None:
        """The seeded model (from ImageNet or the init model on a fresh run), and the resolved config."""
        cfg, ckpt, class_names = self.cfg, self.ckpt, tuple(self.data.class_names)
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model, num_classes=len(class_names),
                                  pretrained=cfg.pretrained if ckpt is None else False)
        if self.init is not None and ckpt is None:
            self.init_summary = apply_init(self.model, self.init, class_names, self.pre, self.data.train_images)
            self.say(init_message(self.init_summary))
        self.cfg, self.rt = resolve_runtime(cfg, self.pre, self.model, self.info)
        if ckpt is not None:
            check_resume(ckpt.meta, self.cfg, self.data, self.run_dir)

    def place_model(self) -> None:
        """Checkpoint weights, device, memory format, and the DDP wrapper when distributed."""
        model, rt = self.model, self.rt
        if self.ckpt is not None:
            model.load_state_dict(self.ckpt.weights)
        model.to(rt.device)
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = model
        if self.info.active:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
            )

    def build_optimisation(self) -> None:
        """Tensors, optimiser, schedule, gradient scaler and loss, restored from the checkpoint when resuming."""
        cfg, data, info, rt = self.cfg, self.data, self.info, self.rt
        self.train_images = torch.from_numpy(np.ascontiguousarray(data.train_images))
        self.train_labels = torch.as_tensor(np.asarray(data.train_labels), dtype=torch.int64)
        self.val_images = torch.from_numpy(np.ascontiguousarray(data.val_images))
        self.val_labels = torch.as_tensor(np.asarray(data.val_labels), dtype=torch.int64)
        steps = len(epoch_batches(len(self.train_labels), cfg.batch_size, 1, cfg.seed, info.rank, info.world))
        self.optimizer = make_optimizer(cfg, self.net)
        self.scheduler = make_scheduler(cfg, self.optimizer, steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.precision == "fp16")
        if self.ckpt is not None:
            self.restore(self.ckpt)
        criterion = make_criterion(cfg, data.train_labels, len(data.class_names), rt.device)
        criterion, soft = with_teacher(cfg, criterion, data, self.pre, self.run_dir, self.info.is_main,
                                       self.teacher_images, self.progress, self.say)
        self.ctx = EpochContext(self.net, self.optimizer, self.scheduler, criterion, BatchAugment(cfg.augment),
                                Normalizer(self.pre, rt.device), rt, self.scaler, cfg.grad_clip, cfg.seed,
                                info.rank, info.world, soft)

    def restore(self, ckpt) -> None:
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        if ckpt.state.get("scaler"):
            self.scaler.load_state_dict(ckpt.state["scaler"])
        self.history = [dict(h) for h in ckpt.meta["history"]]
        self.best = dict(ckpt.state["best"])
        self.best_weights = {k: v.clone() for k, v in ckpt.best_weights.items()}
        self.say(f"Resuming {self.run_dir} after epoch {ckpt.epoch} (best so far: epoch {self.best['epoch']}).")

    def start_outputs(self) -> None:
        """The metadata every save shares; the run folder with its config (and seeded split) on rank 0."""
        cfg, data, pre, rt, info = self.cfg, self.data, self.pre, self.rt, self.info
        self.meta_base = {
            "architecture": cfg.model,
            "model_kwargs": {},
            "preprocess": pre.to_dict(),
            "config": cfg.to_dict(),
            "data_manifest_sha256": data.manifest_sha256,
            "data": data.info,
            "init": self.init_summary if self.ckpt is None else self.ckpt.meta.get("init"),
        }
        if not info.is_main:
            return
        if pre.framing == "centre" and cfg.data:  # what `bloodcell adapt` scales a lab's cells to; once per run
            share = self.ckpt.meta.get("training_cell_share") if self.ckpt is not None else None
            share = share or measure_cell_share(cfg.data, pre.crop_fraction, default=None)
            self.meta_base["training_cell_share"] = None if share is None else round(share, 4)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.split_ids is not None:
            write_split_csv(self.run_dir / SPLIT_FILE, self.split_ids["train"], data.train_labels,
                            self.split_ids["val"], data.val_labels, data.class_names)
        save_config(cfg, self.run_dir)
        self.say(f"Training {cfg.model} on {len(self.train_labels)} images ({len(self.val_labels)} validation), "
                 f"{len(data.class_names)} classes, {pre.image_size} px, {rt.device} {rt.precision}"
                 f"{' channels-last' if rt.channels_last else ''}, {cfg.threads} thread(s)"
                 f"{f', {info.world} processes' if info.active else ''} -> {self.run_dir}")

    # ------------------------------------------------------------ saving

    def meta_now(self, stopped: str) -> dict:
        best_row = next((h for h in self.history if h["epoch"] == self.best["epoch"]), None)
        metrics = {k: best_row[k] for k in ("val_loss", "val_acc", "val_macro_f1")} if best_row else {}
        if best_row:
            metrics.update(best_epoch=self.best["epoch"], monitor=self.cfg.monitor)
        rt = self.rt
        return {**self.meta_base, "history": self.history, "metrics": metrics, "training": {
            "stopped": stopped, "epochs_run": len(self.history), "best_epoch": self.best["epoch"],
            "world_size": self.info.world, "device": str(rt.device), "precision": rt.precision,
            "channels_last": rt.channels_last, "threads": self.cfg.threads, "torch": torch.__version__,
            "python": platform.python_version(),
        }}

    def write_outputs(self, stopped: str, epoch: int | None) -> None:
        """The checkpoint of ``epoch`` (unless ``None``), the best model so far, the history and the plot."""
        meta = self.meta_now(stopped)
        with deferred_interrupts():
            if epoch is not None:
                best_weights = None if self.best["epoch"] == epoch else self.best_weights
                write_checkpoint(self.run_dir, epoch, cpu_state(self.net), best_weights, meta, {
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None, "best": dict(self.best),
                })
            if self.best_weights is not None:
                save_model(self.run_dir, HeldWeights(self.best_weights), meta)
            write_history(self.run_dir, self.history)
        # Plot every epoch when epochs are long enough for the plot not to matter, and at the end.
        if self.history and (epoch is None or self.history[-1]["seconds"] >= PLOT_EVERY_EPOCH_AFTER):
            self.plot()

    def plot(self) -> None:
        plot_curves(self.history, self.run_dir / "curves.png", best_epoch=self.best["epoch"],
                    title=f"{self.cfg.model}, {self.pre.image_size} px, {len(self.train_labels)} training images")

    # ------------------------------------------------------------ the epochs

    def patience_ran_out(self) -> bool:
        return bool(self.cfg.patience and self.best["since"] >= self.cfg.patience)

    def run_epoch(self, epoch: int) -> None:
        """Train and validate one epoch, keep the best weights, save, and report."""
        cfg, info = self.cfg, self.info
        t0 = time.perf_counter()
        batches = epoch_batches(len(self.train_labels), cfg.batch_size, epoch, cfg.seed, info.rank, info.world)
        row = train_one_epoch(self.ctx, self.train_images, self.train_labels, batches, epoch, self.progress,
                              desc=f"epoch {epoch}/{cfg.epochs}")
        row.update(evaluate(self.net, self.val_images, self.val_labels, self.ctx.normalizer, self.rt,
                            cfg.eval_batch_size, len(self.data.class_names), info.rank, info.world))
        row = {"epoch": epoch, **{k: float(row[k]) for k in HISTORY_KEYS[1:-1]},
               "seconds": round(time.perf_counter() - t0, 3)}
        self.history.append(row)
        is_best = improved(row[cfg.monitor], self.best["value"], cfg.monitor, cfg.min_delta)
        if is_best:
            self.best.update(epoch=epoch, value=row[cfg.monitor], since=0)
            self.best_weights = cpu_state(self.net)
        else:
            self.best["since"] += 1
        if info.is_main:
            self.write_outputs("running", epoch)
        self.times.append(time.perf_counter() - t0)
        self.report(row, is_best)
        distributed.barrier()

    def report(self, row: dict, is_best: bool) -> None:
        epoch, epochs = row["epoch"], self.cfg.epochs
        eta = np.mean(self.times) * (epochs - epoch)
        self.say(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}  "
                 f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} macro-F1 {row['val_macro_f1']:.3f}  "
                 f"lr {row['lr']:.2e}  {row['seconds']:.1f}s{'  *best' if is_best else ''}"
                 + (f"  (at most {fmt_eta(eta)} left)" if epoch < epochs else ""))

    def train_epochs(self) -> str:
        """Run the remaining epochs; returns why training stopped."""
        self.epoch = len(self.history) + 1
        try:
            for epoch in range(len(self.history) + 1, self.cfg.epochs + 1):
                if self.patience_ran_out():
                    break
                self.epoch = epoch
                self.run_epoch(epoch)
        except NonFiniteLoss as e:
            raise self.diverged(e) from None
        except KeyboardInterrupt:
            raise self.interrupted() from None
        if not self.patience_ran_out():
            return "completed"
        self.say(f"Early stopping: {self.cfg.monitor} has not improved for {self.cfg.patience} epochs "
                 f"(best: epoch {self.best['epoch']}).")
        return "early_stopping"

    def diverged(self, e: NonFiniteLoss) -> ConfigError:
        """Mark the kept epoch as diverged; the error saying what is kept and how to fix it."""
        if self.info.is_main and self.history:
            mark_stopped(self.run_dir, "diverged")
            self.plot()
        kept = (f"the last good checkpoint (epoch {len(self.history)}) is kept in {self.run_dir}"
                if self.history else "no epoch had completed, so no checkpoint was written")
        return ConfigError(
            f"Training stopped: the loss became {e.value} at epoch {e.epoch}, step {e.step}; {kept}. "
            f"Fix: lower the learning rate (lr is {self.cfg.lr:g}), set grad_clip (e.g. --grad-clip 1.0), "
            "or use --precision fp32; then start again (or --resume from the kept epoch)."
        )

    def interrupted(self) -> TrainingInterrupted:
        """Mark the kept epochs as interrupted; the error saying how to continue."""
        if self.info.is_main and self.history:
            with deferred_interrupts():
                mark_stopped(self.run_dir, "interrupted")
                self.plot()
        kept = (f"epochs 1-{len(self.history)} are saved in {self.run_dir}" if self.history
                else "no epoch had completed, so nothing was saved")
        return TrainingInterrupted(
            f"Interrupted during epoch {self.epoch}; {kept}. Continue with: bloodcell train --resume {self.run_dir}"
        )

    # ------------------------------------------------------------ the whole run

    def run(self) -> FitResult:
        """Check, build, train and save; PyTorch's thread count and determinism are restored afterwards."""
        self.check_inputs()
        old_threads = torch.get_num_threads()
        old_det = torch.are_deterministic_algorithms_enabled()
        try:
            self.build_model()
            torch.set_num_threads(self.cfg.threads)
            if self.cfg.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
            self.place_model()
            self.build_optimisation()
            self.start_outputs()
            stopped = self.train_epochs()
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det)
        if self.info.is_main and self.best_weights is not None:
            self.write_outputs(stopped, None)
        return FitResult(self.run_dir, self.history, self.meta_now(stopped)["metrics"], self.best["epoch"], stopped)


def fit(cfg: TrainConfig, data: TrainData, run_dir: str | Path, *, pre: PreprocessConfig | None = None,
        init: InitSource | None = None, resume: bool = False, progress: bool = True, log=None,
        split_ids: dict | None = None, teacher_images=None) -> FitResult:
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
    log : callable, optional
        Receives each progress line instead of stderr.
    split_ids : dict, optional
        ``{"train": ids, "val": ids}`` of a split drawn for this run, saved as ``split.csv``.
    teacher_images : callable, optional
        ``teacher_images(teacher_preprocess)``: the training images prepared for a teacher that crops differently.

    Raises
    ------
    ConfigError
        On invalid settings, or when the loss becomes NaN (the last good checkpoint is kept).
    DataError, ModelError
        On unusable data, or a checkpoint that does not match the run.
    TrainingInterrupted
        On Ctrl-C/SIGTERM, after making sure the last complete epoch is saved.
    """
    trainer = Trainer(cfg, data, run_dir, pre=pre, init=init, resume=resume, progress=progress, log=log,
                      split_ids=split_ids, teacher_images=teacher_images)
    with undone_on_failure(trainer.run_dir, active=trainer.info.is_main):
        return trainer.run()
