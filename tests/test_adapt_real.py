"""`bloodcell adapt` on a few real cells of another lab (LISC), through the command line."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from _serve_helpers import cli
from bloodcell import Classifier

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = Path(os.environ.get("BLOODCELL_EXTERNAL", REPO.parent / "shared" / "data" / "external"))
LISC = EXTERNAL / "lisc"

pytestmark = pytest.mark.integration


@pytest.fixture
def lisc_slice(tmp_path):
    if not LISC.is_dir():
        pytest.skip(f"LISC not found at {LISC} (set BLOODCELL_EXTERNAL)")
    root = tmp_path / "lisc"
    for folder in sorted(p for p in LISC.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:4]:
            (root / folder.name / image.name).symlink_to(image)
    return root


def test_adapt_cli_on_a_slice_of_lisc(lisc_slice, tmp_path):
    out = tmp_path / "adapted"
    done = cli("adapt", str(lisc_slice), "--out", str(out), "--epochs", "3", "--quiet", timeout=900)
    assert done.returncode == 0, done.stderr
    assert "held-out cells (5)" in done.stdout and "kept: erythroblast, ig, platelet" in done.stdout
    assert f"ONNX export written: {out / 'model.onnx'}" in done.stdout
    # the default model predicts with one network and adapts from the ensemble it ships, and says so
    assert "/adapt_from, which " in done.stdout and "ships for adaptation" in done.stdout
    meta = json.loads((out / "model.json").read_text())
    assert meta["adaptation"]["fitting_cells"] == {c: 3 for c in ("basophil", "eosinophil", "lymphocyte", "monocyte",
                                                                  "neutrophil")}
    assert meta["calibration"]["validation"]["n_images"] == 5 and "ood" in meta
    predicted = cli("predict", str(lisc_slice / "eosinophil"), "--model", str(out), "-f", "json", timeout=600)
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["predictions"]) == 4
    assert json.loads(predicted.stdout)["model"]["backend"] == "onnx"  # the fresh export, not PyTorch
    info = cli("info", str(out))
    assert info.returncode == 0 and "adapted to lisc" in info.stdout


def _slice(source: Path, root: Path, per_class: int) -> Path:
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (root / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            (root / folder.name / image.name).symlink_to(image)
    return root


def test_predict_warns_when_another_labs_cells_are_mostly_uncertain(tmp_path):
    pbc = Path(os.environ.get("BLOODCELL_DATA", REPO.parent / "shared" / "data" / "pbc"))
    if not LISC.is_dir() or not pbc.is_dir():
        pytest.skip(f"LISC or PBC not found ({LISC}, {pbc})")
    other = cli("predict", str(LISC), "-o", str(tmp_path / "lisc.csv"))  # 255 cells of another lab
    assert other.returncode == 0, other.stderr
    share = Classifier().describe()["validation_uncertain"]
    assert "warning: " in other.stderr and f"uncertain, against {share:.1%} of the model's validation images" in other.stderr
    assert "bloodcell adapt" in other.stderr and "Traceback" not in other.stderr
    # the cell check does not call another lab's cells non-cells (at most 5% of them)
    with open(tmp_path / "lisc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 255 and sum(r["not_a_blood_cell"] == "1" for r in rows) <= 12
    # nor labels them with confidence: the familiarity check calls most of them uncertain
    assert sum(r["uncertain"] == "1" for r in rows) > 0.6 * 255
    assert json.loads((tmp_path / "lisc.csv.run.json").read_text())["warning"].endswith("(`bloodcell adapt`).")
    own = cli("predict", str(_slice(pbc, tmp_path / "pbc", 5)), "-o", str(tmp_path / "pbc.csv"))
    assert own.returncode == 0, own.stderr
    assert "warning" not in own.stderr
    assert json.loads((tmp_path / "pbc.csv.run.json").read_text())["warning"] is None
