"""bloodcell adapt: tiny models on generated cells (a study CNN, and an ensemble of two EfficientNet-Lite0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from _serve_helpers import cli, tiny_model
from bloodcell import Classifier
from bloodcell.adaptation import adapt
from bloodcell.adaptation.holdout import held_out_count, split_holdout
from bloodcell.adaptation.imagenet import fit_classifier
from bloodcell.adaptation.network import split_network
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.model_folder import read_meta, weights_digest
from bloodcell.core.preprocess import PreprocessConfig
from bloodcell.networks import create_model, load_model, save_model
from bloodcell.networks.ensemble import make_ensemble
from bloodcell.prediction.onnx_backend import OnnxModel

LAB = ("basophil", "eosinophil", "lymphocyte", "monocyte")


@pytest.fixture(autouse=True)
def _few_non_cells(monkeypatch):
    monkeypatch.setattr("bloodcell.adaptation.calibrate.NON_CELLS_PER_KIND", 4)
    monkeypatch.setattr("bloodcell.adaptation.imagenet.IMAGE_SIZE", 48)  # the ImageNet member, small for speed


@pytest.fixture
def lab(make_folder_dataset):
    return make_folder_dataset(per_class=8, classes=LAB, size=40, seed=3)


def _lite0_ensemble(root):
    pre = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(save_model(root / f"m{seed}", create_model("efficientnet_lite0", num_classes=8).eval(),
                                  {"architecture": "efficientnet_lite0", "preprocess": pre.to_dict(),
                                   "calibration": {"temperature": 0.5}}))
    return make_ensemble(members, root / "ens")


def test_holdout_rule():
    assert [held_out_count(n) for n in (1, 2, 3, 5, 10, 20)] == [0, 0, 1, 1, 3, 5]
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    fit, held = split_holdout(labels, seed=1)
    assert sorted(np.r_[fit, held].tolist()) == list(range(17))
    assert np.bincount(labels[held], minlength=3).tolist() == [3, 0, 1]
    assert np.array_equal(held, split_holdout(labels, seed=1)[1])


@pytest.mark.parametrize("arch", ["basic_cnn", "efficientnet_lite0"])
def test_split_network_reproduces_the_forward_pass(arch):
    torch.manual_seed(0)
    net = create_model(arch, num_classes=8).eval()
    front, back, head, where = split_network(net, 8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(head(back(front(x))), net(x), atol=1e-5)
    assert ("stages" in where) == (arch == "efficientnet_lite0")


def test_adapt_writes_a_calibrated_model_that_predict_loads(lab, tmp_path):
    status = tmp_path / "status.json"
    result = adapt(lab, tmp_path / "out", model=tiny_model(), epochs=3, progress=False, status_file=status)
    meta = read_meta(result.out)
    a = meta["adaptation"]
    assert a["fitting_cells"] == {c: 6 for c in LAB} and a["held_out_cells"] == {c: 2 for c in LAB}
    assert a["absent_classes"] == "kept" and set(a["classes_absent_from_data"]) == {"erythroblast", "ig", "neutrophil",
                                                                                    "platelet"}
    assert "adapted" in meta["model_card"]["name"] and meta["model_card"]["adaptation"]["data"] == str(lab)
    cal = meta["calibration"]
    assert cal["validation"]["n_images"] == 8 and cal["temperature"] != 1.5  # refitted, not the old model's
    assert meta["ood"]["fitted_on_images"] == 24 * 8 and (result.out / "ood.safetensors").is_file()
    # exported afresh from the adapted weights (a copy of the old export would describe other weights)
    assert result.onnx == f"written: {result.out / 'model.onnx'}"
    assert OnnxModel(result.out).weights_sha256 == weights_digest(result.out)
    clf = Classifier(result.out)
    assert clf.backend == "onnx"
    assert clf.temperature == pytest.approx(cal["temperature"])
    assert clf.abstain_threshold == pytest.approx(cal["abstain_threshold"])
    run = clf.predict([lab / "monocyte"])
    assert len(run.predictions) == 8 and len(clf.class_names) == 8
    assert json.loads(status.read_text())["progress"] == 1.0


def test_drop_absent_keeps_only_the_data_classes(lab, tmp_path):
    out = adapt(lab, tmp_path / "out", model=tiny_model(), method="linear", epochs=2, drop_absent=True,
                export=False, progress=False).out
    assert Classifier(out).class_names == LAB
    assert read_meta(out)["adaptation"]["absent_classes"] == "dropped"


def test_finetune_tunes_the_last_stages_of_every_member(lab, tmp_path):
    ens = _lite0_ensemble(tmp_path)
    out = adapt(lab, tmp_path / "out", model=ens, epochs=1, imagenet_member=False, export=False, progress=False).out
    before, after = load_model(ens).module, load_model(out).module
    for old, new in zip(before.members, after.members):
        assert torch.equal(old.model.conv_stem.weight, new.model.conv_stem.weight)  # the frozen front
        assert not torch.equal(old.model.blocks[-1][0].conv_pwl.weight, new.model.blocks[-1][0].conv_pwl.weight)
        assert new.temperature == 1.0  # the members' old temperatures are dropped; the whole is recalibrated
    records = read_meta(out)["adaptation"]["networks"]
    assert [r["network"] for r in records] == ["member_0", "member_1"] and all(r["steps"] > 0 for r in records)


def test_bad_data_is_one_clear_error(tmp_path, make_folder_dataset):
    with pytest.raises(DataError, match="at least two classes"):
        adapt(make_folder_dataset(per_class=4, classes=("basophil",)), tmp_path / "o1", model=tiny_model(),
              progress=False)
    with pytest.raises(ConfigError, match="method"):
        adapt(tmp_path, tmp_path / "o2", model=tiny_model(), method="magic", progress=False)
    with pytest.raises(ConfigError, match="--method prototype trains nothing"):  # --epochs was ignored
        adapt(tmp_path, tmp_path / "o2", model=tiny_model(), method="prototype", epochs=5, progress=False)
    done = cli("adapt", str(tmp_path / "missing"), "--out", str(tmp_path / "o3"), "--model", str(tiny_model()))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "missing" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o3").exists()


def test_existing_output_needs_force(lab, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        adapt(lab, tmp_path / "out", model=tiny_model(), progress=False)
    assert (tmp_path / "out" / "keep.txt").is_file()


def test_batch_norm_statistics_are_reestimated_on_the_cells_eight_views():
    from bloodcell.adaptation.network import dihedral_views
    from bloodcell.core.preprocess import PreprocessConfig, normalize
    from bloodcell.networks.batch_norm import reestimate_batch_norm

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    net = torch.nn.Sequential(conv, bn).eval()
    pre = PreprocessConfig(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    images[..., 2] //= 3  # a colour cast the old statistics do not know
    assert reestimate_batch_norm(net, images, pre, batch=32) == 1
    assert not bn.training and bn.momentum == 0.1
    with torch.no_grad():
        x = normalize(torch.from_numpy(images), pre)
        out = torch.cat([conv(v.contiguous()) for v in dihedral_views(x)])
    assert torch.allclose(bn.running_mean, out.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, out.var((0, 2, 3)), rtol=0.02)


def _disc_cells(root, radius: int, size: int = 64, per_class: int = 6) -> str:
    """Class folders of purple nuclei of one radius on a pale slide, each with a little noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.ogrid[:size, :size]
    for name in LAB[:2]:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.full((size, size, 3), (236, 226, 214), np.float32) + rng.normal(0, 3, (size, size, 3))
            image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2] = (105, 55, 150)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return str(root)


def test_the_crop_is_scaled_so_the_labs_cells_appear_at_the_training_size(tmp_path):
    from bloodcell.adaptation.scale import lab_cell_share
    from bloodcell.core.model_folder import write_meta
    from bloodcell.data import open_dataset

    data = _disc_cells(tmp_path / "lab", radius=16)
    share, found, looked = lab_cell_share(open_dataset(data), 1.0)
    assert found == looked == 12 and 0.4 < share < 0.6  # a 32-px nucleus in a 64-px image
    model = tmp_path / "model"
    save_model(model, create_model("basic_cnn", num_classes=8).eval(),
               {"architecture": "basic_cnn", "preprocess": PreprocessConfig(image_size=32).to_dict()})
    meta = read_meta(model)
    write_meta(model, {**meta, "training_cell_share": share / 2})  # training cells looked half as large
    out = adapt(data, tmp_path / "out", model=model, method="prototype", export=False, progress=False).out
    scale = read_meta(out)["adaptation"]["scale"]
    assert scale["applied"] and scale["ratio"] == pytest.approx(2.0, rel=0.01)
    assert Classifier(out).preprocess.crop_fraction == pytest.approx(2.0, rel=0.01)
    assert "scaled from 1 to 2" in read_meta(out)["model_card"]["summary"]
    same = adapt(data, tmp_path / "same", model=model, method="prototype", match_scale=False, export=False, progress=False).out
    assert Classifier(same).preprocess.crop_fraction == 1.0 and not read_meta(same)["adaptation"]["scale"]["applied"]


def test_training_leaves_the_classes_absent_from_the_data_alone():
    """Only the data's classes enter the loss: label smoothing over absent classes would pull the
    features and the absent classifier rows towards classes no cell belongs to."""
    from bloodcell.adaptation.tune import TuneSettings, tune_network

    torch.manual_seed(0)
    net = create_model("basic_cnn", num_classes=8).eval()
    pre = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    head = split_network(net, 8)[2]
    before = head.weight.detach().clone()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 4], 8)
    tune_network(net, pre, images, labels, TuneSettings(method="linear", epochs=5, label_smoothing=0.1))
    absent = [2, 3, 5, 6, 7]
    moved = (head.weight.detach() - before).norm(dim=1)
    assert float(moved[absent].max()) < 1e-3 * float(before[absent].norm(dim=1).min())
    assert float(moved[[0, 1, 4]].min()) > 0.01


def test_jittered_copies_keep_the_cells_and_add_seeded_variations():
    from bloodcell.adaptation.jitter import jittered_copies

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    labels = np.array([0, 1, 1, 4, 4])
    out, out_labels = jittered_copies(images, labels, 3, seed=7)
    assert out.shape == (15, 24, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(out[:5], images) and out_labels.tolist() == labels.tolist() * 3
    assert not np.array_equal(out[5:10], images) and not np.array_equal(out[5:10], out[10:])
    assert np.array_equal(out, jittered_copies(images, labels, 3, seed=7)[0])
    assert not np.array_equal(out, jittered_copies(images, labels, 3, seed=8)[0])
    same, same_labels = jittered_copies(images, labels, 1)
    assert same is images and same_labels is labels


@pytest.mark.parametrize("option, message", [({"copies": 0}, "--copies 0"), ({"epochs": -1}, "--epochs -1")])
def test_bad_settings_name_the_option(lab, tmp_path, option, message):
    with pytest.raises(ConfigError, match=f"{message}: must be a whole number of at least 1"):
        adapt(lab, tmp_path / "out", model=tiny_model(), progress=False, **option)
    assert not (tmp_path / "out").exists()


def test_the_imagenet_classifier_is_the_logistic_regression_folded_into_the_layer():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 3, 4], 10)
    feats = (rng.normal(size=(8, 30, 16)) + labels[None, :, None] * 0.7 * rng.normal(size=16)).astype(np.float32)
    weight, bias = fit_classifier(feats, labels, 8)
    x = feats.reshape(-1, 16).astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=3000).fit((x - mean) / std, np.tile(labels, 8))
    logits = x @ weight.T.astype(np.float64) + bias
    present = logits[:, [1, 3, 4]]
    probs = np.exp(present - present.max(1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), clf.predict_proba((x - mean) / std), atol=1e-4)
    absent = [0, 2, 5, 6, 7]
    assert not weight[absent].any()
    own = logits[np.arange(len(x)), np.tile(labels, 8)]
    assert own.min() - logits[:, absent].max() == pytest.approx(1.0, abs=1e-3)


def test_an_imagenet_network_votes_beside_the_adapted_model(lab, tmp_path):
    out = adapt(lab, tmp_path / "out", model=tiny_model(), epochs=1, export=False, progress=False).out
    meta = read_meta(out)
    assert meta["ensemble"]["weights"] == pytest.approx([1 / 2, 1 / 2])  # one network each: one vote each
    assert read_meta(out / "member_0")["architecture"] == read_meta(tiny_model())["architecture"]
    member = load_model(out / "member_1")
    assert member.meta["architecture"] == "efficientnet_lite0"
    assert member.preprocess.crop_fraction == meta["preprocess"]["crop_fraction"]
    imagenet = create_model("efficientnet_lite0", num_classes=8, pretrained=True)
    assert torch.equal(member.module.conv_stem.weight, imagenet.conv_stem.weight)
    rows = [member.class_names.index(c) for c in ("erythroblast", "ig", "neutrophil", "platelet")]
    assert not member.module.classifier.weight[rows].any()
    fitted = Classifier(out / "member_1").predict([lab])
    assert np.mean([p.label == p.true_label for p in fitted.predictions]) >= 0.9
    assert "ImageNet weights" in meta["model_card"]["summary"] and len(meta["adaptation"]["networks"]) == 2
    assert len(Classifier(out).predict([lab / "monocyte"]).predictions) == 8


def test_a_failed_onnx_export_keeps_the_adapted_model_and_says_so(lab, tmp_path, monkeypatch):
    import bloodcell.packaging.onnx as onnx_export

    def broken(*args, **kwargs):
        raise ConfigError("the exporter broke")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    result = adapt(lab, tmp_path / "out", model=tiny_model(), method="prototype", imagenet_member=False,
                   progress=False)
    assert result.onnx == "failed (the exporter broke); it predicts through PyTorch"
    assert not (result.out / "model.onnx").exists()
    assert Classifier(result.out).backend == "torch"
    skipped = adapt(lab, tmp_path / "plain", model=tiny_model(), method="prototype", imagenet_member=False,
                    export=False, progress=False)
    assert skipped.onnx is None and not (skipped.out / "model.onnx").exists()
