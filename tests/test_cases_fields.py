"""Whole fields in a case: every white cell found is added as a reviewable cell with its box."""

from __future__ import annotations

import csv
import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from _cases_helpers import case_client, png_of
from _fields_helpers import make_field
from bloodcell.cases import CaseStore
from bloodcell.cases.schema import DATABASE

png = png_of


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with case_client(tmp_path_factory.mktemp("cases")) as c:
        yield c


def new_case(client, target=100) -> int:
    r = client.post("/v1/cases", json={"accession": "F-1", "target": target})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_a_field_adds_one_cell_per_white_cell_with_its_box(client):
    case_id = new_case(client)
    image, truth = make_field(seed=3, whites=((80, 80), (220, 150), (300, 60)), platelets=((160, 40),))
    r = client.post(f"/v1/cases/{case_id}/fields", files=[("files", ("slide-1.png", png(image), "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    (field,) = body["fields"]
    assert (field["width"], field["height"]) == (320, 240)
    assert len(body["cells"]) == len(truth) == len(field["cells"])
    assert field["platelets_by_size"] == 1
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (c["box"] for c in body["cells"]))
    for (x, y), box in zip(centres, sorted(truth)):
        assert abs(x - (box[0] + box[2]) / 2) < 6 and abs(y - (box[1] + box[3]) / 2) < 6
    assert all(c["field_id"] == field["id"] and c["framing"] == "field" for c in body["cells"])
    assert body["case"]["n_cells"] == 3
    assert body["case"]["differential"]["platelets"]["by_size"] == 1
    assert body["case"]["differential"]["platelets"]["count"] == 1 + sum(c["predicted"] == "platelet" for c in body["cells"])
    cell = body["cells"][0]
    crop = Image.open(io.BytesIO(client.get(f"/v1/cases/{case_id}/cells/{cell['id']}/image").content))
    assert crop.size[0] == crop.size[1] > 2 * (cell["box"][2] - cell["box"][0])
    got = client.get(f"/v1/cases/{case_id}/fields/{field['id']}/image")
    assert got.status_code == 200 and got.content == png(image)
    rows = list(csv.DictReader(io.StringIO(client.get(f"/v1/cases/{case_id}/export.csv").text)))
    assert [int(r["x0"]) for r in rows] == [c["box"][0] for c in body["cells"]]
    assert {r["field_id"] for r in rows} == {str(field["id"])}
    assert client.get(f"/v1/cases/{case_id}/export.json").json()["fields"][0]["id"] == field["id"]
    client.patch(f"/v1/cases/{case_id}/cells/{cell['id']}", json={"label": "monocyte"})
    listed = client.get(f"/v1/cases/{case_id}/fields").json()["fields"][0]["cells"]
    assert {c["id"]: c["final_label"] for c in listed}[cell["id"]] == "monocyte"


def test_a_tiff_field_is_shown_as_png(client):
    case_id = new_case(client)
    image, _ = make_field(seed=4, whites=((100, 90),))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "TIFF")
    r = client.post(f"/v1/cases/{case_id}/fields", files=[("files", ("slide.tif", buf.getvalue(), "image/tiff"))])
    (field,) = r.json()["fields"]
    got = client.get(f"/v1/cases/{case_id}/fields/{field['id']}/image")
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert (np.asarray(Image.open(io.BytesIO(got.content)).convert("RGB")) == image).all()


def test_a_field_past_the_target_adds_nothing(client):
    case_id = new_case(client, target=2)
    image, _ = make_field(seed=4, whites=((80, 80), (220, 150), (300, 60)))
    r = client.post(f"/v1/cases/{case_id}/fields", files=[("files", ("big.png", png(image), "image/png"))])
    assert r.status_code == 409 and "2 more fit, 3 were sent" in r.json()["detail"]
    assert client.get(f"/v1/cases/{case_id}").json()["n_cells"] == 0
    assert client.get(f"/v1/cases/{case_id}/fields").json()["fields"] == []


def test_unreadable_fields_are_named(client):
    case_id = new_case(client)
    r = client.post(f"/v1/cases/{case_id}/fields", files=[("files", ("notes.png", b"not an image", "image/png"))])
    assert r.status_code == 422 and "notes.png" in r.json()["detail"]
    assert client.get(f"/v1/cases/{case_id}/fields/99/image").status_code == 404
    assert client.get("/v1/cases/999/fields").status_code == 404


def test_a_store_of_schema_1_gains_fields_and_keeps_its_cells(tmp_path):
    from bloodcell.cases.schema import MIGRATIONS, connect, migrate

    db = connect(tmp_path)
    migrate(db, "2026-01-01T00:00:00Z", MIGRATIONS[:1])
    db.execute("INSERT INTO cases (accession, created, updated) VALUES ('old', 'x', 'x')")
    db.execute("INSERT INTO cells (case_id, sha256, ext, filename, width, height, predicted, probabilities, "
               "confidence, uncertain, created) VALUES (1, 'ab', '.png', 'a.png', 4, 4, 'basophil', '{}', 0.9, 0, 'x')")
    db.close()
    store = CaseStore(tmp_path)
    (cell,) = store.cells(1)
    assert cell["filename"] == "a.png" and cell["box"] is None and cell["field_id"] is None
    assert cell["unfamiliar"] is None
    version = sqlite3.connect(tmp_path / DATABASE).execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    assert version == len(MIGRATIONS) == 3
