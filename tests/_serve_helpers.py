"""A small trained model (basic_cnn, 32 px, synthetic cells) with calibration, card, OOD statistics and ONNX."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REAL_DATA as REAL_DATA_DIR  # noqa: F401  (re-exported to the browser test)
from conftest import synthetic_cell

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
SIZE = 32
CARD = {
    "name": "tiny test model",
    "intended_use": "Tests of the serving code.",
    "data": "Synthetic blobs, 40 per class.",
    "metrics": {"val_acc": 1.0},
    "limitations": "Knows nothing about real cells.",
    "citation": "Acevedo et al., Data in Brief 30 (2020) 105474.",
    "licence": "Apache-2.0",
}


def cells(n_per_class: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(8):
        for _ in range(n_per_class):
            images.append(synthetic_cell(rng, label, size))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def _prepared(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in images])


def _build(folder: Path) -> Path:
    import torch

    from bloodcell import PreprocessConfig
    from bloodcell.core.files import atomic_write_json
    from bloodcell.core.model_folder import read_meta
    from bloodcell.core.preprocess import normalize
    from bloodcell.networks import create_model, load_model, save_model
    from bloodcell.ood.fit import fit_ood, save_head
    from bloodcell.packaging.onnx import export_onnx

    torch.manual_seed(0)
    pre = PreprocessConfig(image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x_raw, y = cells(40, seed=1)
    x = _prepared(x_raw)
    model = create_model("basic_cnn", num_classes=8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    xt, yt = normalize(torch.from_numpy(x), pre), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = {
        "architecture": "basic_cnn",
        "model_kwargs": {},
        "preprocess": pre.to_dict(),
        "config": {"epochs": 1},
        "history": [],
        "metrics": {"val_acc": 1.0},
        "calibration": {"temperature": 1.5, "abstain_threshold": 0.55},
        "model_card": CARD,
    }
    save_model(folder, model, meta)
    loaded = load_model(folder)
    held, _ = cells(6, seed=2)
    head, info = fit_ood(loaded, x, y, _prepared(held), per_kind=8, progress=False)
    save_head(folder, head)
    meta = read_meta(folder)
    meta["ood"] = info
    atomic_write_json(folder / "model.json", meta)
    export_onnx(folder)
    return folder


@lru_cache(maxsize=1)
def tiny_model() -> Path:
    """Path of the tiny model folder, built once per test process (do not modify it)."""
    root = Path(tempfile.mkdtemp(prefix="bloodcell-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return _build(root / "model")


def copy_model(dst: Path) -> Path:
    """A private copy of the tiny model that a test may change."""
    shutil.copytree(tiny_model(), dst)
    return dst


def unsure_model(dst: Path) -> Path:
    """A copy of the tiny model that calls every image uncertain, against 1% of its validation images, and
    has no cell check (the tiny model's would leave most real cells out of the count)."""
    model = copy_model(dst)
    meta = json.loads((model / "model.json").read_text())
    meta["calibration"].update(abstain_threshold=0.999, validation={"coverage": 0.99})
    meta.pop("ood", None)
    (model / "ood.safetensors").unlink(missing_ok=True)
    (model / "model.json").write_text(json.dumps(meta))
    return model


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m bloodcell ARGS`` on this worktree's code."""
    full = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(*extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``bloodcell serve`` on the tiny test model at a free port, once /health answers: (process, URL)."""
    import httpx
    import pytest

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloodcell", "serve", "--model", str(tiny_model()), "--port", str(port),
         "--log-level", "warning", *extra],
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"bloodcell serve did not start: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)
