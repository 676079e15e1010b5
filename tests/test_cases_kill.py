"""``bloodcell serve --cases`` killed with SIGKILL while clients upload: the store stays sound."""

from __future__ import annotations

import io
import signal
import threading
import time

import httpx
import numpy as np
from PIL import Image

from _serve_helpers import start_serve
from bloodcell import server
from bloodcell.cases import CaseStore
from bloodcell.cli.main import main


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _upload(url: str, done: list, stop: threading.Event) -> None:
    seed = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            files = [("files", (f"{seed + i}.png", png(seed + i), "image/png")) for i in range(6)]
            seed += 6
            try:
                if client.post(url, files=files).status_code == 200:
                    done.append(seed)
            except httpx.HTTPError:
                return


def test_serve_killed_mid_upload(tmp_path):
    folder = tmp_path / "cases"
    proc, url = start_serve("--cases", str(folder))
    base = f"{url}/v1/cases"
    try:
        cid = httpx.post(base, json={"accession": "K", "target": 100000}).json()["id"]
        done, stop = [], threading.Event()
        clients = [threading.Thread(target=_upload, args=(f"{base}/{cid}/cells", done, stop)) for _ in range(2)]
        for t in clients:
            t.start()
        while len(done) < 4 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(np.random.default_rng().uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    for t in clients:
        t.join(timeout=60)
    store = CaseStore(folder, orphan_age=0)
    assert store.verify() == []
    cells = store.cells(cid)
    assert len(cells) >= 4 * 6
    assert {p.name for p in (folder / "images").rglob("*.png")} == {f"{c['sha256']}.png" for c in cells}


def test_cli_passes_the_cases_folder(monkeypatch):
    seen = {}
    monkeypatch.setattr(server, "serve", lambda model, **kw: seen.update(kw) or 0)
    assert main(["serve", "--cases", "/data/cases"]) == 0
    assert seen["cases"] == "/data/cases"
    assert main(["serve"]) == 0 and seen["cases"] is None
