"""The model that ships inside the package: present, small, documented, and right on real cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bloodcell.core import model_choice as bundled
from bloodcell.core.classes import CLASSES
from bloodcell.core.model_folder import ONNX, adapt_start, read_meta
from bloodcell.packaging.choices import MAX_MB
from bloodcell.packaging.package import REQUIRED_CARD

SRC = Path(__file__).resolve().parents[1] / "src"


def test_packaged_model_is_complete_and_small():
    folder = bundled.packaged_model_dir()
    meta = read_meta(folder)
    assert tuple(meta["preprocess"]["class_names"]) == CLASSES
    assert all(meta["model_card"].get(k) for k in REQUIRED_CARD)
    assert "test split" in meta["model_card"]["metrics"]["evaluated_on"]  # measured, not hand-written
    assert meta["ood"]["evaluation"]["false_flag_rate"] <= 0.02
    assert "temperature" in meta["calibration"] and meta["calibration"]["abstain_threshold"] is not None
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total <= MAX_MB * 1e6, f"default model is {total / 1e6:.1f} MB"
    assert (folder / ONNX).is_file()


def test_packaged_model_predicts_with_one_network_and_adapts_from_the_ensemble_it_learnt_from():
    folder = bundled.packaged_model_dir()
    meta = read_meta(folder)
    assert "ensemble" not in meta and meta["config"]["teacher"]  # one network, distilled
    inside = read_meta(adapt_start(folder))
    assert adapt_start(folder) != folder and inside["ensemble"]["members"] == ["member_0", "member_1"]
    assert meta["adapt_from"]["weights_sha256"]
    assert "calibration" in inside and inside["training_cell_share"] == pytest.approx(meta["training_cell_share"])
    assert inside["preprocess"] == meta["preprocess"]  # the same crop and classes, so adapting keeps what predict sees


@pytest.mark.integration
def test_predict_without_a_model_classifies_real_cells_offline(real_data, tmp_path):
    cells = tmp_path / "cells"
    for name in CLASSES:
        (cells / name).mkdir(parents=True)
        for f in [p for p in sorted((real_data / name).glob("*.jpg")) if not p.name.startswith(".")][:6]:
            (cells / name / f.name).symlink_to(f)
    env = {k: v for k, v in os.environ.items() if k != bundled.ENV}
    env.update(PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", NO_PROXY="*")
    out = tmp_path / "pred.json"
    run = subprocess.run([sys.executable, "-m", "bloodcell", "predict", str(cells), "-f", "json", "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    rows = doc["predictions"]
    assert len(rows) == 48 and not doc["skipped"]
    assert sum(r["count"] for r in doc["differential"]["classes"]) <= 48
    correct = sum(r["true_label"] == r["label"] for r in rows)
    assert correct >= 45, f"{correct}/48 correct"


@pytest.mark.integration
def test_a_lab_fine_tunes_the_default_model_on_a_few_real_cells(real_data, tmp_path):
    kept = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
    lab = tmp_path / "lab"
    for name in kept:
        (lab / name).mkdir(parents=True)
        for f in [p for p in sorted((real_data / name).glob("*.jpg")) if not p.name.startswith(".")][100:110]:
            (lab / name / f.name).symlink_to(f)
    env = {k: v for k, v in os.environ.items() if k != bundled.ENV}
    env.update(PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", BLOODCELL_CACHE=str(tmp_path / ".cache"), BLOODCELL_WORKERS="1")
    out = tmp_path / "lab_model"
    run = subprocess.run([sys.executable, "-m", "bloodcell", "train", "--init", "default", "--data", str(lab),
                          "--out", str(out), "--epochs", "1", "--batch-size", "8", "--lr", "1e-4", "--val-fraction",
                          "0.3", "--threads", "1", "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    meta = read_meta(out)
    assert f"Starting from {meta['init']['from']} (" in run.stderr  # the user is told which weights it starts from
    start = Path(meta["init"]["from"])  # the default model itself, or its best member when it is an ensemble
    assert start.resolve().is_relative_to(bundled.packaged_model_dir().resolve())
    packaged = read_meta(start)
    assert meta["architecture"] == packaged["architecture"] != "ensemble"
    assert tuple(meta["preprocess"]["class_names"]) == kept
    for key in ("image_size", "crop_fraction", "mean", "std"):
        assert meta["preprocess"][key] == packaged["preprocess"][key], key
    assert meta["init"]["kept_classes"] == list(kept) and not meta["init"]["new_classes"]
    # training records the share of the crop its cells fill, which `adapt` scales a lab's cells to
    assert abs(meta["training_cell_share"] - packaged["training_cell_share"]) < 0.1
    # the default model's weights are what it starts from: one short epoch already separates the cells
    assert meta["metrics"]["val_acc"] >= 0.75, meta["metrics"]
