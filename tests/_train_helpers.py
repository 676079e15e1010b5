"""Tiny synthetic training data and a runnable training script for the training tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def blobs(n_per_class: int, classes: tuple[str, ...], size: int = 16, seed: int = 0):
    """uint8 NHWC images of a coloured disc whose colour and radius depend on the class, and labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for label in range(len(classes)):
        for _ in range(n_per_class):
            r = size * (0.18 + 0.06 * label) * rng.uniform(0.9, 1.1)
            cy, cx = size / 2 + rng.normal(0, 1.0, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            img = np.full((size, size, 3), 220.0) + rng.normal(0, 8, (size, size, 3))
            img[mask] = np.array([150 - 40 * label, 60 + 50 * label, 170]) + rng.normal(0, 8, (int(mask.sum()), 3))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def tiny_data(classes=("basophil", "lymphocyte", "platelet"), n_train=24, n_val=8, size=16, seed=0):
    from bloodcell.train import TrainData

    tr_x, tr_y = blobs(n_train, classes, size, seed)
    va_x, va_y = blobs(n_val, classes, size, seed + 1000)
    return TrainData(tr_x, tr_y, va_x, va_y, tuple(classes), {"source": "synthetic"}, f"synthetic-{seed}-{size}")


def tiny_config(**overrides):
    from bloodcell.train import load_config

    base = {"model": "basic_cnn", "image_size": 16, "epochs": 3, "batch_size": 8, "eval_batch_size": 32,
            "lr": 0.003, "threads": 1, "patience": 0, "precision": "fp32"}
    base.update(overrides)
    return load_config(overrides=base)


def main(argv: list[str]) -> int:
    """``python _train_helpers.py RUN_DIR CONFIG_JSON [--resume]``: train on tiny data (used via subprocess)."""
    sys.path.insert(0, str(SRC))
    from bloodcell.train import fit

    run_dir, cfg_json = argv[0], argv[1]
    cfg = tiny_config(**json.loads(cfg_json))
    data = tiny_data()
    fit(cfg, data, run_dir, resume="--resume" in argv, progress=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
