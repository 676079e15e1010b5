"""The lab-style differential: white cells as % of WBC, NRBC per 100 WBC, platelets apart, exclusions, review."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _serve_helpers import cells, cli, tiny_model
from bloodcell.core.stats import wilson_interval
from bloodcell.prediction.differential import lab_differential, lab_table


def test_white_cells_are_percent_of_white_cells_only():
    labels = ["neutrophil"] * 6 + ["lymphocyte"] * 2 + ["erythroblast"] * 2 + ["platelet"] * 3 + ["smudge"]
    d = lab_differential(labels)
    rows = {r["class"]: r for r in d["white_cells"]}
    assert [r["class"] for r in d["white_cells"]] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil",
                                                      "basophil", "ig"]
    assert d["wbc_total"] == 8 and d["total"] == 14
    assert rows["neutrophil"]["count"] == 6 and rows["neutrophil"]["percent"] == 75.0
    lo, hi = wilson_interval(6, 8)
    assert rows["neutrophil"]["ci95"] == [round(100 * lo, 2), round(100 * hi, 2)]
    assert rows["monocyte"]["percent"] == 0.0
    assert d["nrbc"]["count"] == 2 and d["nrbc"]["per_100_wbc"] == 25.0
    lo, hi = d["nrbc"]["ci95"]
    assert lo < 25.0 < hi
    assert d["platelets"] == {"count": 3}
    assert d["excluded"] == [{"reason": "smudge", "count": 1}]
    assert (d["reviewed"], d["unreviewed"]) == (0, 14)
    assert d["agreement"]["reviewed"] == 0 and d["agreement"]["percent"] is None


def test_review_overrides_the_flag_and_counts_agreement():
    predicted = ["neutrophil", "neutrophil", "monocyte", "basophil", "lymphocyte"]
    labels = ["neutrophil", "lymphocyte", "monocyte", "artefact", "lymphocyte"]
    reviewed = [True, True, False, True, False]
    flagged = [False, False, True, True, False]
    d = lab_differential(labels, reviewed=reviewed, predicted=predicted, not_a_blood_cell=flagged)
    # the unreviewed flagged monocyte is excluded as not a blood cell; the reviewed flagged one is an artefact
    assert {e["reason"]: e["count"] for e in d["excluded"]} == {"artefact": 1, "not_a_blood_cell": 1}
    assert d["wbc_total"] == 3
    assert d["agreement"]["agreed"] == 1 and d["agreement"]["reviewed"] == 3
    assert d["agreement"]["percent"] == pytest.approx(33.33)
    assert (d["reviewed"], d["unreviewed"]) == (3, 2)


def test_no_white_cells_gives_no_percent():
    d = lab_differential(["platelet", "erythroblast"])
    assert d["wbc_total"] == 0 and all(r["percent"] is None for r in d["white_cells"])
    assert d["nrbc"]["per_100_wbc"] is None
    assert "NRBC/100 WBC" in lab_table(d)


def test_cli_predict_prints_and_writes_the_lab_differential(tmp_path):
    np.savez(tmp_path / "cells.npz", images=cells(1, seed=5)[0][:4])
    env = {"BLOODCELL_MODEL": str(tiny_model())}
    r = cli("predict", str(tmp_path / "cells.npz"), env=env)
    assert r.returncode == 0, r.stderr
    assert "Lab differential:" in r.stdout and "NRBC/100 WBC" in r.stdout
    r = cli("predict", str(tmp_path / "cells.npz"), "-f", "json", env=env)
    doc = json.loads(r.stdout)
    assert doc["differential"]["total"] == 4 and doc["lab_differential"]["total"] == 4
