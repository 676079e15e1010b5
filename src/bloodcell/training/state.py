"""Resumable checkpoints: written atomically at the end of every epoch.

Layout inside a run folder::

    checkpoint/LATEST.json          {"epoch": 7, "folder": "epoch-0007"}
    checkpoint/epoch-0007/          a complete model folder of the last epoch
        model.safetensors           weights after epoch 7
        model.json                  metadata, including the history so far
        best.safetensors            the best epoch's weights (absent when epoch 7 is the best)
        state.pt                    optimiser, schedule, scaler and early-stopping counters

A checkpoint folder is filled and flushed first; only then does
``LATEST.json`` (itself replaced atomically) point at it, and only after that
is the previous folder removed. A process killed at any instant leaves either
the new checkpoint or the previous one complete. ``state.pt`` holds plain
containers of numbers and tensors, written with ``torch.save`` and read with
``torch.load(weights_only=True)``, so loading it cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bloodcell.core.errors import ModelError
from bloodcell.core.files import atomic_write_json
from bloodcell.core.model_folder import META, WEIGHTS, read_meta, write_meta

CHECKPOINT_DIR = "checkpoint"
POINTER = "LATEST.json"
STATE = "state.pt"
BEST = "best.safetensors"
STATE_FORMAT = "bloodcell-train-state/1"


@dataclass
class Checkpoint:
    epoch: int
    folder: Path
    meta: dict
    weights: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor]
    state: dict


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    _fsync(path)


def write_checkpoint(run_dir: Path, epoch: int, weights: dict, best_weights: dict | None, meta: dict,
                     state: dict) -> Path:
    """Write the checkpoint of ``epoch`` and make it the latest.

    ``best_weights`` is ``None`` when the best epoch is this one.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    folder = root / name
    if folder.exists():  # a half-written folder from a killed process; LATEST never pointed at it
        shutil.rmtree(folder)
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_tensors(weights, tmp / WEIGHTS)
    if best_weights is not None:
        _save_tensors(best_weights, tmp / BEST)
    torch.save({"format": STATE_FORMAT, "epoch": epoch, **state}, tmp / STATE)
    _fsync(tmp / STATE)
    write_meta(tmp, meta)
    os.replace(tmp, folder)
    _fsync(root)
    atomic_write_json(root / POINTER, {"epoch": epoch, "folder": name})
    for old in root.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def has_checkpoint(run_dir: Path) -> bool:
    root = Path(run_dir) / CHECKPOINT_DIR
    return (root / POINTER).exists() or any(root.glob("epoch-*"))


def _read_folder(folder: Path) -> Checkpoint:
    meta = read_meta(folder)
    try:
        weights = load_file(str(folder / WEIGHTS))
        best = load_file(str(folder / BEST)) if (folder / BEST).exists() else weights
    except FileNotFoundError:
        raise ModelError(f"{folder / WEIGHTS}: missing") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on damaged files
        raise ModelError(f"{folder}: corrupt weight file ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{folder / STATE}: missing") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors vary
        raise ModelError(f"{folder / STATE}: corrupt or not a training state ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ModelError(f"{folder / STATE}: not a bloodcell training state")
    if not isinstance(meta, dict) or "history" not in meta or len(meta["history"]) != state["epoch"]:
        raise ModelError(f"{folder / META}: history does not match the state of epoch {state.get('epoch')}")
    return Checkpoint(int(state["epoch"]), folder, meta, weights, best, state)


def read_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest readable checkpoint of a run.

    Falls back to an older complete epoch folder (with a warning) when the
    newest is damaged; raises :class:`ModelError` when none can be read.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    candidates: list[Path] = []
    try:
        pointer = json.loads((root / POINTER).read_text())
        candidates.append(root / str(pointer["folder"]))
    except FileNotFoundError:
        pass
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        print(f"warning: {root / POINTER} is corrupt; looking for epoch folders.", file=sys.stderr)
    candidates += sorted((p for p in root.glob("epoch-*") if p not in candidates), reverse=True)
    problems = []
    for folder in candidates:
        try:
            ckpt = _read_folder(folder)
        except ModelError as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"warning: skipped damaged checkpoint ({'; '.join(problems)}); resuming from epoch {ckpt.epoch}.",
                  file=sys.stderr)
        return ckpt
    detail = "; ".join(problems) if problems else "no checkpoint folders"
    raise ModelError(
        f"{root}: no usable checkpoint ({detail}). Restore the files, or start the run again: "
        f"delete {Path(run_dir)} (or choose a new --out folder) and train without --resume."
    )


def latest_meta(run_dir: Path) -> dict | None:
    """The metadata of a run's newest checkpoint (``None`` when there is none), without loading weights."""
    root = Path(run_dir) / CHECKPOINT_DIR
    try:
        pointer = json.loads((root / POINTER).read_text())
        return read_meta(root / str(pointer["folder"]))
    except (OSError, ValueError, KeyError, TypeError, ModelError):
        try:
            return read_meta(run_dir) if (Path(run_dir) / META).exists() else None
        except ModelError:
            return None
