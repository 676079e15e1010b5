"""Evaluation of in-memory arrays, the HTML report, figures and stored calibration (no data layer needed)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from _evaluate_helpers import cells, one_thread, tiny_model
from bloodcell.core.classes import CLASSES
from bloodcell.core.errors import ConfigError, DataError, ModelError
from bloodcell.core.model_folder import read_meta
from bloodcell.evaluation import plots
from bloodcell.evaluation.calibration import view_probs
from bloodcell.evaluation.fit_calibration import fit_calibration, store_calibration
from bloodcell.evaluation.html_report import SECTIONS, most_confident_mistakes, write_report
from bloodcell.evaluation.scoring import evaluate_arrays
from bloodcell.networks import load_model
from bloodcell.prediction.torch_backend import predict_logits, predict_proba, predict_view_logits

FIVE = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model8(tmp_path_factory):
    return load_model(tiny_model(tmp_path_factory.mktemp("m8") / "model", temperature=1.7))


def test_probabilities_match_inference_and_temperature(model8):
    x, y = cells(60, seed=1)
    ev = evaluate_arrays(model8, x, y, CLASSES, n_boot=50)
    np.testing.assert_allclose(ev.probs, predict_proba(model8, x, calibrated=True), atol=1e-5)
    np.testing.assert_allclose(ev.probs_uncalibrated, predict_proba(model8, x, calibrated=False), atol=1e-5)
    s = ev.summary
    assert s["metrics"]["accuracy"] == pytest.approx((ev.probs.argmax(1) == y).mean())
    assert s["calibration"]["temperature"] == 1.7
    assert s["calibration"]["ece_calibrated"] == pytest.approx(s["metrics"]["ece"])
    assert s["abstention"]["model_threshold"]["threshold"] == 0.6
    kept = ev.probs.max(1) >= 0.6
    assert s["abstention"]["model_threshold"]["coverage"] == pytest.approx(kept.mean())
    assert s["tta_comparison"] is None
    json.dumps(ev.to_json())  # JSON-ready


def test_tta_block_measures_gain_and_cost(model8):
    x, y = cells(40, seed=2)
    ev = evaluate_arrays(model8, x, y, CLASSES, tta=True, n_boot=0)
    np.testing.assert_allclose(ev.probs, predict_proba(model8, x, tta=True), atol=1e-5)
    t = ev.summary["tta_comparison"]
    plain_acc = (predict_proba(model8, x).argmax(1) == y).mean()
    assert t["plain"]["accuracy"] == pytest.approx(plain_acc)
    assert t["gain"]["accuracy"] == pytest.approx(t["tta"]["accuracy"] - plain_acc)
    assert t["tta"]["seconds"] > 0 and t["slowdown"] > 1
    assert t["fixed"] - t["broken"] == round(t["gain"]["accuracy"] * len(y))


def test_tta_uses_its_own_temperature_and_threshold(tmp_path):
    folder = tiny_model(tmp_path / "m", steps=5, temperature=1.7)
    loaded = load_model(folder)
    loaded.meta["calibration"]["tta"] = {"temperature": 0.8, "abstain_threshold": 0.55}
    x, y = cells(24, seed=11)
    views = predict_view_logits(loaded, x)
    assert views.shape == (8, 24, 8)
    np.testing.assert_allclose(views[0], predict_logits(loaded, x), atol=1e-5)
    np.testing.assert_allclose(predict_proba(loaded, x, tta=True), view_probs(views, 0.8), atol=1e-5)
    np.testing.assert_allclose(predict_proba(loaded, x, tta=False), view_probs(views[:1], 1.7), atol=1e-5)
    ev = evaluate_arrays(loaded, x, y, CLASSES, tta=True, n_boot=0)
    cal = ev.summary["calibration"]
    assert cal["tta_temperature"] == 0.8 and cal["tta_temperature_fitted"]
    assert cal["ece_tta_calibrated"] == pytest.approx(ev.metrics["ece"])
    assert ev.summary["abstention"]["model_threshold_kind"] == "tta"
    assert ev.summary["abstention"]["model_threshold"]["threshold"] == 0.55
    assert not any("calibrate --tta" in n for n in ev.summary["notes"])
    logits = predict_logits(loaded, x)
    fitted = fit_calibration(logits, y, 0.9, view_logits=views)
    assert fitted["tta"]["temperature"] > 0 and fitted["tta"]["validation"]["n_images"] == 24


def test_partial_label_set_against_full_model(model8):
    x, y = cells(80, classes=FIVE, seed=3)
    ev = evaluate_arrays(model8, x, y, FIVE, n_boot=0)
    m = ev.metrics
    assert m["evaluated_classes"] == list(FIVE)
    assert m["absent_classes"] == ["erythroblast", "ig", "platelet"]
    pred = predict_proba(model8, x).argmax(1)
    absent_idx = [CLASSES.index(c) for c in ("erythroblast", "ig", "platelet")]
    assert m["absent_predictions"]["count"] == int(np.isin(pred, absent_idx).sum())
    assert any("Partial label set" in n for n in ev.summary["notes"])
    assert ev.y_true.max() <= CLASSES.index("neutrophil")


def test_classes_the_model_lacks_are_left_out(tmp_path):
    four = ("basophil", "eosinophil", "lymphocyte", "platelet")
    loaded = load_model(tiny_model(tmp_path / "m4", classes=four, steps=3))
    names = ("basophil", "eosinophil", "lymphocyte", "platelet", "monocyte")
    x, y = cells(50, classes=names, seed=4)
    ev = evaluate_arrays(loaded, x, y, names, n_boot=0)
    assert ev.summary["data"]["left_out"] == {"monocyte": int((y == 4).sum())}
    assert ev.summary["data"]["n_images"] == int((y != 4).sum())
    assert any("does not predict monocyte" in n for n in ev.summary["notes"])


def test_disjoint_classes_and_empty_data(model8, tmp_path):
    two = ("erythroblast", "platelet")
    loaded = load_model(tiny_model(tmp_path / "m2", classes=two, steps=1))
    x, y = cells(10, classes=("lymphocyte", "monocyte"), seed=5)
    with pytest.raises(ModelError, match="share no class.*erythroblast, platelet.*lymphocyte, monocyte"):
        evaluate_arrays(loaded, x, y, ("lymphocyte", "monocyte"))
    with pytest.raises(DataError, match="no labelled images"):
        evaluate_arrays(model8, x[:0], y[:0], CLASSES, source="empty.npz")


def test_report_is_self_contained_with_every_section(model8, tmp_path):
    x, y = cells(60, seed=6)
    ev = evaluate_arrays(model8, x, y, CLASSES, tta=True, n_boot=100)
    path = write_report(ev, tmp_path / "rep", n_mistakes=6, gradcam_per_class=2)
    page = path.read_text()
    for sid, title in SECTIONS:
        assert f"<section id='{sid}'><h2>{title}</h2>" in page, sid
        assert f"<a href='#{sid}'>{title}</a>" in page, sid
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert page.count("data:image/png;base64,") == 8
    assert "95% CI" in page and "Coverage at 99.5%" in page and "Coverage at 99.8%" in page
    for name in ("training_curves", "confusion_matrix", "per_class", "reliability", "confidence",
                 "accuracy_coverage", "mistakes", "gradcam"):
        with Image.open(tmp_path / "rep" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(ev.metrics["accuracy"])


def test_report_sections_explain_missing_figures(tmp_path):
    loaded = load_model(tiny_model(tmp_path / "m", steps=0))
    loaded.meta["history"] = []
    x, y = cells(12, seed=7)
    ev = evaluate_arrays(loaded, x, y, CLASSES, n_boot=0)
    ev.probs = np.eye(8, dtype=np.float32)[ev.y_true]  # a perfect model: no mistakes to show
    page = write_report(ev, tmp_path / "rep", gradcam_per_class=1).read_text()
    assert "holds no training history" in page and "No image was misclassified" in page
    assert not (tmp_path / "rep" / "mistakes.png").exists()
    page = write_report(ev, tmp_path / "rep0", gradcam_per_class=0).read_text()
    assert "were not asked for" in page and not (tmp_path / "rep0" / "gradcam.png").exists()


def test_most_confident_mistakes_order(model8):
    x, y = cells(60, seed=8)
    ev = evaluate_arrays(model8, x, y, CLASSES, n_boot=0)
    idx = most_confident_mistakes(ev, 5)
    conf = ev.probs.max(1)
    assert all(ev.probs[i].argmax() != ev.y_true[i] for i in idx)
    assert list(conf[idx]) == sorted(conf[idx], reverse=True)
    wrong = ev.probs.argmax(1) != ev.y_true
    assert conf[idx[0]] == pytest.approx(conf[wrong].max())


def test_unwritable_report_folder(model8, tmp_path):
    x, y = cells(12, seed=7)
    ev = evaluate_arrays(model8, x, y, CLASSES, n_boot=0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="report folder .*file.txt is an existing file"):
        write_report(ev, blocker)
    with pytest.raises(ConfigError, match="Cannot write the report folder .*file.txt/sub"):
        write_report(ev, blocker / "sub")


def test_fit_and_store_calibration_keeps_other_fields(model8, tmp_path):
    x, y = cells(120, seed=9)
    logits = predict_logits(model8, x)
    cal = fit_calibration(logits, y, target_accuracy=0.9)
    assert cal["temperature"] > 0
    v = cal["validation"]
    assert v["nll_after"] <= v["nll_before"] + 1e-9
    if cal["abstain_threshold"] is not None:
        assert v["accuracy_accepted"] >= 0.9
    folder = tiny_model(tmp_path / "m", steps=1)
    before = read_meta(folder)
    store_calibration(folder, cal)
    after = read_meta(folder)
    assert after["calibration"]["temperature"] == cal["temperature"]
    assert {k: v for k, v in after.items() if k != "calibration"} == before
    assert load_model(folder).temperature == pytest.approx(cal["temperature"])
    with pytest.raises(DataError, match="target-accuracy"):
        fit_calibration(logits, y, target_accuracy=99.5)


def test_figures_handle_edge_cases():
    assert plots.training_curves([]) is None
    assert plots.mistakes_grid(np.zeros((0, 8, 8, 3), np.uint8), [], [], []) is None
    assert plots.gradcam_grid([]) is None
    partial = {"rows": ["lymphocyte"], "columns": ["lymphocyte", "platelet"], "counts": [[3, 1]],
               "row_normalized": [[0.75, 0.25]]}
    fig = plots.confusion_matrix(partial)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["Lymphocyte", "Platelet\n(absent)"]
    png = plots.to_png(fig)
    assert Image.open(io.BytesIO(png)).format == "PNG"
    rows = [{"name": "a", "accuracy": 0.97, "macro_f1": 0.96, "ece": 0.01, "images_per_second": 300.0,
             "accuracy_ci": [0.96, 0.98], "parameters": 1_000_000},
            {"name": "b", "accuracy": 0.95, "macro_f1": 0.94, "ece": 0.02, "images_per_second": None}]
    assert len(plots.compare_bars(rows).axes) == 4


def test_compare_rows_named_by_folder_with_parent_where_folders_share_a_name():
    from bloodcell.evaluation.comparison import _unique_names

    rows = [{"path": "runs/zoo/ensemble_3arch/ensemble", "tta": False},
            {"path": "runs/default/ensemble", "tta": False},
            {"path": "runs/default/ensemble", "tta": True},
            {"path": "runs/zoo/basic_cnn", "tta": False},
            {"path": "runs/zoo/basic_cnn", "tta": True}]
    _unique_names(rows)
    assert [r["name"] for r in rows] == ["ensemble_3arch/ensemble", "default/ensemble", "default/ensemble",
                                         "basic_cnn", "basic_cnn"]
