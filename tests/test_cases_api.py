"""The case endpoints through FastAPI's TestClient with the tiny model: cases, uploads, reviews, exports."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from _cases_helpers import case_client, png_of
from _serve_helpers import cells
from bloodcell.data import open_dataset

png = png_of


def jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with case_client(tmp_path_factory.mktemp("cases")) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    x, _ = cells(1, seed=21)
    return x


def upload(items, kind="image/png"):
    return [("files", (name, data, kind)) for name, data in items]


def new_case(client, **body) -> dict:
    r = client.post("/v1/cases", json={"accession": "S-1", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_create_get_patch_and_list(client):
    a = new_case(client, note="left arm")
    assert (a["accession"], a["note"], a["target"], a["n_cells"], a["n_reviewed"]) == ("S-1", "left arm", 100, 0, 0)
    assert a["differential"]["total"] == 0 and a["differential"]["white_cells"][0]["class"] == "neutrophil"
    b = new_case(client, target=200)
    r = client.patch(f"/v1/cases/{a['id']}", json={"note": "right arm", "target": 200})
    assert r.status_code == 200 and r.json()["note"] == "right arm" and r.json()["target"] == 200
    listed = client.get("/v1/cases").json()["cases"]
    assert [c["id"] for c in listed][:2] == [a["id"], b["id"]]  # newest change first
    events = client.get(f"/v1/cases/{a['id']}/events").json()["events"]
    assert [(e["what"], e["old"], e["new"]) for e in events[1:]] == [("note", "left arm", "right arm"),
                                                                      ("target", "100", "200")]


def test_bad_case_requests(client):
    assert client.post("/v1/cases", json={"accession": ""}).status_code == 422
    assert client.post("/v1/cases", json={"accession": "x", "target": 0}).status_code == 422
    r = client.get("/v1/cases/99999")
    assert r.status_code == 404 and "No case 99999" in r.json()["detail"]
    assert client.patch("/v1/cases/99999", json={"note": "x"}).status_code == 404
    assert client.get("/v1/cases/99999/cells").status_code == 404
    assert client.get("/v1/cases/99999/cells/1/image").status_code == 404


def test_a_misspelt_field_is_refused_not_defaulted(client):
    """{"targett": 200} made a case of 100 cells without a word."""
    before = len(client.get("/v1/cases").json()["cases"])
    r = client.post("/v1/cases", json={"accession": "typo", "targett": 200})
    assert r.status_code == 422
    assert r.json()["detail"] == "body.targett: not a field this route takes (the fields are listed at /docs)"
    assert len(client.get("/v1/cases").json()["cases"]) == before
    case = client.post("/v1/cases", json={"accession": "typo", "target": 200}).json()
    r = client.patch(f"/v1/cases/{case['id']}", json={"targets": 100})
    assert r.status_code == 422 and client.get(f"/v1/cases/{case['id']}").json()["target"] == 200
    r = client.post("/v1/jobs/adapt", json={"data": "/nowhere", "epoch": 3})
    assert r.json()["detail"].startswith("body.epoch: not a field")


def test_upload_review_undo_and_filters(client, images):
    case = new_case(client)
    cid = case["id"]
    same = png(images[0])
    files = [("a.png", same), ("a.png", png(images[3])), ("b.png", same), ("broken.png", b"\x89PNG nothing")]
    r = client.post(f"/v1/cases/{cid}/cells", files=upload(files))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["cells"]) == 3 and body["skipped"][0]["filename"] == "broken.png" and body["skipped"][0]["error"]
    assert body["case"]["n_cells"] == 3 and body["case"]["differential"]["total"] == 3
    first = body["cells"][0]
    assert set(first) == {"id", "case_id", "filename", "sha256", "width", "height", "predicted", "probabilities",
                          "confidence", "uncertain", "not_a_blood_cell", "framing", "label", "final_label",
                          "reviewer", "reviewed_at", "created", "model", "field_id", "box", "at_border", "unfamiliar"}
    assert first["field_id"] is None and first["box"] is None and first["at_border"] is None
    assert (first["width"], first["height"]) == (48, 48) and first["label"] is None
    assert first["final_label"] == first["predicted"] and len(first["probabilities"]) == 8
    # two files named a.png are two cells; the same bytes twice share one image file
    assert [c["filename"] for c in body["cells"]] == ["a.png", "a.png", "b.png"]
    assert len(list((client.folder / "images").rglob("*.png"))) == 2

    cell = f"/v1/cases/{cid}/cells/{first['id']}"
    bad = client.patch(cell, json={"label": "banana"})
    assert bad.status_code == 422 and "not_a_cell" in bad.json()["detail"] and "neutrophil" in bad.json()["detail"]
    other = "monocyte" if first["predicted"] != "monocyte" else "lymphocyte"
    r = client.patch(cell, json={"label": other, "reviewer": "dr. Ada"})
    assert r.status_code == 200 and r.json()["label"] == other and r.json()["final_label"] == other
    assert r.json()["reviewer"] == "dr. Ada" and r.json()["reviewed_at"]
    got = client.get(f"/v1/cases/{cid}").json()
    assert got["n_reviewed"] == 1 and got["differential"]["agreement"] == {
        "reviewed": 1, "agreed": 0, "percent": 0.0, "ci95": got["differential"]["agreement"]["ci95"]}
    assert [c["id"] for c in client.get(f"/v1/cases/{cid}/cells?flag=unreviewed").json()["cells"]] == \
        [c["id"] for c in body["cells"][1:]]
    assert [c["id"] for c in client.get(f"/v1/cases/{cid}/cells?label={other}").json()["cells"]][:1] == [first["id"]]
    assert client.get(f"/v1/cases/{cid}/cells?flag=odd").status_code == 422

    stale = client.patch(cell, json={"label": "basophil", "reviewer": "dr. Bo", "if_label": None})
    assert stale.status_code == 409 and f"now reviewed as {other} by dr. Ada" in stale.json()["detail"]
    assert client.get(cell).json()["label"] == other
    r = client.patch(cell, json={"label": None, "reviewer": "dr. Ada", "if_label": other})
    assert r.json()["label"] is None and r.json()["reviewer"] is None and r.json()["final_label"] == first["predicted"]
    events = [e for e in client.get(f"/v1/cases/{cid}/events").json()["events"] if e["what"] == "label"]
    assert [(e["who"], e["old"], e["new"]) for e in events] == [("dr. Ada", None, other), ("dr. Ada", other, None)]
    assert client.get(cell).json()["label"] is None
    missing = f"/v1/cases/{cid}/cells/{first['id'] + 100}"
    assert client.get(missing).status_code == 404 and client.patch(missing, json={"label": None}).status_code == 404


def test_target_refuses_an_upload_past_it(client, images):
    cid = new_case(client, target=3)["id"]
    assert client.post(f"/v1/cases/{cid}/cells", files=upload([("a.png", png(images[1]))] * 2)).status_code == 200
    r = client.post(f"/v1/cases/{cid}/cells", files=upload([("b.png", png(images[2]))] * 2))
    assert r.status_code == 409 and "1 more fit" in r.json()["detail"]
    assert client.get(f"/v1/cases/{cid}").json()["n_cells"] == 2
    assert client.post(f"/v1/cases/{cid}/cells", files=upload([("b.png", png(images[2]))])).status_code == 200


def test_image_and_gradcam(client, images):
    cid = new_case(client)["id"]
    data = jpeg(np.asarray(Image.fromarray(images[5]).resize((96, 80))))
    cell = client.post(f"/v1/cases/{cid}/cells", files=upload([("c.jpg", data)], "image/jpeg")).json()["cells"][0]
    assert (cell["width"], cell["height"]) == (96, 80)
    r = client.get(f"/v1/cases/{cid}/cells/{cell['id']}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == data
    r = client.get(f"/v1/cases/{cid}/cells/{cell['id']}/gradcam")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    x0, y0, x1, y1 = map(int, r.headers["x-crop-box"].split(","))
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 80
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)


def test_a_tiff_cell_is_shown_as_png_and_exported_as_uploaded(client, images):
    cid = new_case(client)["id"]
    buf = io.BytesIO()
    Image.fromarray(images[3]).save(buf, "TIFF")
    tiff = buf.getvalue()
    cell = client.post(f"/v1/cases/{cid}/cells", files=upload([("c.tif", tiff)], "image/tiff")).json()["cells"][0]
    r = client.get(f"/v1/cases/{cid}/cells/{cell['id']}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), images[3])
    client.patch(f"/v1/cases/{cid}/cells/{cell['id']}", json={"label": "neutrophil", "reviewer": "A"})
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/cases/{cid}/dataset.zip").content)) as z:
        assert [z.read(n) for n in z.namelist() if n.endswith(".tif")] == [tiff]


def test_exports(client, images, tmp_path):
    cid = new_case(client, accession="ACC<9>")["id"]
    added = client.post(f"/v1/cases/{cid}/cells", files=upload([(f"{i}.png", png(images[i])) for i in range(4)]))
    ids = [c["id"] for c in added.json()["cells"]]
    client.patch(f"/v1/cases/{cid}/cells/{ids[0]}", json={"label": "neutrophil", "reviewer": "A"})
    client.patch(f"/v1/cases/{cid}/cells/{ids[1]}", json={"label": "eosinophil", "reviewer": "B"})
    client.patch(f"/v1/cases/{cid}/cells/{ids[2]}", json={"label": "smudge", "reviewer": "A"})

    r = client.get(f"/v1/cases/{cid}/export.csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv") and len(rows) == 4
    assert rows[2]["label"] == "smudge" and rows[3]["final_label"] == rows[3]["predicted"] and "p_platelet" in rows[0]

    doc = client.get(f"/v1/cases/{cid}/export.json").json()
    assert doc["case"]["id"] == cid and len(doc["cells"]) == 4 and doc["differential"]["reviewed"] == 3
    assert doc["models"] == [f"tiny test model (bloodcell {__import__('bloodcell').__version__})"]

    page = client.get(f"/v1/cases/{cid}/report")
    assert page.headers["content-type"].startswith("text/html")
    assert "ACC&lt;9&gt;" in page.text and "NRBC / 100 WBC" in page.text and "A, B" in page.text
    assert client.get("/v1/cases/report.css").text.count("@media print") == 1

    r = client.get(f"/v1/cases/{cid}/dataset.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        z.extractall(tmp_path / "ds")
        names = sorted(z.namelist())
    assert len(names) == 3 and "manifest.csv" in names  # the smudge and the unreviewed cell stay out
    ds = open_dataset(tmp_path / "ds" / "manifest.csv")
    assert sorted(s.label for s in ds.samples) == ["eosinophil", "neutrophil"]
    assert sorted(s.label for s in open_dataset(tmp_path / "ds").samples) == ["eosinophil", "neutrophil"]


def test_openapi_documents_the_case_models(client):
    spec = client.get("/openapi.json").json()
    assert {"Case", "Cell", "CellsAdded", "LabDifferential", "ErrorBody"} <= set(spec["components"]["schemas"])
    cells = spec["paths"]["/v1/cases/{case_id}/cells"]["post"]["responses"]
    assert {"404", "409", "413", "422"} <= set(cells)
    assert "class" in spec["components"]["schemas"]["ClassRow"]["properties"]


def test_rest_differential_carries_the_lab_block(client, images):
    r = client.post("/v1/differential", files=upload([(f"{i}.png", png(images[i])) for i in range(3)]))
    body = r.json()
    assert r.status_code == 200 and body["lab_differential"]["total"] == 3
    assert body["differential"]["total"] == 3


def test_a_case_mostly_uncertain_carries_the_warning_of_the_model_that_classified_it(tmp_path):
    import re

    from fastapi.testclient import TestClient

    from _serve_helpers import tiny_model, unsure_model
    from bloodcell.server import create_app

    model = unsure_model(tmp_path / "unsure")
    x, _ = cells(3, seed=5)
    folder = tmp_path / "cases"
    with TestClient(create_app(model, max_files=40, allowed_hosts=["testserver"], cases_dir=folder)) as c:
        cid = new_case(c)["id"]
        added = c.post(f"/v1/cases/{cid}/cells", files=upload([(f"{i}.png", png(x[i])) for i in range(19)])).json()
        assert added["case"]["warning"] is None  # 19 cells are too few to say
        added = c.post(f"/v1/cases/{cid}/cells", files=upload([(f"{i}.png", png(x[i])) for i in range(19, 24)]))
        warning = added.json()["case"]["warning"]
        assert re.match(r"9\d% of these 24 cells are uncertain, against 1\.0% of the model's validation", warning)
        assert c.get(f"/v1/cases/{cid}").json()["warning"] == warning
        assert c.patch(f"/v1/cases/{cid}", json={"note": "n"}).json()["warning"] == warning
        (who,) = {cell["model"] for cell in c.get(f"/v1/cases/{cid}/cells").json()["cells"]}
        assert who.startswith(c.get("/v1/model").json()["name"] + " (bloodcell ")
        assert c.get("/v1/cases").json()["cases"][0]["warning"] is None  # lists carry no differential or warning
    with TestClient(create_app(tiny_model(), allowed_hosts=["testserver"], cases_dir=folder)) as c:
        assert c.get(f"/v1/cases/{cid}").json()["warning"] is None  # another model classified those cells


def test_a_case_whose_field_cells_are_mostly_called_platelets_carries_the_warning(tmp_path):
    from dataclasses import replace

    from _cases_helpers import new_cell, png
    from bloodcell import __version__
    from bloodcell.cases import CaseStore
    from bloodcell.cases import images as store_images
    from bloodcell.cases.fields import NewField, add_field, field_platelet_share

    folder = tmp_path / "cases"
    with case_client(folder) as c:
        cid = new_case(c)["id"]
        model = f"{c.get('/v1/model').json()['name']} (bloodcell {__version__})"
        cases = CaseStore(folder)
        cases.add_cells(cid, [new_cell(png(i), f"s{i}.png", "platelet") for i in range(30)], model)  # not from fields
        for f, label in enumerate(["platelet"] * 16 + ["neutrophil"] * 4):
            data = png(100 + f, 64)
            cell = replace(new_cell(png(200 + f), "c.png", label), box=(0, 0, 9, 9), at_border=False)
            add_field(cases, cid, NewField(f"f{f}.png", data, store_images.facts(data, f"f{f}.png")), [cell], model)
        assert field_platelet_share(cases, cid, model) == (16, 20)
        assert field_platelet_share(cases, cid, "another model") == (0, 0)
        warning = c.get(f"/v1/cases/{cid}").json()["warning"]
        assert warning.startswith("16 of the 20 cells found at a white cell's size were classified as platelets (80%")
        data = png(999, 64)  # more white cells in fields bring the share back down
        more = [replace(new_cell(png(300 + i), "c.png", "neutrophil"), box=(i, 0, i + 9, 9), at_border=False)
                for i in range(20)]
        add_field(cases, cid, NewField("g.png", data, store_images.facts(data, "g.png")), more, model)
        assert c.get(f"/v1/cases/{cid}").json()["warning"] is None
