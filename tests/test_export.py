"""ONNX export round trip, int8, the torch-free runtime, OOD statistics and default-model packaging."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from _serve_helpers import CARD, SIZE, SRC, cells, cli, copy_model, tiny_model
from bloodcell import ConfigError, ModelError
from bloodcell.core.model_folder import FAMILIAR, META, ONNX, OOD, WEIGHTS, read_meta, write_meta
from bloodcell.networks import load_model
from bloodcell.packaging.onnx import export_onnx, read_onnx_metadata
from bloodcell.prediction.onnx_backend import OnnxModel
from bloodcell.prediction.torch_backend import predict_proba


def _prepared(n=4, seed=3):
    from PIL import Image

    x, _ = cells(n, seed=seed)
    return np.stack([np.asarray(Image.fromarray(i).resize((SIZE, SIZE), Image.Resampling.BILINEAR)) for i in x])


def test_fp32_round_trip_and_metadata():
    x = _prepared()
    loaded = load_model(tiny_model())
    onnx_model = OnnxModel(tiny_model())
    logits, scores = onnx_model.run(x, batch_size=7)  # uneven batches exercise the dynamic axis
    with torch.inference_mode():
        from bloodcell.core.preprocess import normalize

        ref = loaded.module(normalize(torch.from_numpy(x), loaded.preprocess)).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(onnx_model.predict_proba(x), predict_proba(loaded, x), atol=1e-5)
    assert scores.shape == (len(x),) and np.isfinite(scores).all()
    props = read_onnx_metadata(tiny_model() / ONNX)
    assert json.loads(props["bloodcell.class_names"])[0] == "basophil"
    assert json.loads(props["bloodcell.preprocess"])["image_size"] == SIZE
    assert json.loads(props["bloodcell.calibration"])["temperature"] == 1.5
    assert json.loads(props["bloodcell.model"])["model_card"]["name"] == "tiny test model"
    assert onnx_model.ood["threshold"] > 0 and onnx_model.quantization == "none"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_agrees_on_argmax(tmp_path, mode):
    x = _prepared(10, seed=4)
    calibration = _prepared(8, seed=5) if mode == "static" else None
    out = export_onnx(tiny_model(), tmp_path / f"{mode}.onnx", quantize=mode, calibration=calibration)
    q = OnnxModel(out)
    ref = OnnxModel(tiny_model()).predict_proba(x)
    agree = (q.predict_proba(x).argmax(1) == ref.argmax(1)).mean()
    assert agree >= 0.9
    assert q.quantization == f"{mode}-int8"
    assert read_onnx_metadata(out)["bloodcell.class_names"]


@pytest.mark.parametrize("size", [40, 64])
def test_custom_cnn_exports_at_sizes_its_pool_does_not_divide(tmp_path, size):
    from bloodcell import PreprocessConfig
    from bloodcell.networks import create_model, save_model

    torch.manual_seed(0)
    module = create_model("enhanced_cnn", num_classes=8).eval()
    pre = PreprocessConfig(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    folder = save_model(tmp_path / "m", module, {"architecture": "enhanced_cnn", "model_kwargs": {},
                                                 "preprocess": pre.to_dict()})
    out = export_onnx(folder, tmp_path / "m.onnx")
    x = np.random.default_rng(1).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    np.testing.assert_allclose(OnnxModel(out).predict_proba(x), predict_proba(load_model(folder), x), atol=1e-5)


def test_static_without_calibration_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs calibration images"):
        export_onnx(tiny_model(), tmp_path / "s.onnx", quantize="static")


def test_runtime_needs_no_torch():
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from bloodcell.prediction.classifier import Classifier
clf = Classifier({str(tiny_model())!r}, backend="onnx")
x = np.random.default_rng(0).integers(0, 255, (3, 50, 60, 3), dtype=np.uint8)
preds = clf.predict_arrays(list(x))
print(len(preds), preds[0].label in clf.class_names, preds[0].ood_score is not None)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "True", "True"]


def test_cli_predict_needs_no_torch(tmp_path):
    from _serve_helpers import write_png

    x, _ = cells(1, seed=6)
    img = write_png(tmp_path / "c.png", x[0])
    code = f"""
import sys
sys.modules["torch"] = None
from bloodcell.cli.main import main
raise SystemExit(main(["predict", "-m", {str(tiny_model())!r}, {str(img)!r}, "-f", "json"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["source"].endswith("c.png")


def test_onnx_file_alone_is_a_model(tmp_path):
    import shutil

    shutil.copy(tiny_model() / ONNX, tmp_path / "alone.onnx")
    from bloodcell.prediction.classifier import Classifier

    clf = Classifier(tmp_path / "alone.onnx")
    assert clf.backend == "onnx" and clf.meta["model_card"]["name"] == "tiny test model"
    assert clf.abstain_threshold == 0.55 and clf.ood_threshold is not None
    with pytest.raises(ModelError, match="need the model folder"):
        clf.explain(_prepared(1))


def test_not_an_onnx_model(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        OnnxModel(tmp_path / "x.onnx")


def test_ood_statistics_round_trip(tmp_path):
    from bloodcell.ood.fit import fit_head, save_head
    from bloodcell.ood.score import head_scores, load_head

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 20)) + np.repeat(np.eye(4, 20) * 5, 50, axis=0)
    labels = np.repeat(np.arange(4), 50)
    head = fit_head(feats, labels, dims=8)
    save_head(tmp_path, head)
    again = load_head(tmp_path)
    np.testing.assert_allclose(head_scores(again, feats), head_scores(head, feats), rtol=1e-6)
    assert 1.0 < np.median(head_scores(head, feats)) < 3.0
    far = rng.normal(size=(20, 20)) * 10
    assert head_scores(head, far).min() > np.percentile(head_scores(head, feats), 99)


def test_cell_check_round_trip_tells_cells_from_non_cells(tmp_path):
    from bloodcell.ood.fit import fit_cell_check, save_head
    from bloodcell.ood.score import CellCheckHead, head_scores, load_head

    rng = np.random.default_rng(1)
    cells_f = rng.normal(size=(120, 16)) + np.r_[3.0, np.zeros(15)]
    others = rng.normal(size=(60, 16)) - np.r_[3.0, np.zeros(15)]
    head = fit_cell_check(cells_f, others)
    save_head(tmp_path, head)
    again = load_head(tmp_path)
    assert isinstance(again, CellCheckHead) and again.dims == 16
    np.testing.assert_allclose(head_scores(again, cells_f), head_scores(head, cells_f), rtol=1e-6)
    fresh_cells = rng.normal(size=(50, 16)) + np.r_[3.0, np.zeros(15)]
    fresh_others = rng.normal(size=(50, 16)) - np.r_[3.0, np.zeros(15)]
    low, high = head_scores(head, fresh_cells), head_scores(head, fresh_others)  # probabilities of not being a cell
    assert 0 < low.min() and high.max() < 1 and np.median(low) < 0.5 < np.median(high)
    assert (low[:, None] < high[None, :]).mean() > 0.97  # ranks fresh non-cells above fresh cells
    with pytest.raises(ModelError, match="needs real cells and non-cell images"):
        fit_cell_check(cells_f, others[:0])


def test_unknown_ood_method_is_named(tmp_path):
    from bloodcell.ood.fit import fit_ood

    with pytest.raises(ModelError, match="Unknown out-of-distribution method 'knn'"):
        fit_ood(load_model(tiny_model(), "cpu"), _prepared(12), np.arange(12) % 4, _prepared(12, seed=4),
                per_kind=2, progress=False, method="knn")


def test_choose_threshold_separates():
    from bloodcell.ood.fit import choose_threshold, evaluate_threshold

    cells_s = np.linspace(1.0, 2.0, 100)
    other = np.linspace(4.0, 9.0, 50)
    t = choose_threshold(cells_s, other)
    assert 2.0 < t < 4.0
    report = evaluate_threshold(t, cells_s, other, ["noise"] * 50)
    assert report["false_flag_rate"] == 0.0 and report["detection_rate"] == 1.0 and report["auroc"] == 1.0
    # overlapping scores: at most 2% of cells may be flagged
    t2 = choose_threshold(np.linspace(1, 5, 100), np.linspace(3, 9, 100), max_false_flag=0.02)
    assert (np.linspace(1, 5, 100) > t2).mean() <= 0.02


def test_package_default(tmp_path):
    from bloodcell.packaging.package import package_default

    src = copy_model(tmp_path / "trained")
    for extra in (ONNX, OOD):
        (src / extra).unlink()
    for private in (META, WEIGHTS):  # a model its owner alone may read still packages readable by others
        (src / private).chmod(0o600)
    x, y = cells(8, seed=7)
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    out = package_default(src, tmp_path / "data.npz", tmp_path / "default_model", card={"name": "packaged"},
                          per_class=6, heldout_per_class=3, non_cells_per_kind=4, say=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == sorted([META, ONNX, "model.int8.onnx", WEIGHTS, OOD, FAMILIAR])
    assert 0 <= read_meta(out)["onnx_int8"]["argmax_agreement"] <= 1  # the int8 twin, measured on held-out cells
    meta = read_meta(out)
    assert meta["model_card"]["name"] == "packaged" and meta["model_card"]["licence"] == CARD["licence"]
    assert meta["ood"]["threshold"] > 0 and meta["onnx"]["argmax_agreement"] == 1.0
    assert meta["ood"]["method"] == "logistic-cell-vs-non-cell-penultimate"
    held = _prepared(6, seed=9)  # the ONNX graph scores like PyTorch
    from bloodcell import Classifier

    _, torch_scores = Classifier(out, backend="torch").scores(held)
    assert torch_scores.shape == (len(held), 2)  # the cell check's score and the familiarity score
    np.testing.assert_allclose(OnnxModel(out / ONNX).run(held)[1], torch_scores, rtol=1e-4, atol=1e-4)
    int8 = OnnxModel(out / "model.int8.onnx").run(held)[1][:, 1]  # the check stays float in the int8 twin
    assert np.corrcoef(int8, torch_scores[:, 1])[0, 1] > 0.95 and np.ptp(int8) > 0.5 * np.ptp(torch_scores[:, 1])
    assert (out / META).stat().st_mode & 0o044  # readable by others once installed
    assert all(p.stat().st_mode & 0o044 for p in out.rglob("*"))
    familiar = meta["familiarity"]
    assert familiar["quantile"] == 0.99 and familiar["threshold"] > 0 and familiar["threshold_chosen_on"] >= 10
    clf = Classifier(out)
    assert clf.backend == "onnx" and clf.familiar_threshold == familiar["threshold"]
    probs = np.full((3, 8), 0.001, np.float32)
    probs[:, 0] = 0.993
    odd = familiar["threshold"] * np.array([0.5, 1.01, 3.0])
    preds = clf.make_predictions(probs, np.stack([np.zeros(3), odd], 1))
    assert [(p.unfamiliar, p.uncertain) for p in preds] == [(False, False), (True, True), (True, True)]
    assert preds[1].to_dict()["unfamiliar"] is True and not any(p.not_a_blood_cell for p in preds)
    from bloodcell.evaluation import evaluate

    abstention = evaluate(out, tmp_path / "data.npz", split=None, bootstrap=0, quiet=True).summary["abstention"]
    both, alone = abstention["with_familiarity"], abstention["model_threshold"]
    assert both["n"] == alone["n"] and isinstance(abstention["unfamiliar"], int)
    assert alone["referred"] <= both["referred"] <= alone["referred"] + abstention["unfamiliar"]

    meta_src = read_meta(src)
    meta_src.pop("model_card")
    write_meta(src, meta_src)
    with pytest.raises(ConfigError, match="card lacks"):
        package_default(src, tmp_path / "data.npz", tmp_path / "d2", say=lambda m: None)
    assert not (tmp_path / "d2").exists()


def test_package_default_fills_card_metrics_from_the_evaluation(tmp_path):
    from bloodcell.evaluation.scoring import evaluate_dataset
    from bloodcell.networks import load_model
    from bloodcell.packaging.package import package_default

    src = copy_model(tmp_path / "trained")
    x, y = cells(8, seed=7)
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    summary = evaluate_dataset(load_model(src), tmp_path / "data.npz", None, n_boot=50, tta=True,
                               progress=False).to_json()
    summary = json.loads(json.dumps(summary))
    out = package_default(src, tmp_path / "data.npz", tmp_path / "default_model", evaluation=summary,
                          per_class=6, heldout_per_class=3, non_cells_per_kind=4, say=lambda m: None)
    metrics = read_meta(out)["model_card"]["metrics"]
    acc = summary["metrics"]["accuracy"]
    assert metrics["accuracy"].startswith(f"{100 * acc:.2f}% (95% CI ")
    assert set(metrics["per_class"]) == set(summary["metrics"]["per_class"]) - {"ig"} | (
        {"immature granulocyte"} if "ig" in summary["metrics"]["per_class"] else set())
    assert metrics["evaluated_on"].endswith(f"data.npz, {summary['metrics']['n']} images, evaluated once, "
                                            "test-time augmentation (8 views)")
    plain = summary["tta_comparison"]["plain"]["accuracy"]
    assert metrics["without_tta"].startswith(f"accuracy {100 * plain:.2f}%, macro-F1 ")

    other = json.loads(json.dumps(summary))
    other["model"]["weights_sha256"] = "0" * 64
    with pytest.raises(ConfigError, match="evaluation is of another model .*weights"):
        package_default(src, tmp_path / "data.npz", tmp_path / "d3", evaluation=other, say=lambda m: None)
    assert not (tmp_path / "d3").exists()
    del other["model"]["weights_sha256"]  # an evaluation from before digests: the model's description decides
    other["model"]["architecture"] = "resnet50"
    with pytest.raises(ConfigError, match="evaluation is of another model .*architecture"):
        package_default(src, tmp_path / "data.npz", tmp_path / "d3", evaluation=other, say=lambda m: None)
    assert not (tmp_path / "d3").exists()


def test_an_ensembles_evaluation_matches_it_and_no_other():
    from bloodcell.packaging.card import check_evaluation_matches

    meta = {"architecture": "ensemble", "ensemble": {"members": ["member_0", "member_1"]},
            "preprocess": {"image_size": 112}, "metrics": {}}
    summary = {"model": {"architecture": "ensemble of 2: efficientnet_lite0, efficientnet_lite0", "image_size": 112,
                         "training_metrics": {}, "weights_sha256": "a" * 64}}
    check_evaluation_matches(summary, meta, "ev", weights_sha256="a" * 64)
    check_evaluation_matches(summary, meta, "ev")
    with pytest.raises(ConfigError, match="weights"):
        check_evaluation_matches(summary, meta, "ev", weights_sha256="b" * 64)
    three = {**meta, "ensemble": {"members": ["member_0", "member_1", "member_2"]}}
    with pytest.raises(ConfigError, match="architecture"):
        check_evaluation_matches(summary, three, "ev")


def test_half_storage_halves_the_file_and_computes_the_same(tmp_path):
    """float16 storage of batch-normed convolutions: smaller file, same outputs as float32 storage of the same weights."""
    import collections

    import onnx

    from bloodcell import PreprocessConfig
    from bloodcell.networks import create_model, save_model
    from bloodcell.packaging.package import _half_weights

    torch.manual_seed(1)
    model = create_model("enhanced_cnn", num_classes=8).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    pre = PreprocessConfig(image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    folder = save_model(tmp_path / "m", model, {"architecture": "enhanced_cnn", "model_kwargs": {},
                                                "preprocess": pre.to_dict()})
    _half_weights(folder)  # as `export --format default --half-weights` stores them
    full = export_onnx(folder, tmp_path / "full.onnx")
    half = export_onnx(folder, tmp_path / "half.onnx", half_storage=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    ops = collections.Counter(n.op_type for n in onnx.load(str(half)).graph.node)
    assert ops["Cast"] >= 4 and ops["BatchNormalization"] >= 4  # weights stored exactly, batch norm fused at load
    x = _prepared(12, seed=9)
    a, b = OnnxModel(full).predict_proba(x), OnnxModel(half).predict_proba(x)
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert OnnxModel(half).quantization == "none"


def test_package_default_takes_an_ensemble(tmp_path):
    from safetensors import safe_open

    from bloodcell.networks.ensemble import make_ensemble
    from bloodcell.packaging.package import package_default

    members = []
    for i in range(2):
        folder = copy_model(tmp_path / f"m{i}")
        meta = read_meta(folder)
        meta["history"] = [{"epoch": 1, "seconds": 60.0 * (i + 1)}]
        meta["training"] = {"epochs_run": 1, "best_epoch": 1, "stopped": "completed", "threads": 1}
        write_meta(folder, meta)
        members.append(folder)
    ens = make_ensemble(members, tmp_path / "ens")
    x, y = cells(8, seed=7)
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    out = package_default(ens, tmp_path / "data.npz", tmp_path / "pkg", card=CARD, per_class=6, heldout_per_class=3,
                          non_cells_per_kind=4, half_weights=True, say=lambda m: None)
    meta = read_meta(out)
    names = meta["ensemble"]["members"]
    runs = meta["model_card"]["training_run"]
    assert set(runs) == set(names) and sorted(r["wall_time_minutes"] for r in runs.values()) == [1.0, 2.0]
    assert meta["onnx"]["argmax_agreement"] == 1.0 and meta["onnx"]["max_abs_prob_diff"] < 1e-4
    for name in names:
        with safe_open(str(out / name / WEIGHTS), "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert OnnxModel(out).predict_proba(_prepared(3)).shape == (24, 8)


def test_cli_refuses_half_weights_with_int8(tmp_path):
    run = cli("export", str(tiny_model()), "-o", str(tmp_path / "q.onnx"), "--quantize", "dynamic", "--half-weights")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "--half-weights stores float32 weights as float16; an int8 graph (--quantize dynamic)" in run.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_export_verbs_are_importable_from_bloodcell(tmp_path):
    import bloodcell

    out = bloodcell.export(tiny_model(), output=tmp_path / "m.onnx", say=lambda m: None)
    assert OnnxModel(out).predict_proba(_prepared(1)).shape == (8, 8)
    with pytest.raises(ConfigError, match="an int8 graph"):
        bloodcell.export(tiny_model(), output=tmp_path / "q.onnx", quantize="dynamic", half_weights=True)
    with pytest.raises(ConfigError, match="needs --calibration-data"):
        bloodcell.export(tiny_model(), output=tmp_path / "s.onnx", quantize="static")
    with pytest.raises(ConfigError, match="needs --data"):
        bloodcell.export(tiny_model(), format="default", output=tmp_path / "pkg")
    card = bloodcell.info(tiny_model())
    assert card["name"] == "tiny test model" and card["files"][ONNX] > 0
    assert bloodcell.info(tiny_model(), text=True).startswith("tiny test model\n")


def test_static_calibration_sample_is_seeded_and_prepared(tmp_path):
    from bloodcell.packaging.exporter import calibration_sample

    data = tmp_path / "cells.npz"
    x, y = cells(12, seed=2)
    np.savez(data, images=x, labels=y)
    a, b = calibration_sample(data, tiny_model(), 5), calibration_sample(data, tiny_model(), 5)
    assert a.shape == (5, SIZE, SIZE, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_export_output_that_cannot_be_written_is_refused_before_work(tmp_path):
    import bloodcell

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="afile is a file, not a folder"):
        bloodcell.export(tiny_model(), output=afile / "m.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        bloodcell.export(tiny_model(), output=tmp_path / "folder.onnx")
    with pytest.raises(ConfigError, match="existing file, not a folder"):
        bloodcell.export(tiny_model(), format="default", output=afile, data=afile)
    with pytest.raises(ConfigError, match="afile is an existing file"):
        bloodcell.export(tiny_model(), format="default", output=afile / "pkg", data=afile)
    run = cli("export", str(tiny_model()), "-o", str(afile / "m.onnx"))
    assert run.returncode == 2 and "Traceback" not in run.stderr and "afile is a file" in run.stderr


def test_ood_is_fitted_on_cells_under_the_training_augmentation_when_the_model_learnt_lab_shifts(tmp_path):
    from bloodcell.ood.score import METHOD
    from bloodcell.packaging.package import package_default
    from bloodcell.training.augment import augmented_copies
    from bloodcell.training.config import AugmentConfig

    x, y = cells(8, seed=7)
    np.savez(tmp_path / "data.npz", images=x, labels=y)
    records = {}
    for name, augment in (("plain", {"hflip": True}), ("shifted", {"hflip": True, "white_balance": 0.3, "zoom_in": 2.0})):
        src = copy_model(tmp_path / name)
        for extra in (ONNX, OOD):
            (src / extra).unlink()
        meta = read_meta(src)
        meta["config"] = {"augment": augment}
        write_meta(src, meta)
        out = package_default(src, tmp_path / "data.npz", tmp_path / f"pkg_{name}", per_class=6, heldout_per_class=3,
                              non_cells_per_kind=4, ood_method=METHOD, say=lambda m: None)  # the distance check
        records[name] = read_meta(out)["ood"]
    assert records["plain"]["cells_under_training_augmentation"] is False
    assert records["shifted"]["cells_under_training_augmentation"] is True
    assert records["shifted"]["fitted_on_images"] == 2 * records["plain"]["fitted_on_images"]
    # A model trained without lab shifts gets them for its check alone when packaging is told so.
    src = copy_model(tmp_path / "told")
    for extra in (ONNX, OOD):
        (src / extra).unlink()
    out = package_default(src, tmp_path / "data.npz", tmp_path / "pkg_told", per_class=6, heldout_per_class=3,
                          non_cells_per_kind=4, ood_augment=AugmentConfig(white_balance=0.3), say=lambda m: None)
    told = read_meta(out)
    assert told["ood"]["cells_under_training_augmentation"] is True
    assert told["ood"]["fitted_on_images"] == records["shifted"]["fitted_on_images"]
    assert 0.05 < told["training_cell_share"] <= 1.0
    # The cell check needs other-lab copies: a model that never learnt lab shifts gets robust_default's.
    out = package_default(src, tmp_path / "data.npz", tmp_path / "pkg_cell_check", per_class=6, heldout_per_class=3,
                          non_cells_per_kind=4, say=lambda m: None)
    cell_check = read_meta(out)["ood"]
    assert cell_check["method"] == "logistic-cell-vs-non-cell-penultimate"
    assert cell_check["cells_under_training_augmentation"] is True
    assert cell_check["fitted_on_images"] == records["shifted"]["fitted_on_images"]
    images = _prepared(4)
    cfg = AugmentConfig(white_balance=0.3)
    shifted = augmented_copies(images, cfg, seed=1)
    assert shifted.shape == images.shape and shifted.dtype == np.uint8 and not np.array_equal(shifted, images)
    np.testing.assert_array_equal(shifted, augmented_copies(images, cfg, seed=1))  # seeded


def test_unknown_ood_augment_recipe_is_named_before_any_work(tmp_path):
    from bloodcell.packaging.exporter import export

    with pytest.raises(ConfigError, match="--ood-augment 'robust_defualt' is not a training recipe.*robust_default") as e:
        export(tiny_model(), format="default", data=str(tmp_path), output=tmp_path / "pkg", ood_augment="robust_defualt")
    assert "--config" not in str(e.value) and not (tmp_path / "pkg").exists()


def test_options_of_the_other_format_are_refused_not_ignored(tmp_path):
    """A card, metrics or fitting size given to an .onnx export, or an opset or calibration set given to
    the packaging, were dropped without a word."""
    import bloodcell

    with pytest.raises(ConfigError, match=r"--card, --per-class are for --format default; --format onnx"):
        bloodcell.export(tiny_model(), output=tmp_path / "m.onnx", card=tmp_path / "card.yaml", per_class=50)
    with pytest.raises(ConfigError, match=r"--opset is for --format onnx"):
        bloodcell.export(tiny_model(), format="default", output=tmp_path / "p", data=tmp_path, opset=18)
    with pytest.raises(ConfigError, match=r"--calibration-data is for --format onnx"):
        bloodcell.export(tiny_model(), format="default", output=tmp_path / "p", data=tmp_path, calibration_data=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_exported_onnx_file_given_where_a_folder_is_needed_is_named(tmp_path):
    """evaluate on a lone .onnx file said "/tmp: no model here", naming its folder, not the file."""
    import bloodcell

    out = bloodcell.export(tiny_model(), output=tmp_path / "m.onnx", say=lambda m: None)
    with pytest.raises(ModelError, match=r"m\.onnx: a file, and no model\.json beside it.*bloodcell predict --model"):
        bloodcell.evaluate(out, tmp_path, quiet=True)
    assert load_model(tiny_model() / "model.json").meta["architecture"]  # a file inside a model folder still loads


def test_features_already_extracted_are_not_extracted_again(monkeypatch):
    """Packaging extracted the plain training cells' features twice (the cell check and the familiarity
    check); fit_ood now takes those it is given and extracts only the rest, with the same result."""
    from bloodcell.ood import fit as ood_fit

    loaded = load_model(tiny_model(), "cpu")
    plain, held = _prepared(3), _prepared(2, seed=4)
    train = np.concatenate([plain, plain[:, ::-1]])  # the plain cells, then copies of them
    labels = np.tile(np.repeat(np.arange(8), 3), 2)
    known = (ood_fit.extract_features(loaded, plain), ood_fit.extract_features(loaded, held))
    seen, real = [], ood_fit.extract_features

    def counted(model, images, *args, **kwargs):
        seen.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(ood_fit, "extract_features", counted)
    _, alone = ood_fit.fit_ood(loaded, train, labels, held, per_kind=2, progress=False)
    extracted_alone, seen[:] = sum(seen), []
    _, given = ood_fit.fit_ood(loaded, train, labels, held, per_kind=2, progress=False, known=known)
    assert sum(seen) == extracted_alone - len(plain) - len(held)
    assert given["threshold"] == pytest.approx(alone["threshold"], rel=1e-4)
    assert given["train_score_median"] == pytest.approx(alone["train_score_median"], rel=1e-3)
    head, info = ood_fit.fit_familiarity(known[0], labels[:len(plain)], known[1])
    assert info["fitted_on_images"] == len(plain) and info["threshold_chosen_on"] == len(held)
