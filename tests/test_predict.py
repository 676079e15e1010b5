"""bloodcell predict / info and the Classifier API: inputs, flags, outputs, differential, default model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from _serve_helpers import cells, cli, copy_model, tiny_model, write_png
from bloodcell import ModelError
from bloodcell.core import model_choice as bundled
from bloodcell.prediction.classifier import Classifier, Prediction, differential
from bloodcell.prediction.inputs import collect
from bloodcell.prediction.outputs import differential_table, predictions_csv, table


@pytest.fixture
def image_tree(tmp_path):
    """Folder with 2 PNGs + a nested JPEG + a text file + a corrupt PNG; a class tree; an .npz."""
    x, y = cells(2, seed=5)
    root = tmp_path / "smear"
    write_png(root / "a.png", x[0])
    write_png(root / "b.png", x[9])
    write_png(root / "sub" / "c.png", x[3])
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    tree = tmp_path / "labelled"
    write_png(tree / "neutrophil" / "n1.png", x[12])
    write_png(tree / "Platelet" / "p1.png", x[14])
    np.savez(tmp_path / "cells.npz", images=x[:4])
    return tmp_path


def test_collect_files_folders_globs_npz(image_tree):
    items, problems = collect([
        image_tree / "smear",
        str(image_tree / "smear" / "*.png"),  # repeats of folder items
        image_tree / "labelled",
        image_tree / "cells.npz",
        image_tree / "missing.png",
        str(image_tree / "nothing" / "*.jpg"),
    ])
    sources = [i.source for i in items]
    assert sum(s.endswith("a.png") for s in sources) == 1
    assert any(s.endswith("sub/c.png") for s in sources)
    assert [i.label for i in items if "labelled" in i.source] == ["neutrophil", "platelet"]
    assert sum(i.dataset is not None for i in items) == 4
    kinds = {p.kind for p in problems}
    assert {"not-image", "missing", "no-match", "repeated"} <= kinds
    assert any("notes.txt" in p.message for p in problems)


def test_classifier_skips_unreadable_and_flags(image_tree):
    clf = Classifier(tiny_model())
    assert clf.backend == "onnx"
    run = clf.predict([image_tree / "smear", image_tree / "cells.npz"])
    assert len(run.predictions) == 3 + 4
    unreadable = [p for p in run.problems if p.kind == "unreadable"]
    assert len(unreadable) == 1 and "broken.png" in unreadable[0].message
    for p in run.predictions:
        assert p.label in clf.class_names
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4
        assert p.probability == max(p.probabilities.values())
        assert p.uncertain == (p.probability < clf.abstain_threshold)
        assert p.not_a_blood_cell is False  # synthetic cells resemble the training data
    assert clf.abstain_source == "calibrated" and clf.abstain_threshold == 0.55


def test_not_a_blood_cell_flag_on_non_cells():
    from bloodcell.ood.noncell import non_cell_images

    clf = Classifier(tiny_model())
    others, _ = non_cell_images(per_kind=3, size=64, seed=11)
    preds = clf.predict_arrays(list(others))
    assert np.mean([p.not_a_blood_cell for p in preds]) >= 0.9
    cells_x, _ = cells(3, seed=12)
    assert not any(p.not_a_blood_cell for p in clf.predict_arrays(list(cells_x)))


def test_torch_and_onnx_backends_agree(image_tree):
    files = [image_tree / "smear" / "a.png", image_tree / "smear" / "b.png"]
    a = Classifier(tiny_model(), backend="onnx").predict(files).predictions
    b = Classifier(tiny_model(), backend="torch").predict(files).predictions
    for pa, pb in zip(a, b):
        assert pa.label == pb.label
        assert abs(pa.probability - pb.probability) < 1e-4
        assert abs(pa.ood_score - pb.ood_score) < 1e-3 * max(1.0, pb.ood_score)


def test_uncalibrated_model_falls_back(tmp_path):
    from bloodcell.core.files import atomic_write_json

    folder = copy_model(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta.pop("calibration")
    atomic_write_json(folder / "model.json", meta)
    clf = Classifier(folder, backend="torch")
    assert clf.temperature == 1.0 and clf.abstain_source == "default" and clf.abstain_threshold == 0.5


def test_tta_uses_the_calibration_fitted_for_tta(tmp_path):
    from bloodcell.core.files import atomic_write_json

    folder = copy_model(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    meta["calibration"]["tta"] = {"temperature": 0.8, "abstain_threshold": 0.7}
    atomic_write_json(folder / "model.json", meta)
    plain = Classifier(folder)
    assert plain.abstain_threshold == 0.55 and plain.temperature == meta["calibration"]["temperature"]
    tta = Classifier(folder, tta=True)
    assert tta.backend == "torch" and tta.temperature == 0.8
    assert tta.abstain_threshold == 0.7 and tta.abstain_source == "calibrated for TTA"
    assert Classifier(folder, tta=True, abstain_threshold=0.2).abstain_threshold == 0.2
    meta["calibration"]["tta"] = {"temperature": 0.8, "abstain_threshold": None}
    atomic_write_json(folder / "model.json", meta)
    assert Classifier(folder, tta=True).abstain_source == "calibrated"


def test_stale_onnx_falls_back_to_torch(tmp_path):
    folder = copy_model(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state = {k: v * 1.01 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="exported from other weights"):
        clf = Classifier(folder)
    assert clf.backend == "torch"


def _pred(label, prob, uncertain=False, ood=False):
    probs = {c: 0.0 for c in ("basophil", "neutrophil", "platelet")}
    probs[label] = prob
    return Prediction("x", label, prob, probs, uncertain, ood, 1.0)


def test_differential_counts_and_exclusions():
    preds = [_pred("neutrophil", 0.9)] * 6 + [_pred("platelet", 0.4, uncertain=True)] * 2 + [_pred("basophil", 0.9, ood=True)]
    d = differential(preds, ("basophil", "neutrophil", "platelet"))
    assert (d.total, d.counted, d.excluded, d.uncertain) == (9, 8, 1, 2)
    rows = {r["class"]: r for r in d.rows}
    assert rows["neutrophil"]["count"] == 6 and rows["neutrophil"]["percent"] == 75.0
    assert rows["basophil"]["count"] == 0
    assert rows["platelet"]["uncertain"] == 2
    lo, hi = rows["neutrophil"]["ci95"]
    assert lo < 75.0 < hi
    text = differential_table(d)
    assert "1 image(s) flagged not a blood cell" in text and "neutrophil" in text


def test_a_differential_of_no_cell_has_no_shares():
    """Every image flagged not a cell: the shares were 0.0% with a 0-100% interval, beside a lab
    differential saying none; now none in JSON (null), the table ("-") and the CSV (empty)."""
    from bloodcell.prediction.outputs import differential_csv

    d = differential([_pred("basophil", 0.9, ood=True)] * 3, ("basophil", "neutrophil", "platelet"))
    assert (d.counted, d.excluded) == (0, 3)
    assert all(r["percent"] is None and r["ci95"] is None for r in d.to_dict()["classes"])
    table = differential_table(d).splitlines()
    assert table[2].split() == ["basophil", "0", "-", "-", "0"] and table[-1].split() == ["total", "0", "-"]
    assert differential_csv(d).splitlines()[1] == "basophil,0,,,,0"


def test_table_and_csv_outputs():
    preds = [_pred("neutrophil", 0.9), _pred("platelet", 0.4, uncertain=True)]
    names = ("basophil", "neutrophil", "platelet")
    t = table(preds, names)
    assert "uncertain" in t.splitlines()[2] and "neut" in t.splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(predictions_csv(preds, names))))
    assert rows[1]["label"] == "platelet" and rows[1]["uncertain"] == "1" and float(rows[0]["p_neutrophil"]) == 0.9


def test_cli_predict_formats(image_tree, tmp_path):
    env = {"BLOODCELL_MODEL": str(tiny_model())}
    r = cli("predict", str(image_tree / "smear"), str(image_tree / "labelled"), env=env)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr and "broken.png" in r.stderr and "notes.txt" in r.stderr
    assert "Differential: 5 cells" in r.stdout and "accuracy against the given labels" in r.stdout

    r = cli("predict", str(image_tree / "cells.npz"), "-f", "json", env=env)
    doc = json.loads(r.stdout)
    assert len(doc["predictions"]) == 4 and doc["differential"]["counted"] == 4
    assert set(doc["predictions"][0]["probabilities"]) == set(doc["model"]["classes"])
    assert doc["model"]["backend"] == "onnx"

    out = tmp_path / "out.csv"
    r = cli("predict", str(image_tree / "smear" / "*.png"), "-f", "csv", "-o", str(out), env=env)
    assert r.returncode == 0 and r.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and {"p_neutrophil", "not_a_blood_cell", "uncertain"} <= set(rows[0])

    r = cli("predict", str(image_tree / "cells.npz"), "--differential", "only", "-f", "csv", env=env)
    assert r.stdout.splitlines()[0] == "class,count,percent,ci95_low,ci95_high,uncertain"


def test_cli_predict_reads_the_format_from_the_output_suffix(image_tree, tmp_path):
    env = {"BLOODCELL_MODEL": str(tiny_model())}
    out = tmp_path / "guessed.csv"
    r = cli("predict", str(image_tree / "smear" / "*.png"), "-o", str(out), env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len(list(csv.DictReader(out.open()))) == 2
    table_file = tmp_path / "table.txt"
    r = cli("predict", str(image_tree / "smear" / "*.png"), "-o", str(table_file), env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "2 image(s) classified" in r.stderr and "a.png" in table_file.read_text()
    r = cli("predict", str(image_tree / "cells.npz"), "--differential", "only", "-o", str(tmp_path / "d.json"), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "d.json").read_text())["differential"]["counted"] == 4


def test_cli_predict_nothing_readable(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    r = cli("predict", str(tmp_path / "x.txt"), env={"BLOODCELL_MODEL": str(tiny_model())})
    assert r.returncode == 2
    assert "no image could be classified" in r.stderr and "Traceback" not in r.stderr


def test_default_model_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(bundled.ENV, raising=False)
    monkeypatch.setattr(bundled, "packaged_model_dir", lambda: tmp_path / "absent")
    with pytest.raises(ModelError, match="No default model is installed"):
        bundled.resolve_model(None)
    monkeypatch.setattr(bundled, "packaged_model_dir", lambda: tiny_model())
    assert bundled.resolve_model(None) == tiny_model()
    assert Classifier().path == tiny_model()
    with pytest.raises(ModelError, match="no such model"):
        bundled.resolve_model(tmp_path / "nope")


def test_cli_no_default_model_message(tmp_path):
    r = cli("predict", "x.png", env={bundled.ENV: str(tmp_path / "gone")})
    assert r.returncode == 2 and "no such model" in r.stderr and "Traceback" not in r.stderr


def test_info_shows_card():
    r = cli("info", str(tiny_model()))
    assert r.returncode == 0, r.stderr
    for text in ("tiny test model", "intended use", "limitations", "licence", "Acevedo", "temperature 1.5",
                 "out of distribution", "false_flag_rate", "model.onnx"):
        assert text in r.stdout
    doc = json.loads(cli("info", str(tiny_model()), "--json").stdout)
    assert doc["classes"][0] == "basophil" and doc["calibration"]["abstain_threshold"] == 0.55
    assert doc["out_of_distribution"]["method"] == "mahalanobis-penultimate"


def test_hidden_image_named_files_in_a_plain_folder_are_reported(tmp_path):
    from bloodcell.prediction.inputs import collect

    (tmp_path / "cell.png").write_bytes(b"")
    (tmp_path / "._cell.png").write_bytes(b"\x00\x05\x16\x07")
    items, problems = collect([tmp_path])
    assert [Path(i.path).name for i in items] == ["cell.png"]
    assert any(p.kind == "hidden" and "._cell.png: skipped, a hidden or system file" in p.message for p in problems)


def test_a_run_mostly_uncertain_is_said_to_look_unlike_the_training_data():
    from bloodcell.prediction.differential import unfamiliar_warning

    def run(n, unsure):
        return differential([Prediction(f"{i}.png", "neutrophil", 0.5, {}, i < unsure, False, 0.1) for i in range(n)],
                            ["neutrophil", "lymphocyte"])

    warning = unfamiliar_warning(run(40, 20), 0.011)
    assert warning.startswith("50% of these 40 cells are uncertain, against 1.1% of the model's validation images")
    assert unfamiliar_warning(run(40, 2), 0.011) is None  # as many as the model's own images
    assert unfamiliar_warning(run(40, 6), 0.011) is None  # 15%: its lower bound is under the 10% floor
    assert unfamiliar_warning(run(40, 20), None) is None  # nothing to compare with (a threshold given)
    assert unfamiliar_warning(run(12, 12), 0.011) is None  # too few cells to say


def test_describe_gives_the_validation_share_of_uncertain_images_only_for_the_calibrated_threshold():
    clf = Classifier()  # the default model: its validation images below the threshold it was calibrated for
    validation = clf.meta["calibration"]["validation"]
    assert validation["coverage"] < 1 and validation["n_images"] > 1000
    referred = 1 - clf.meta["familiarity"]["quantile"]  # the familiarity check's share, by construction
    assert clf.describe()["validation_uncertain"] == pytest.approx(1 - validation["coverage"] + referred, abs=1e-4)
    assert Classifier(abstain_threshold=0.5).describe()["validation_uncertain"] is None
