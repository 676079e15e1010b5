"""Every endpoint of the service, including bad uploads, through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from _serve_helpers import cells, tiny_model
from bloodcell.server import create_app
from bloodcell.server.batching import Batcher


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client():
    app = create_app(tiny_model(), max_upload_mb=0.5, max_files=4, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def images():
    x, _ = cells(1, seed=21)
    return [png(i) for i in x]


def upload(items):
    return [("files", (name, data, "image/png")) for name, data in items]


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["backend"] == "onnx"


def test_model_card(client):
    r = client.get("/v1/model")
    body = r.json()
    assert r.status_code == 200
    assert body["name"] == "tiny test model" and body["licence"] == "Apache-2.0"
    assert len(body["classes"]) == 8 and body["limits"] == {"max_upload_mb": 0.5, "max_files": 4, "max_megapixels": 4.0}
    assert body["out_of_distribution"]["threshold"] > 0


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="cell-input"' in page.text and 'id="quick-input"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no CDN assets
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    modules = re.findall(r"from [\"']\./([a-z]+\.js)[\"']", client.get("/static/app.js").text)
    assert "casebar.js" in modules
    for module in modules:
        assert client.get(f"/static/{module}").status_code == 200, module  # every module the page imports is served
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/v1/model", "/v1/predict", "/v1/differential", "/v1/cases"} <= set(paths)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    for asset in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text):
        assert asset.startswith("/") and client.get(asset).status_code == 200, asset


def test_predict_one(client, images):
    r = client.post("/v1/predict", files=upload([("cell.png", images[0])]))
    assert r.status_code == 200
    body = r.json()
    (p,) = body["predictions"]
    assert p["filename"] == "cell.png" and p["label"] in body["model"]["classes"]
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-3
    assert isinstance(p["uncertain"], bool) and p["not_a_blood_cell"] is False
    assert "gradcam_png" not in p and body["differential"] is None


def test_unknown_query_parameters_of_the_api_are_refused(client, images):
    """/v1/predict?tta=true classified without TTA and said nothing; the page and the docs take any query."""
    r = client.post("/v1/predict?tta=true", files=upload([("cell.png", images[0])]))
    assert r.status_code == 422
    assert r.json()["detail"] == "Unknown query parameter tta: /v1/predict takes explain."
    r = client.get("/v1/model?verbose=1&x=2")
    assert r.status_code == 422 and r.json()["detail"] == "Unknown query parameters verbose, x: /v1/model takes none."
    assert client.get("/?utm=1").status_code == 200 and client.get("/docs?x=1").status_code == 200


def test_predict_many_with_explain(client, images):
    r = client.post("/v1/predict?explain=true", files=upload([(f"c{i}.png", images[i]) for i in range(3)]))
    assert r.status_code == 200
    body = r.json()
    assert [p["filename"] for p in body["predictions"]] == ["c0.png", "c1.png", "c2.png"]
    heat = body["predictions"][0]["gradcam_png"]
    assert heat.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(heat.split(",", 1)[1])))
    assert img.size == (32, 32)
    assert body["differential"]["counted"] == 3
    assert sum(r["count"] for r in body["differential"]["classes"]) == 3
    assert body["warning"] is None  # three cells are too few to say the images look unlike the training data


def test_differential_endpoint(client, images):
    r = client.post("/v1/differential", files=upload([(f"c{i}.png", images[i]) for i in range(4)]))
    assert r.status_code == 200
    d = r.json()["differential"]
    assert d["total"] == 4 and abs(sum(x["percent"] for x in d["classes"]) - 100) < 0.1
    assert "warning" in r.json() and r.json()["warning"] is None


def test_mixed_batch_skips_bad_file(client, images):
    r = client.post("/v1/predict", files=upload([("good.png", images[0]), ("notes.txt", b"hello")]))
    assert r.status_code == 200
    assert len(r.json()["predictions"]) == 1
    assert r.json()["skipped"][0]["filename"] == "notes.txt"


@pytest.mark.parametrize("endpoint", ["/v1/predict", "/v1/differential"])
def test_non_image(client, endpoint):
    r = client.post(endpoint, files=upload([("notes.txt", b"just text")]))
    assert r.status_code == 422
    assert "notes.txt: not a readable image" in r.json()["detail"]


def test_empty_file(client):
    r = client.post("/v1/predict", files=upload([("empty.png", b"")]))
    assert r.status_code == 422 and "empty.png: empty file" in r.json()["detail"]


def test_no_files(client):
    r = client.post("/v1/predict")
    assert r.status_code == 422 and "No images received" in r.json()["detail"]
    r = client.post("/v1/predict", data={"other": "x"})
    assert r.status_code == 422 and "field 'files'" in r.json()["detail"]


def test_too_large(client):
    big = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    r = client.post("/v1/predict", files=upload([("big.png", png(big))]))
    assert r.status_code == 413 and "Upload too large" in r.json()["detail"] and "0.5 MB" in r.json()["detail"]


def test_too_large_without_content_length(client):
    def chunks():
        for _ in range(10):
            yield b"x" * 100_000

    r = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413 and "Upload too large" in r.json()["detail"]


def test_too_many_files(client, images):
    r = client.post("/v1/predict", files=upload([(f"c{i}.png", images[0]) for i in range(5)]))
    assert r.status_code == 413 and "Too many files: more than 4; at most 4" in r.json()["detail"]


def test_not_multipart(client):
    r = client.post("/v1/predict", content=b"\x00\x01", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500 and isinstance(r.json()["detail"], str)


def test_concurrent_requests_share_batches(images):
    app = create_app(tiny_model(), max_files=4, allowed_hosts=["testserver"])
    batcher = app.state.batcher
    original = app.state.classifier.scores
    first = threading.Event()

    def slow_first(batch):
        if not first.is_set():  # hold the first batch until other requests queue up behind it
            first.set()
            deadline = time.monotonic() + 30
            while batcher._queue.qsize() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(batch)

    batcher._fn = slow_first
    results = []
    with TestClient(app) as c:
        def one(i):
            results.append(c.post("/v1/predict", files=upload([(f"c{i}.png", images[i % 8])])).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200] * 12
    assert sum(n for _, n in batcher.batches) == 12
    assert max(requests for requests, _ in batcher.batches) >= 2, list(batcher.batches)
    assert len(batcher.batches) < 12


def test_batcher_splits_results_and_errors():
    b = Batcher(lambda x: (x[:, :1, 0, 0].astype(float), None), max_batch=8)
    futures = [b.submit(np.full((n, 2, 2, 3), i, np.uint8)) for i, n in enumerate([1, 3, 2])]
    outs = [f.result(timeout=10) for f in futures]
    assert [len(o[0]) for o in outs] == [1, 3, 2] and outs[2][0][0, 0] == 2
    assert sum(n for _, n in b.batches) == 6 and sum(r for r, _ in b.batches) == 3
    b.close()

    def boom(x):
        raise RuntimeError("model failed")

    bad = Batcher(boom)
    with pytest.raises(RuntimeError, match="model failed"):
        bad.submit(np.zeros((1, 2, 2, 3), np.uint8)).result(timeout=10)
    bad.close()
