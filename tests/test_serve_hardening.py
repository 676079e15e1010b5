"""The service under hostile input: pixel caps, back-pressure, hosts, headers, one error body."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

import bloodcell.server.app as server_app
from _serve_helpers import cells, tiny_model
from bloodcell.core.preprocess import decode_image
from bloodcell.server import create_app
from bloodcell.server.errors import Busy
from bloodcell.server.guards import Gate


def encode(image: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def client():
    app = create_app(tiny_model(), max_upload_mb=2, max_files=4, max_megapixels=1, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def cell_png():
    x, _ = cells(1, seed=5)
    return encode(x[0])


def upload(items):
    return [("files", (name, data, "image/png")) for name, data in items]


def test_huge_pixel_image_refused_before_decoding(client, cell_png, monkeypatch):
    huge = encode(np.zeros((1500, 1500, 3), np.uint8))  # 2.25 MP in a few kB, over the 1 MP cap
    loaded = []
    original = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    r = client.post("/v1/predict", files=upload([("huge.png", huge), ("cell.png", cell_png)]))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    (skip,) = r.json()["skipped"]
    assert skip["filename"] == "huge.png"
    assert "1500x1500 = 2,250,000 pixels, over the limit of 1,000,000 pixels per image" in skip["detail"]
    assert (1500, 1500) not in loaded
    r = client.post("/v1/predict", files=upload([("huge.png", huge)]))
    assert r.status_code == 422 and "huge.png: image is 1500x1500" in r.json()["detail"]


def test_large_jpeg_decodes_at_reduced_scale():
    rng = np.random.default_rng(0)
    big = np.kron(rng.integers(0, 255, (150, 150, 3), dtype=np.uint8), np.ones((16, 16, 1), np.uint8))
    data = encode(big, "JPEG", quality=90)  # 2400x2400
    assert decode_image(data, "big.jpg", need=400).shape == (600, 600, 3)
    assert decode_image(data, "big.jpg", need=256).shape == (300, 300, 3)
    assert decode_image(data, "big.jpg").shape == (2400, 2400, 3)
    assert decode_image(data, "big.jpg", max_pixels=1_000_000, need=400).shape == (600, 600, 3)
    with pytest.raises(Exception, match="over the limit of 1,000,000 pixels"):
        decode_image(data, "big.jpg", max_pixels=1_000_000, need=1000)


def test_cell_sized_jpeg_keeps_its_pixels():
    x, _ = cells(1, seed=6, size=360)
    data = encode(x[3], "JPEG", quality=95)
    assert np.array_equal(decode_image(data, "c.jpg", need=64), decode_image(data, "c.jpg"))


def test_gate_refuses_past_its_queue():
    async def scenario():
        gate = Gate("requests", slots=1, queue=1, retry_after=3)
        release = asyncio.Event()

        async def hold():
            async with gate.enter():
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Busy) as busy:
            async with gate.enter():
                pass
        release.set()
        await asyncio.gather(*tasks)
        async with gate.enter():
            pass
        return busy.value.retry_after, gate.count

    assert asyncio.run(scenario()) == (3, 0)


def test_saturated_service_answers_503_with_retry_after(cell_png, monkeypatch):
    monkeypatch.setattr(server_app, "WORK_SLOTS", 1)
    monkeypatch.setattr(server_app, "WORK_QUEUE", 0)
    app = create_app(tiny_model(), allowed_hosts=["testserver"])
    started, release = threading.Event(), threading.Event()
    scores = app.state.classifier.scores

    def slow(batch):
        started.set()
        release.wait(30)
        return scores(batch)

    app.state.batcher._fn = slow
    statuses = []
    with TestClient(app) as c:
        first = threading.Thread(target=lambda: statuses.append(
            c.post("/v1/predict", files=upload([("a.png", cell_png)])).status_code))
        first.start()
        assert started.wait(30)
        r = c.post("/v1/predict", files=upload([("b.png", cell_png)]))
        release.set()
        first.join(30)
    assert statuses == [200]
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json() == {"detail": "The service is busy with other requests; retry in 2 s.", "skipped": []}


def test_model_card_hides_server_paths(client):
    r = client.get("/v1/model")
    assert r.status_code == 200
    assert str(tiny_model()) not in r.text and "path" not in r.json()["runtime"]
    assert r.json()["runtime"]["name"] == "tiny test model"


@pytest.mark.parametrize("host,status", [("localhost:8000", 200), ("127.0.0.1", 200), ("[::1]:8000", 200),
                                         ("evil.example", 400), ("localhost.evil.example", 400)])
def test_host_header_checked(client, host, status):
    r = client.get("/health", headers={"host": host})
    assert r.status_code == status
    if status == 400:
        assert "Invalid Host header" in r.json()["detail"] and r.json()["skipped"] == []


@pytest.mark.parametrize("path", ["/", "/health", "/static/app.js", "/docs", "/nowhere"])
def test_security_headers_everywhere(client, path):
    h = client.get(path).headers
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    if path != "/docs":
        assert "unsafe-inline" not in h["content-security-policy"]


def test_security_headers_on_refused_upload(client):
    r = client.post("/v1/predict", content=b"x" * 3_000_000, headers={"content-type": "multipart/form-data; boundary=a"})
    assert r.status_code == 413 and r.headers["x-content-type-options"] == "nosniff"


def test_telemetry_switched_off_before_sessions(monkeypatch):
    import onnxruntime

    calls = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1), raising=False)
    server_app.no_telemetry.cache_clear()
    create_app(tiny_model())
    create_app(tiny_model())
    assert calls == [1]


@pytest.mark.parametrize("count", [5, 65, 1001])
def test_too_many_files_is_413_at_any_count(client, count):
    r = client.post("/v1/predict", files=upload([(f"f{i}.png", b"x") for i in range(count)]))
    assert r.status_code == 413
    assert r.json() == {"detail": "Too many files: more than 4; at most 4 images per request. Split the batch.",
                        "skipped": []}


def test_error_bodies_documented_and_real(client):
    schema = client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["ErrorBody"]
    assert set(body["properties"]) == {"detail", "skipped"}
    for path in ("/v1/predict", "/v1/differential"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("400", "413", "422", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorBody"), (path, status)
    for r in (client.post("/v1/predict"),
              client.post("/v1/predict", files=upload([("n.txt", b"text")])),
              client.post("/v1/predict", content=b"\x00", headers={"content-type": "multipart/form-data"}),
              client.post("/v1/predict", content=b"x" * 3_000_000)):
        assert set(r.json()) == {"detail", "skipped"} and isinstance(r.json()["detail"], str), r.status_code


def test_gradcam_runs_in_small_chunks(cell_png):
    app = create_app(tiny_model(), max_files=8, allowed_hosts=["testserver"])
    clf = app.state.classifier
    sizes = []
    app.state.classifier.explain = lambda images: sizes.append(len(images)) or np.zeros(images.shape[:3], np.float32)
    with TestClient(app) as c:
        r = c.post("/v1/predict?explain=true", files=upload([(f"c{i}.png", cell_png) for i in range(7)]))
    assert r.status_code == 200 and all(p["gradcam_png"] for p in r.json()["predictions"])
    assert sizes == [2, 2, 2, 1] and clf.batch_size == server_app.BATCH_SIZE


def test_gate_trims_memory_once_idle_at_a_bounded_rate():
    trims = []
    clock = [100.0]  # the gate's clock stands still while the requests run, however slow the machine

    async def scenario():
        gate = Gate("requests", slots=2, queue=0, trim=True, trim_every=0.3, clock=lambda: clock[0],
                    release=lambda: trims.append(1))
        for _ in range(20):  # twenty short requests in a row: one trim now, one deferred
            async with gate.enter():
                await asyncio.sleep(0)
        first = len(trims)
        clock[0] += 0.3
        await asyncio.sleep(0.6)  # the deferred trim's timer fires once
        return first, len(trims)

    assert asyncio.run(scenario()) == (1, 2)
