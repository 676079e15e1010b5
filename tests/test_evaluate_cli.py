"""`bloodcell evaluate / report / calibrate / compare` in a subprocess on tiny models and synthetic folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _evaluate_helpers import one_thread, tiny_model, write_manifest
from bloodcell.cli.main import main
from bloodcell.core.model_folder import read_meta

SRC = str(Path(__file__).resolve().parents[1] / "src")
FIVE = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


def bloodcell(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "BLOODCELL_WORKERS": "1",
           "BLOODCELL_CACHE": str(Path(cwd or ".") / ".cache")}
    return subprocess.run([sys.executable, "-m", "bloodcell", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture
def inproc(monkeypatch, tmp_path, capsys):
    """Run the CLI in this process (fast, for the many error paths): returns (status, stdout, stderr)."""
    monkeypatch.setenv("BLOODCELL_CACHE", str(tmp_path / ".cache"))
    monkeypatch.setenv("BLOODCELL_WORKERS", "1")

    def run(*args):
        with one_thread():
            code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    with one_thread():
        return {
            "a": tiny_model(root / "model_a", steps=20),
            "b": tiny_model(root / "model_b", steps=8, seed=1, architecture="complex_cnn"),
            "two": tiny_model(root / "model_two", classes=("erythroblast", "platelet"), steps=1),
        }


def test_evaluate_folder_then_json_and_table(models, make_folder_dataset, tmp_path):
    data = make_folder_dataset(per_class=5, size=40)
    out = tmp_path / "out" / "metrics.json"
    r = bloodcell("evaluate", models["a"], data, "-o", out, "--bootstrap", "200", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "has no train/val/test split" in r.stdout
    assert "macro avg" in r.stdout and "Immature granulocyte" in r.stdout and "95% CI" in r.stdout
    s = json.loads(out.read_text())
    m = s["metrics"]
    assert m["n"] == 40 and sum(r["support"] for r in m["per_class"].values()) == 40
    assert np.trace(np.asarray(m["confusion_matrix"]["counts"])) == round(m["accuracy"] * 40)
    assert f"accuracy {100 * m['accuracy']:.2f}%" in r.stdout
    assert m["ci95"]["accuracy"][0] <= m["accuracy"] <= m["ci95"]["accuracy"][1]


def test_partial_label_set_cli(models, make_folder_dataset, tmp_path, inproc):
    data = make_folder_dataset(per_class=4, classes=FIVE, size=40, seed=2)
    out = tmp_path / "m.json"
    code, stdout, err = inproc("evaluate", models["a"], data, "-o", out, "--bootstrap", "0", "--quiet")
    assert code == 0, err
    assert "Partial label set" in stdout and "Predictions into classes absent from the dataset" in stdout
    m = json.loads(out.read_text())["metrics"]
    assert m["evaluated_classes"] == list(FIVE) and m["n"] == 20


def test_calibrate_report_and_compare(models, make_folder_dataset, tmp_path, inproc):
    data = make_folder_dataset(per_class=9, size=40, seed=3)
    manifest = write_manifest(data, tmp_path / "split.csv")
    before = read_meta(models["b"])
    code, out, err = inproc("calibrate", models["b"], manifest, "--target-accuracy", "0.9", "--tta", "--quiet")
    assert code == 0, err
    assert "Temperature" in out and "ECE" in out and "24 images" in out  # 3 of 9 per class in val
    assert "With test-time augmentation: Temperature" in out
    after = read_meta(models["b"])
    assert after["calibration"]["temperature"] > 0 and after["calibration"]["target_accuracy"] == 0.9
    assert after["calibration"]["validation"]["split"] == "val" and after["calibration"]["tta"]["temperature"] > 0
    assert {k: v for k, v in after.items() if k != "calibration"} == {k: v for k, v in before.items() if k != "calibration"}

    rep = tmp_path / "report"
    r = bloodcell("report", models["b"], manifest, "-o", rep, "--tta", "--bootstrap", "100", "--mistakes", "6",
                  "--gradcam-per-class", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Test-time augmentation (8 views)" in r.stdout and "Model's threshold for augmented predictions" in r.stdout
    page = (rep / "report.html").read_text()
    assert "split test" in page and "48 images" in page
    s = json.loads((rep / "metrics.json").read_text())
    assert s["calibration"]["temperature"] == after["calibration"]["temperature"] and s["tta"]

    cmp_dir = tmp_path / "cmp"
    code, out, err = inproc("compare", models["a"], rep, "--data", manifest, "-o", cmp_dir, "--bootstrap", "50",
                            "--quiet")
    assert code == 0, err
    table = (cmp_dir / "compare.md").read_text()
    assert table.count("\n| model_") == 2 and "basic_cnn" in table and "complex_cnn" in table
    rows = json.loads((cmp_dir / "compare.json").read_text())
    assert rows[1]["accuracy"] == s["metrics"]["accuracy"] and rows[1]["images_per_second"] > 0
    assert rows[0]["training_seconds"] == 3.0 and "| 1 min (3 epochs) |" in table  # three 1-second epochs
    assert (cmp_dir / "compare.png").stat().st_size > 10_000


def test_bad_inputs_give_one_clear_line(models, make_folder_dataset, tmp_path, inproc):
    lymph = make_folder_dataset(per_class=2, classes=("lymphocyte", "monocyte"), size=40, seed=4)
    code, _, err = inproc("evaluate", models["two"], lymph)
    assert code == 2 and "share no class" in err and err.count("\n") == 1

    empty = tmp_path / "empty"
    (empty / "lymphocyte").mkdir(parents=True)
    code, _, err = inproc("evaluate", models["a"], empty)
    assert code == 2 and err.count("\n") == 1 and ("empty" in err or "no image" in err)

    broken = make_folder_dataset(per_class=3, classes=("lymphocyte", "monocyte"), size=40, seed=5)
    (broken / "monocyte" / "monocyte_001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = inproc("evaluate", models["a"], broken, "--bootstrap", "0", "--quiet")
    assert code == 0, err
    assert "1 file(s) skipped" in out and "monocyte_001.png" in out and "5 images" in out
    for f in [*(broken / "lymphocyte").iterdir(), *(broken / "monocyte").iterdir()]:
        f.write_bytes(b"not an image")
    code, _, err = inproc("evaluate", models["a"], broken, "--quiet")
    assert code == 2 and "could be decoded" in err and err.count("\n") == 1

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, _, err = inproc("report", models["a"], lymph, "-o", blocker / "rep")
    assert code == 2 and "Cannot write the report folder" in err
    code, _, err = inproc("evaluate", models["a"], lymph, "-o", blocker / "sub" / "m.json")
    assert code == 2 and "Cannot write" in err

    manifest = write_manifest(lymph, tmp_path / "m.csv", val_every=None)  # no val rows
    code, _, err = inproc("calibrate", models["a"], manifest)
    assert code == 2 and "split 'val'" in err and "test" in err

    code, _, err = inproc("compare", models["a"])
    assert code == 2 and "pass --data" in err


@pytest.mark.integration
def test_real_slice_evaluate_and_report(models, real_data, tmp_path):
    rows = ["path,label,split"]
    for cls_dir in sorted(p for p in real_data.iterdir() if p.is_dir()):
        jpgs = sorted(f for f in cls_dir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg"))[:4]
        rows += [f"{f},{cls_dir.name},test" for f in jpgs]
    manifest = tmp_path / "slice.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "rep"
    r = bloodcell("report", models["a"], manifest, "-o", out, "--bootstrap", "100", "--gradcam-per-class", "1",
                  "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "metrics.json").read_text())
    # the release holds unreadable files (e.g. macOS ".DS_" leftovers named *.jpg): skipped and reported, not lost
    assert s["data"]["n_images"] + len(s["data"]["problems"]) == 32
    assert s["metrics"]["evaluated_classes"] == list(s["model"]["class_names"])
    assert all("not a readable image" in p or "cannot be decoded" in p for p in s["data"]["problems"])
    assert (out / "gradcam.png").exists() and "<section id='gradcam'>" in (out / "report.html").read_text()


def test_bad_device_and_batch_size(models, make_folder_dataset, inproc):
    data = make_folder_dataset(per_class=1, classes=("lymphocyte", "monocyte"), size=40, seed=6)
    code, _, err = inproc("evaluate", models["a"], data, "--batch-size", "0")
    assert code == 2 and "--batch-size must be at least 1" in err
    code, _, err = inproc("evaluate", models["a"], data, "--device", "banana")
    assert code == 2 and "not a torch device" in err
