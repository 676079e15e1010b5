"""A packaged model that ships another for `bloodcell adapt` to start from (the default model predicts
with one distilled network and adapts from the ensemble it learnt from)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _serve_helpers import cli, copy_model
from bloodcell.adaptation import adapt
from bloodcell.core.errors import ConfigError, ModelError
from bloodcell.core.model_folder import ADAPT_FROM, adapt_start, read_meta, write_meta
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import create_model, save_model
from bloodcell.networks.ensemble import make_ensemble
from bloodcell.networks.loading import copy_model as copy_weights
from bloodcell.packaging import export
from bloodcell.packaging.card import info

LAB = ("basophil", "eosinophil", "lymphocyte", "monocyte")


@pytest.fixture(autouse=True)
def _few_non_cells(monkeypatch):
    monkeypatch.setattr("bloodcell.adaptation.calibrate.NON_CELLS_PER_KIND", 4)


def _ensemble(root):
    """Two tiny EfficientNet-Lite0 networks and their calibrated ensemble (another architecture than the
    tiny model, so the test sees which one was adapted)."""
    pre = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(save_model(root / f"m{seed}", create_model("efficientnet_lite0", num_classes=8).eval(),
                                  {"architecture": "efficientnet_lite0", "preprocess": pre.to_dict()}))
    folder = make_ensemble(members, root / "ens")
    meta = read_meta(folder)
    meta["calibration"] = {"temperature": 1.0, "abstain_threshold": 0.5}
    write_meta(folder, meta)
    return folder


def _packaged(tmp_path):
    """The tiny model with the ensemble inside it as the model adaptation starts from."""
    pkg = copy_model(tmp_path / "pkg")
    copy_weights(_ensemble(tmp_path), pkg / ADAPT_FROM)
    meta = read_meta(pkg)
    meta["adapt_from"] = {"folder": ADAPT_FROM, "architecture": "ensemble", "members": ["member_0", "member_1"]}
    write_meta(pkg, meta)
    return pkg


def test_adapt_starts_from_the_model_a_package_ships_for_it(make_folder_dataset, tmp_path, monkeypatch):
    import bloodcell.adaptation.calibrate as calibration

    loaded = []
    real_load = calibration.load_model
    monkeypatch.setattr(calibration, "load_model", lambda path, *a, **k: loaded.append(path) or real_load(path, *a, **k))
    pkg = _packaged(tmp_path)
    assert adapt_start(pkg) == pkg / ADAPT_FROM
    lab = make_folder_dataset(per_class=8, classes=LAB, size=40, seed=3)
    out = adapt(lab, tmp_path / "out", model=pkg, epochs=1, imagenet_member=False, export=False, progress=False).out
    record = read_meta(out)["adaptation"]
    assert record["adapted_from"] == str(pkg / ADAPT_FROM) and record["original_model"] == str(pkg)
    # the ensemble's two networks were adapted, not the packaged model's own network
    assert [r["network"] for r in record["networks"]] == ["member_0", "member_1"]
    assert read_meta(out)["architecture"] == "ensemble"
    assert read_meta(out / "member_0")["architecture"] == "efficientnet_lite0"
    # "before" is the model the user named (what `predict` served), on the same held-out cells
    assert record["held_out_before"]["n"] == 8 and pkg in loaded and pkg / ADAPT_FROM not in loaded
    card = read_meta(out)["model_card"]  # the named model's card (the ensemble inside has none)
    assert card["original_card"]["name"] == "tiny test model" and card["name"].startswith("tiny test model, adapted")
    assert info(pkg)["adapt_from"]["members"] == ["member_0", "member_1"]


def test_a_model_without_adapt_from_adapts_itself_and_a_lost_one_is_a_clear_error(tmp_path):
    plain = copy_model(tmp_path / "plain")
    assert adapt_start(plain) == plain
    pkg = _packaged(tmp_path)
    shutil.rmtree(pkg / ADAPT_FROM)
    with pytest.raises(ModelError, match="adaptation starts from .*adapt_from, which holds no model"):
        adapt_start(pkg)
    done = cli("adapt", str(tmp_path), "--out", str(tmp_path / "out"), "--model", str(pkg))
    assert done.returncode != 0 and "Traceback" not in done.stderr and "holds no model" in done.stderr


def test_packaging_refuses_an_uncalibrated_or_foreign_adapt_from_before_any_work(tmp_path):
    model, other = copy_model(tmp_path / "m"), _ensemble(tmp_path)
    meta = read_meta(other)
    del meta["calibration"]
    write_meta(other, meta)
    out = tmp_path / "pkg"
    with pytest.raises(ConfigError, match="must be calibrated first"):
        export(model, format="default", output=out, data=tmp_path / "no-data-needed-yet", adapt_from=other)
    meta["calibration"] = {"temperature": 1.0}
    meta["preprocess"]["class_names"] = list(reversed(meta["preprocess"]["class_names"]))
    write_meta(other, meta)
    with pytest.raises(ConfigError, match="must know the packaged model's classes"):
        export(model, format="default", output=out, data=tmp_path / "no-data-needed-yet", adapt_from=other)
    assert not out.exists()
    with pytest.raises(ConfigError, match="--adapt-from belongs to --format default"):
        export(model, output=tmp_path / "m.onnx", adapt_from=other)
    assert json.loads((model / "model.json").read_text())["architecture"]  # the model itself untouched


def test_the_adapt_summary_says_where_it_started_and_why_the_crop_was_kept(tmp_path):
    from types import SimpleNamespace

    from bloodcell.cli.adapt import _summary

    record = {"method": "finetune", "fitting_cells": {"monocyte": 3}, "held_out_cells": {"monocyte": 1},
              "classes_absent_from_data": [], "absent_classes": "kept",
              "adapted_from": "pkg/adapt_from", "original_model": "pkg"}
    result = SimpleNamespace(adaptation=record, out=tmp_path, seconds=1.0, onnx=None)
    for scale, said in (({"applied": False, "reason": "not asked for (match_scale off)"},
                         "crop kept: not asked for (match_scale off)"),
                        ({"applied": False, "crop_fraction": {"model": 0.7, "adapted": 0.7},
                          "reason": "the model records no training_cell_share"},
                         "crop kept at 0.7: the model records no training_cell_share")):
        text = _summary(SimpleNamespace(**{**vars(result), "adaptation": {**record, "scale": scale}}))
        assert "started from pkg/adapt_from, which pkg ships for adaptation" in text and said in text
    del record["original_model"]
    assert "ships for adaptation" not in _summary(result)
