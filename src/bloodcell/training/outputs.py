"""What a run writes besides checkpoints: history files, the stop reason, and the clean-up of a failed start."""

from __future__ import annotations

import contextlib
import csv
import io
import signal
import threading
from pathlib import Path

from torch import nn

from bloodcell.core.errors import ModelError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json
from bloodcell.core.model_folder import META, read_meta, write_meta
from bloodcell.training.state import has_checkpoint

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds")
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"


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


class HeldWeights:
    """Adapter so :func:`save_model` can write a state dict held in memory."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def cpu_state(model: nn.Module) -> dict:
    """A CPU copy of the weights (unwrapped from DDP), safe to keep while training goes on."""
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if monitor == "val_loss" else value > best + min_delta


def write_history(run_dir: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(HISTORY_KEYS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run_dir / "history.csv", buf.getvalue().encode())
    atomic_write_json(run_dir / "history.json", history)


def fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def mark_stopped(run_dir: Path, stopped: str) -> None:
    """Record why training stopped in the model folder's metadata (when there is one)."""
    try:
        meta = read_meta(run_dir)
    except ModelError:
        return
    meta.setdefault("training", {})["stopped"] = stopped
    with contextlib.suppress(OSError):
        write_meta(run_dir, meta)


@contextlib.contextmanager
def undone_on_failure(folder: str | Path, names: tuple[str, ...] = (CONFIG_FILE, SPLIT_FILE), active: bool = True):
    """Leave ``folder`` as it was when the run fails before its first checkpoint.

    Files in ``names`` that the run created are removed, and so are the
    folder and its parents when the run created them and they are empty
    again. Once a checkpoint or a model is written, nothing is removed.
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    present = {name for name in names if (folder / name).exists()}
    try:
        yield
    except BaseException:
        if active and not has_checkpoint(folder) and not (folder / META).exists():
            for name in set(names) - present:
                with contextlib.suppress(OSError):
                    (folder / name).unlink(missing_ok=True)
            for path in created:
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise
