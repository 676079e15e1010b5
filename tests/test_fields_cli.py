"""``bloodcell predict --fields`` with the bundled model: the real command on draaslan fields, the
warning for a field classified as one cell, and ``POST /v1/fields``."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _fields_helpers import make_field

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
FIELDS = Path(os.environ.get("BLOODCELL_FIELDS", REPO.parent / "shared" / "data" / "fields" / "draaslan"))


def bloodcell(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bloodcell", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def draaslan() -> list[Path]:
    if not (FIELDS / "boxes.csv").is_file():
        pytest.skip(f"development fields not found at {FIELDS} (set BLOODCELL_FIELDS)")
    return [FIELDS / "images" / name for name in ("image-1.png", "image-110.png", "image-10.png")]


def png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.integration
def test_cli_fields_csv_and_overlays(draaslan, tmp_path):
    out, overlays = tmp_path / "cells.csv", tmp_path / "overlays"
    run = bloodcell("predict", *map(str, draaslan), "--fields", "-f", "csv", "-o", str(out), "--overlay", str(overlays))
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    by_field = {Path(r["source"]).name: [] for r in rows}
    for r in rows:
        by_field[Path(r["source"]).name].append(r)
    assert len(by_field["image-110.png"]) == 2 and len(by_field["image-1.png"]) == 1 and "image-10.png" not in by_field
    for r in rows:
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and r["label"] and r["at_border"] in ("0", "1")
    assert sorted(p.name for p in overlays.iterdir()) == ["image-1.png", "image-10.png", "image-110.png"]
    assert "3 field(s), 3 cell(s)" in run.stderr


@pytest.mark.integration
def test_cli_fields_json_and_table(draaslan, tmp_path):
    run = bloodcell("predict", str(draaslan[1]), "--fields", "-f", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    cells = doc["fields"][0]["cells"]
    assert len(cells) == 2 and all(len(c["box"]) == 4 and "at_border" in c and "label" in c for c in cells)
    assert doc["counts"]["fields"] == 1
    table = bloodcell("predict", str(draaslan[1]), "--fields")
    assert table.returncode == 0 and "image-110.png: " in table.stdout and "1 field(s)" in table.stdout


def test_cli_warns_when_an_image_is_a_field(tmp_path):
    field, _ = make_field(whites=((60, 60), (250, 60), (60, 180), (250, 180)), platelets=())
    single, _ = make_field(size=(256, 256), whites=((128, 128),), platelets=())
    Image.fromarray(field).save(tmp_path / "field.png")
    Image.fromarray(single).save(tmp_path / "cell.png")
    run = bloodcell("predict", str(tmp_path / "field.png"), str(tmp_path / "cell.png"), "--differential", "no")
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "field.png" in warnings[0] and "4 white cells" in warnings[0] and "--fields" in warnings[0]
    bad = bloodcell("predict", str(tmp_path / "cell.png"), "--overlay", str(tmp_path / "o"))
    assert bad.returncode == 2 and "add --fields" in bad.stderr and "Traceback" not in bad.stderr
    bad = bloodcell("predict", str(tmp_path / "field.png"), "--fields", "-o", str(tmp_path / "cells.jsonl"))
    assert bad.returncode == 2 and "not jsonl (-f, or the suffix of" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "cells.jsonl").exists()


def test_cli_tiles_count_a_cell_in_the_overlap_once(tmp_path):
    whites = ((60, 60), (200, 70), (230, 170), (360, 150), (190, 190))
    image, _ = make_field(seed=5, size=(420, 240), whites=whites, platelets=())
    cut, overlap = 260, 100
    Image.fromarray(image[:, :cut]).save(tmp_path / "s_x0_y0.png")
    Image.fromarray(image[:, cut - overlap:]).save(tmp_path / f"s_x{cut - overlap}_y0.png")
    counted = []
    for extra in ((), ("--tile-overlap", str(overlap))):
        run = bloodcell("predict", str(tmp_path), "--fields", "-f", "json", *extra)
        assert run.returncode == 0, run.stderr
        doc = json.loads(run.stdout)
        counted.append(sum(1 for f in doc["fields"] for c in f["cells"] if c.get("probability") is not None))
    assert counted[1] == 5 and counted[0] > 5


@pytest.fixture(scope="module")
def client():
    from bloodcell.server import create_app

    with TestClient(create_app(max_files=4, allowed_hosts=["testserver"])) as c:
        yield c


def test_rest_fields(client):
    field, truth = make_field(whites=((10, 120), (200, 120)))
    r = client.post("/v1/fields?overlay=true", files=[("files", ("f.png", png(field), "image/png")),
                                                       ("files", ("empty.png", b"", "image/png"))])
    assert r.status_code == 200, r.text
    doc = r.json()
    fields = doc["fields"]
    assert len(fields) == 1 and fields[0]["filename"] == "f.png" and fields[0]["overlay_png"].startswith("data:image/png")
    whites = sorted((c for c in fields[0]["cells"] if c.get("probability") is not None), key=lambda c: c["box"][0])
    assert len(whites) == 2 and [c["at_border"] for c in whites] == [True, False]
    assert doc["skipped"][0]["filename"] == "empty.png"
    assert doc["counts"]["fields"] == 1 and "classes" in doc["differential"]
    assert "warning" in doc and doc["warning"] is None  # two white cells: too few to warn of anything


def test_rest_fields_refuses_uploads_without_an_image(client):
    r = client.post("/v1/fields", files=[("files", ("a.txt", b"not an image", "text/plain"))])
    assert r.status_code == 422 and "a.txt" in r.json()["detail"]


def test_every_option_of_a_fields_run_is_used_or_refused(tmp_path, capsys):
    """``--precision`` reaches a --fields run (it ran fp32 whatever was asked), and the single-cell
    options it has no use for are refused instead of ignored."""
    from bloodcell.cli.main import main

    image, _ = make_field(seed=1)
    path = tmp_path / "field.png"
    Image.fromarray(image).save(path)
    assert main(["predict", str(path), "--fields", "--precision", "int8", "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["precision"] == "int8"
    for extra, said in ((["--resume", "-o", str(tmp_path / "f.csv")], "--resume continues single-cell runs"),
                        (["--workers", "2"], "--workers sets the decoding threads"),
                        (["--engine", "ray"], "--engine ray classifies single-cell images")):
        assert main(["predict", str(path), "--fields", *extra]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()
