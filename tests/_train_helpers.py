"""Tiny synthetic training data and a runnable training script for the training tests."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
# A training run small enough for a test: the smallest study CNN at 16 px, one thread, fp32.
TINY = ["--model", "basic_cnn", "--image-size", "16", "--batch-size", "8", "--threads", "1", "--precision", "fp32",
        "--no-progress"]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    """Each test gets its own pixel cache and one decoding thread."""
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BLOODCELL_WORKERS", "1")


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
    from bloodcell.training import TrainData

    tr_x, tr_y = blobs(n_train, classes, size, seed)
    va_x, va_y = blobs(n_val, classes, size, seed + 1000)
    return TrainData(tr_x, tr_y, va_x, va_y, tuple(classes), {"source": "synthetic"}, f"synthetic-{seed}-{size}")


def tiny_config(**overrides):
    from bloodcell.training import load_config

    base = {"model": "basic_cnn", "image_size": 16, "epochs": 3, "batch_size": 8, "eval_batch_size": 32,
            "lr": 0.003, "threads": 1, "patience": 0, "precision": "fp32"}
    base.update(overrides)
    return load_config(overrides=base)


def main(argv: list[str]) -> int:
    """``python _train_helpers.py RUN_DIR CONFIG_JSON [--resume]``: train on tiny data (used via subprocess)."""
    sys.path.insert(0, str(SRC))
    from bloodcell.training import TrainingInterrupted, fit

    # Ctrl-C as in a terminal: a shell that starts a job in the background (``cmd &`` in a script, as CI
    # runners may) hands it SIGINT ignored, and the interrupt this helper is sent would be lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir, cfg_json = argv[0], argv[1]
    overrides = json.loads(cfg_json)
    data = tiny_data(n_train=overrides.pop("_n_train", 24), size=overrides.get("image_size", 16))
    try:
        fit(tiny_config(**overrides), data, run_dir, resume="--resume" in argv, progress=False)
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return 130
    return 0


def ddp_worker(rank: int, world: int, port: int, out_root: str, overrides: dict) -> None:
    """One process of a two-process gloo run; rank r trains into out_root/rank{r}, results in out_root/results."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    sys.path.insert(0, str(SRC))
    import torch

    from bloodcell.training import distributed, fit

    info = distributed.setup("cpu")
    assert info.world == world and info.rank == rank
    try:
        result = fit(tiny_config(**overrides), tiny_data(), Path(out_root) / f"rank{rank}", progress=False)
        module_sum = None
        if rank == 0:
            from bloodcell.networks import load_model

            module_sum = float(sum(p.double().sum() for p in load_model(result.run_dir).module.state_dict().values()
                                   if p.is_floating_point()))
        res = Path(out_root) / "results"
        res.mkdir(exist_ok=True)
        (res / f"rank{rank}.json").write_text(json.dumps({
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.history],
            "world": torch.distributed.get_world_size(), "module_sum": module_sum}))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
