"""Starting from an existing model: weights, preprocessing, classifier rows mapped by class name."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from _train_helpers import tiny_config, tiny_data
from bloodcell import ModelError
from bloodcell.networks import load_model
from bloodcell.training import fit, make_preprocess
from bloodcell.training.warmstart import apply_init, classifier_name, open_init, resolve_init_dir


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    run = tmp_path_factory.mktemp("parent") / "model"
    fit(tiny_config(epochs=2), tiny_data(classes=("basophil", "lymphocyte", "platelet")), run, progress=False)
    return run


def test_init_maps_classifier_rows_by_class_name(parent):
    from bloodcell.networks import create_model

    source = open_init(str(parent))
    new_classes = ("basophil", "eosinophil", "platelet", "lymphocyte")
    model = create_model(source.architecture, num_classes=len(new_classes))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    summary = apply_init(model, source, new_classes)
    old = load_model(parent).module.state_dict()
    head = classifier_name(model, 4)
    w, b = model.state_dict()[f"{head}.weight"], model.state_dict()[f"{head}.bias"]
    for i, name in enumerate(new_classes):
        if name in source.class_names:
            j = source.class_names.index(name)
            assert torch.equal(w[i], old[f"{head}.weight"][j]) and torch.equal(b[i], old[f"{head}.bias"][j])
        else:
            assert torch.equal(w[i], fresh[f"{head}.weight"][i])  # a new class keeps its fresh row
    body = [k for k in old if not k.startswith(head)]
    assert all(torch.equal(model.state_dict()[k], old[k]) for k in body)
    assert summary["new_classes"] == ["eosinophil"] and summary["dropped_classes"] == []


def test_training_runs_from_an_init_model_with_another_class_set(parent, tmp_path):
    source = open_init(str(parent))
    data = tiny_data(classes=("basophil", "eosinophil", "platelet"), seed=3)
    cfg = tiny_config(epochs=1, model=source.architecture, init=str(parent))
    pre = make_preprocess(cfg, data.class_names, source)
    assert pre.image_size == 16 and pre.mean == tuple(source.meta["preprocess"]["mean"])
    wider = make_preprocess(dataclasses.replace(cfg, crop_fraction=0.5, normalization="image"), data.class_names,
                            source, explicit={"crop_fraction", "normalization"})
    assert (wider.crop_fraction, wider.normalization, wider.image_size) == (0.5, "image", 16)
    assert make_preprocess(dataclasses.replace(cfg, crop_fraction=0.5), data.class_names, source).crop_fraction == 1.0
    result = fit(cfg, data, tmp_path / "child", pre=pre, init=source, progress=False)
    meta = json.loads((tmp_path / "child" / "model.json").read_text())
    assert meta["init"]["kept_classes"] == ["basophil", "platelet"]
    assert meta["init"]["new_classes"] == ["eosinophil"] and meta["init"]["dropped_classes"] == ["lymphocyte"]
    assert meta["preprocess"]["class_names"] == ["basophil", "eosinophil", "platelet"]
    assert len(result.history) == 1


def test_default_model_resolves_through_the_package_default(parent, monkeypatch):
    import bloodcell.core.model_choice as bundled

    monkeypatch.setattr(bundled, "packaged_model_dir", lambda: parent)
    assert resolve_init_dir("default") == parent
    assert open_init("default").architecture == "basic_cnn"
    monkeypatch.setattr(bundled, "packaged_model_dir", lambda: parent / "missing")
    with pytest.raises(ModelError, match="No default model is installed"):
        resolve_init_dir("default")


def test_init_refuses_non_models_and_ensembles(tmp_path, parent):
    with pytest.raises(ModelError, match="no model here"):
        open_init(str(tmp_path))
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "model.json").write_text(json.dumps({"format": "bloodcell-model/1", "architecture": "ensemble",
                                                "preprocess": {}, "ensemble": {"members": ["member_0"]}}))
    with pytest.raises(ModelError, match=r"is an ensemble; training starts from a single model\. Use one member"):
        open_init(str(ens))


def test_default_ensemble_starts_from_its_best_member(tmp_path, parent, monkeypatch):
    import shutil

    import bloodcell.core.model_choice as bundled
    from bloodcell.networks.ensemble import make_ensemble

    members = []
    for name, acc in (("a", 0.91), ("b", 0.97), ("c", 0.95)):
        folder = shutil.copytree(parent, tmp_path / name)
        meta = json.loads((folder / "model.json").read_text())
        meta["metrics"] = {**meta.get("metrics", {}), "val_acc": acc}
        (folder / "model.json").write_text(json.dumps(meta))
        members.append(folder)
    ens = make_ensemble(members, tmp_path / "ens")
    chosen = json.loads((ens / "model.json").read_text())["ensemble"]["members"][1]
    monkeypatch.setattr(bundled, "packaged_model_dir", lambda: ens)
    source = open_init("default")
    assert source.folder == ens / chosen and source.meta["metrics"]["val_acc"] == 0.97
    with pytest.raises(ModelError, match="is an ensemble"):  # named explicitly, an ensemble is still refused
        open_init(str(ens))
