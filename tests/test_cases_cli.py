"""``bloodcell case``: list, export (CSV, JSON, report, dataset) and check, through the real CLI."""

from __future__ import annotations

import csv
import json
import zipfile

from _cases_helpers import new_cell, png
from _serve_helpers import cli
from bloodcell.cases import CaseStore
from bloodcell.data import open_dataset


def make_store(folder):
    store = CaseStore(folder)
    cid = store.create_case("ACC-7", note="smear 1")["id"]
    cells = store.add_cells(cid, [new_cell(png(i), f"{i}.png", p) for i, p in
                                  enumerate(["neutrophil", "lymphocyte", "platelet", "neutrophil"])], "tiny (bloodcell x)")
    store.review(cid, cells[0]["id"], "neutrophil", "Ada")
    store.review(cid, cells[1]["id"], "monocyte", "Ada")
    store.review(cid, cells[2]["id"], "artefact", "=HYPERLINK(1)")
    return cid


def test_list_export_and_check(tmp_path):
    folder = tmp_path / "store"
    cid = make_store(folder)
    r = cli("case", "list", str(folder))
    assert r.returncode == 0, r.stderr
    assert "ACC-7" in r.stdout and "4/100" in r.stdout

    r = cli("case", "export", str(folder), str(cid), "--format", "csv", "--out", str(tmp_path / "c.csv"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [x["final_label"] for x in rows] == ["neutrophil", "monocyte", "artefact", "neutrophil"]
    assert rows[2]["reviewer"] == "'=HYPERLINK(1)" and rows[0]["reviewer"] == "Ada"

    cli("case", "export", str(folder), str(cid), "-f", "json", "-o", str(tmp_path / "c.json"))
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["differential"]["wbc_total"] == 3 and doc["differential"]["excluded"] == [{"reason": "artefact", "count": 1}]
    assert len(doc["events"]) == 1 + 4 + 3

    cli("case", "export", str(folder), str(cid), "-o", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert "<style>" in page and "ACC-7" in page and "tiny (bloodcell x)" in page and "Ada" in page

    r = cli("case", "export", str(folder), str(cid), "-f", "dataset", "-o", str(tmp_path / "d.zip"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "d.zip") as z:
        z.extractall(tmp_path / "d")
    assert sorted(s.label for s in open_dataset(tmp_path / "d" / "manifest.csv").samples) == ["monocyte", "neutrophil"]

    r = cli("case", "check", str(folder))
    assert r.returncode == 0 and "ok" in r.stdout


def test_errors_are_one_line(tmp_path):
    folder = tmp_path / "store"
    make_store(folder)
    r = cli("case", "export", str(folder), "99", "-o", str(tmp_path / "x.csv"))
    assert r.returncode == 2 and "No case 99" in r.stderr and "Traceback" not in r.stderr
    r = cli("case", "list", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no case store here" in r.stderr
    next(folder.joinpath("images").rglob("*.png")).write_bytes(b"broken")
    r = cli("case", "check", str(folder))
    assert r.returncode == 1 and "do not match" in r.stdout
