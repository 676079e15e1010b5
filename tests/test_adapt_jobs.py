"""The service's adaptation jobs and model switch, through FastAPI's TestClient with the tiny model."""

from __future__ import annotations

import io
import time
import types

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _serve_helpers import SRC, cells, tiny_model
from bloodcell.server import create_app


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODCELL_JOBS", str(tmp_path / "jobs"))
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    app = create_app(tiny_model(), allowed_hosts=["testserver"], cases_dir=tmp_path / "cases")
    with TestClient(app) as c:
        yield c


def _wait(client, job_id: str, timeout: float = 400) -> dict:
    end = time.monotonic() + timeout
    seen = set()
    while time.monotonic() < end:
        view = client.get(f"/v1/jobs/{job_id}").json()
        seen.add(view["state"])
        assert 0.0 <= view["progress"] <= 1.0
        if view["state"] in ("done", "failed"):
            view["seen"] = seen
            return view
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_adapt_job_then_switch_the_service_to_its_model(client, make_folder_dataset):
    data = make_folder_dataset(per_class=6, classes=("basophil", "lymphocyte", "monocyte"), size=40, seed=5)
    r = client.post("/v1/jobs/adapt", json={"data": str(data), "method": "linear", "epochs": 2})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    view = _wait(client, r.json()["id"])
    assert view["state"] == "done", view["message"]
    assert view["progress"] == 1.0 and view["model_dir"].endswith("model")
    assert view["message"] == "adapted model written and exported to ONNX"
    assert client.get("/v1/jobs").json()["jobs"][0]["id"] == view["id"]

    assert "adapted" not in client.get("/v1/model").json()["name"] and view["serving"] is False
    switched = client.post("/v1/model/switch", json={"model_dir": view["model_dir"]})
    assert switched.status_code == 200 and "adapted" in switched.json()["model"]["name"]
    assert client.get(f"/v1/jobs/{view['id']}").json()["serving"] is True
    assert client.get("/v1/jobs").json()["jobs"][0]["serving"] is True  # the list says the same
    card = client.get("/v1/model").json()
    assert "adapted" in card["name"] and card["adaptation"]["method"] == "linear"
    x, _ = cells(1, seed=8)
    buf = io.BytesIO()
    Image.fromarray(x[0]).save(buf, "PNG")
    r = client.post("/v1/predict", files=[("files", ("a.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 200 and "adapted" in r.json()["model"]["name"]
    assert r.json()["model"]["backend"] == "onnx"  # the job exported it, so the switched service runs onnxruntime


def test_failed_job_reports_the_one_line_error(client, make_folder_dataset):
    data = make_folder_dataset(per_class=4, classes=("basophil",), size=40, seed=6)
    view = _wait(client, client.post("/v1/jobs/adapt", json={"data": str(data)}).json()["id"])
    assert view["state"] == "failed" and "at least two classes" in view["message"] and view["model_dir"] is None


def test_bad_requests(client, tmp_path):
    assert client.post("/v1/jobs/adapt", json={"data": str(tmp_path / "nowhere")}).status_code == 422
    assert client.post("/v1/jobs/adapt", json={"data": str(tmp_path), "method": "magic"}).status_code == 422
    assert client.get("/v1/jobs/0123").status_code == 404
    r = client.post("/v1/model/switch", json={"model_dir": str(tmp_path)})
    assert r.status_code == 422 and "not switched" in r.json()["detail"]
    assert client.get("/v1/model").json()["name"] == "tiny test model"  # still serving the old model
    assert client.post("/v1/cases/999/adapt").status_code == 404


def test_case_adapt_exports_the_reviewed_cells(client):
    cid = client.post("/v1/cases", json={"accession": "S-2"}).json()["id"]
    assert client.post(f"/v1/cases/{cid}/adapt").status_code == 422  # nothing reviewed yet
    x, y = cells(4, seed=9)
    files = []
    for i, image in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        files.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    ids = [c["id"] for c in client.post(f"/v1/cases/{cid}/cells", files=files).json()["cells"]]
    names = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
    for cell_id, label in zip(ids, y):
        if names[label] in ("lymphocyte", "neutrophil"):
            client.patch(f"/v1/cases/{cid}/cells/{cell_id}", json={"label": names[label], "reviewer": "A"})
    r = client.post(f"/v1/cases/{cid}/adapt", json={"method": "prototype"})
    assert r.status_code == 202
    view = _wait(client, r.json()["id"])
    assert view["state"] == "done", view["message"]


def test_shutdown_stops_the_running_adaptation_and_the_queued_ones(tmp_path, monkeypatch):
    """No adaptation process outlives the service: the running one is terminated, queued ones never start."""
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nexec sleep 120\n")
    slow.chmod(0o755)
    monkeypatch.setattr("bloodcell.server.jobs.sys", types.SimpleNamespace(executable=str(slow)))
    monkeypatch.setenv("BLOODCELL_JOBS", str(tmp_path / "jobs"))
    (tmp_path / "cells").mkdir()
    app = create_app(tiny_model(), allowed_hosts=["testserver"], cases_dir=tmp_path / "cases")
    with TestClient(app) as c:
        ids = [c.post("/v1/jobs/adapt", json={"data": str(tmp_path / "cells")}).json()["id"] for _ in range(2)]
        end = time.monotonic() + 30
        while app.state.jobs._process is None and time.monotonic() < end:
            time.sleep(0.05)
        process = app.state.jobs._process
        assert process is not None and process.poll() is None
        assert c.get(f"/v1/jobs/{ids[1]}").json()["state"] == "queued"
        start = time.monotonic()
    assert time.monotonic() - start < 8
    assert process.poll() is not None
    for job_id in ids:
        view = app.state.jobs.jobs[job_id].view()
        assert view["state"] == "failed" and "shut down" in view["message"]


def test_a_done_jobs_message_says_whether_adapt_exported_the_model(tmp_path):
    from bloodcell.server.jobs import _export_note

    model, log = tmp_path / "model", tmp_path / "log.txt"
    model.mkdir()
    log.write_text("bloodcell adapt: model written in 12 s\n  ONNX export failed (opset 99 unknown); it predicts "
                   "through PyTorch\n  use it: bloodcell predict --model model IMAGES\n")
    assert _export_note(model, log) == " (ONNX export failed (opset 99 unknown); it predicts through PyTorch)"
    log.write_text("bloodcell adapt: model written in 12 s\n")
    assert _export_note(model, log) == " (no ONNX export: it predicts through PyTorch)"
    (model / "model.onnx").write_bytes(b"onnx")
    assert _export_note(model, log) == " and exported to ONNX"
