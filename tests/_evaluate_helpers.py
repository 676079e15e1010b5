"""Tiny trained models and synthetic arrays for the evaluation tests."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import numpy as np
import torch

from bloodcell import PreprocessConfig
from bloodcell.core.classes import CLASSES
from bloodcell.core.preprocess import normalize
from bloodcell.networks import create_model, save_model
from conftest import synthetic_cell

SIZE = 32


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: on a shared, busy CPU this is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cells(n: int, classes=CLASSES, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic cell images and labels indexing ``classes``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    x = np.stack([synthetic_cell(rng, CLASSES.index(classes[k]), size) for k in y])
    return x, y


def tiny_model(folder: Path, classes=CLASSES, steps: int = 25, temperature: float | None = None,
               seed: int = 0, architecture: str = "basic_cnn") -> Path:
    """A small CNN trained a few steps on synthetic cells (right often, not always), saved with a history."""
    torch.manual_seed(seed)
    pre = PreprocessConfig(image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, class_names=tuple(classes))
    model = create_model(architecture, num_classes=len(classes))
    x, y = cells(160, classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    for step in range(steps):
        b = np.random.default_rng(step).choice(len(y), 32, replace=False)
        loss = torch.nn.functional.cross_entropy(model(normalize(torch.from_numpy(x[b]), pre)), torch.from_numpy(y[b]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.4 + 0.1 * e, "val_loss": 2.1 / e, "val_acc": 0.35 + 0.1 * e,
         "val_macro_f1": 0.3 + 0.1 * e, "lr": 1e-3 / e, "seconds": 1.0}
        for e in range(1, 4)
    ]
    meta = {"architecture": architecture, "model_kwargs": {}, "preprocess": pre.to_dict(), "config": {"epochs": 3},
            "history": history, "metrics": {"val_acc": 0.65}, "data_manifest_sha256": None}
    if temperature is not None:
        meta["calibration"] = {"temperature": temperature, "abstain_threshold": 0.6, "target_accuracy": 0.99}
    return save_model(folder, model, meta)


def write_manifest(root: Path, out: Path, val_every: int | None = 3) -> Path:
    """A ``path,label,split`` manifest over a class-folder tree: every ``val_every``-th image per class in val
    (none when ``None``), the rest test."""
    rows = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(cls_dir.iterdir())):
            rows.append((str(f.relative_to(out.parent)) if f.is_relative_to(out.parent) else str(f), cls_dir.name,
                         "val" if val_every and i % val_every == 0 else "test"))
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return out
