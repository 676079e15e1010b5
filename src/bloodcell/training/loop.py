"""The pieces of one training run: optimiser, schedule, loss, one epoch, evaluation.

Images stay ``uint8`` NHWC in memory; each batch is indexed, augmented (in
``[0, 1]`` floats), normalised with the model's mean/std and cast to the
run's memory format on the fly. Every function here works the same in one
process and under DDP: per-process sums are all-reduced when a process group
is active.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from bloodcell.core.preprocess import PreprocessConfig, normalize_unit
from bloodcell.training.augment import BatchAugment, batch_generator
from bloodcell.training.config import TrainConfig
from bloodcell.training.device import Runtime


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, value: float):
        super().__init__(f"loss is {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


# ---------------------------------------------------------------- optimiser, schedule, loss


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (L2 weight decay) or AdamW (decoupled weight decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_cosine(step: int, total: int, warmup: int, final_ratio: float, cosine: bool) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then constant or cosine to ``final_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step scheduler: constant or cosine (both with optional warm-up), or one-cycle."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        return _one_cycle(optimizer, cfg.lr, total, min(0.9, warmup / total) if warmup else 0.3)
    ratio = cfg.min_lr / cfg.lr
    cosine = cfg.schedule == "cosine"
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup, ratio, cosine)
    )


def _one_cycle(optimizer: torch.optim.Optimizer, lr: float, total: int, pct: float):
    """One-cycle over ``total`` steps, rising for the first ``pct`` of them.

    PyTorch's one-cycle divides by the length of each phase (``pct * steps - 1``
    and the rest), so both must be positive: very short runs (1-3 steps) get a
    rising phase of one and a half steps, and a single step is scheduled as two.
    """
    steps = max(2, total)
    if pct * steps <= 1:
        pct = 1.5 / steps
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (k * count_c)``: each class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def make_criterion(cfg: TrainConfig, labels: np.ndarray, num_classes: int, device) -> nn.Module:
    weight = balanced_class_weights(labels, num_classes).to(device) if cfg.class_weights == "balanced" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


# ---------------------------------------------------------------- batches


class Normalizer:
    """``[0, 1]`` float NCHW -> the model's normalised input (same maths as :func:`preprocess.normalize`)."""

    def __init__(self, pre: PreprocessConfig, device):
        self.pre = pre

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return normalize_unit(x01, self.pre)


@contextlib.contextmanager
def single_thread(device: torch.device):
    """Run small element-wise CPU work on one thread: splitting it costs more than it saves."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[np.ndarray]:
    """This process's shuffled batches of sample indices for one epoch.

    The permutation depends on (seed, epoch) only and is shared out round-robin
    among processes (as ``DistributedSampler`` does, padding by wrapping
    around so every process runs the same number of steps). A last batch of
    one image is dropped, since batch norm cannot train on it.
    """
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).numpy()
    per_rank = math.ceil(n / world)
    if per_rank * world > n:
        order = np.concatenate([order, order[: per_rank * world - n]])
    mine = order[rank::world]
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


# ---------------------------------------------------------------- epoch and evaluation


@dataclass
class EpochContext:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: nn.Module
    augment: BatchAugment
    normalizer: Normalizer
    runtime: Runtime
    scaler: torch.amp.GradScaler
    grad_clip: float
    seed: int
    rank: int = 0
    world: int = 1
    #: The teacher's probabilities per training image (distillation), or ``None``.
    soft_targets: torch.Tensor | None = None


def _all_reduce(values: list[float], device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(ctx: EpochContext, images: torch.Tensor, labels: torch.Tensor, batches, epoch: int,
                    progress: bool = True, desc: str = "") -> dict:
    """One pass over ``batches``; returns ``{"train_loss", "train_acc", "lr"}`` (averaged over processes)."""
    model, rt = ctx.model, ctx.runtime
    model.train()
    # Dropout and any other in-model randomness: seeded per (seed, epoch, rank), so a resumed run repeats.
    torch.manual_seed((ctx.seed * 7919 + epoch * 104_729 + ctx.rank) % (2**63 - 1))
    loss_sum, correct, seen = 0.0, 0, 0
    lr = ctx.optimizer.param_groups[0]["lr"]
    bar = tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    for step, idx in enumerate(bar):
        index = torch.from_numpy(np.asarray(idx))
        target = labels[index].to(rt.device, non_blocking=True)
        batch = images[index].permute(0, 3, 1, 2).to(rt.device, non_blocking=True)
        with single_thread(rt.device):
            if ctx.augment.active:
                x01 = ctx.augment(batch, batch_generator(ctx.seed, epoch, ctx.rank, step))
            else:
                x01 = batch.float().div_(255.0)
            x = rt.input(ctx.normalizer(x01))
        with rt.autocast():
            logits = model(x)
            if ctx.soft_targets is None:
                loss = ctx.criterion(logits.float(), target)
            else:
                loss = ctx.criterion(logits.float(), target, ctx.soft_targets[index].to(rt.device))
        bad = not torch.isfinite(loss).item()
        if ctx.world > 1:
            bad = _all_reduce([float(bad)], rt.device)[0] > 0
        if bad:
            raise NonFiniteLoss(epoch, step + 1, float(loss.item()))
        lr = ctx.optimizer.param_groups[0]["lr"]
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        if ctx.grad_clip:
            ctx.scaler.unscale_(ctx.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.scheduler.step()
        n = len(idx)
        loss_sum += float(loss.item()) * n
        correct += int((logits.argmax(1) == target).sum().item())
        seen += n
        if progress:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    bar.close()
    loss_sum, correct, seen = _all_reduce([loss_sum, float(correct), float(seen)], rt.device)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": lr}


@torch.no_grad()
def eval_logits(model: nn.Module, images: torch.Tensor, normalizer: Normalizer, runtime: Runtime,
                   batch_size: int) -> torch.Tensor:
    """Logits (float32, CPU) for a ``uint8`` NHWC tensor, in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].permute(0, 3, 1, 2).to(runtime.device)
        with single_thread(runtime.device):
            x = runtime.input(normalizer(batch.float().div_(255.0)))
        out.append(model(x).float().cpu())  # full precision: the recorded metrics are what inference reproduces
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer,
             runtime: Runtime, batch_size: int, num_classes: int, rank: int = 0, world: int = 1) -> dict:
    """Validation loss (plain cross-entropy), accuracy and macro-F1.

    Under DDP each process scores every ``world``-th image and the sums and
    confusion matrix are all-reduced, so all processes see identical numbers.
    """
    sel = torch.arange(rank, len(labels), world)
    logits = eval_logits(model, images[sel], normalizer, runtime, batch_size)
    target = labels[sel]
    loss_sum = float(nn.functional.cross_entropy(logits, target, reduction="sum")) if len(sel) else 0.0
    pred = logits.argmax(1) if len(sel) else target
    cm = torch.bincount(target * num_classes + pred, minlength=num_classes**2).double()
    if dist.is_available() and dist.is_initialized():
        packed = torch.cat([torch.tensor([loss_sum], dtype=torch.float64), cm]).to(runtime.device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        loss_sum, cm = float(packed[0]), packed[1:]
    cm = cm.view(num_classes, num_classes)
    n = float(cm.sum())
    return {"val_loss": loss_sum / max(n, 1), "val_acc": float(cm.diag().sum()) / max(n, 1),
            "val_macro_f1": macro_f1(cm)}


def macro_f1(cm: torch.Tensor) -> float:
    """Macro-averaged F1 from a confusion matrix (rows = truth), over classes that occur in truth or prediction."""
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return 0.0
    return float((2 * tp[present] / denom[present]).mean())
