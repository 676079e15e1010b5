"""``bloodcell serve --cases`` killed with SIGKILL while clients upload: the store stays sound."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
from PIL import Image

from _serve_helpers import SRC, tiny_model
from bloodcell import server
from bloodcell.cases import CaseStore
from bloodcell.cli.main import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def start(folder, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bloodcell", "serve", "--port", str(port), "--model", str(tiny_model()),
           "--cases", str(folder), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(SRC)}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("bloodcell serve did not start")


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
    folder, port = tmp_path / "cases", free_port()
    proc = start(folder, port)
    base = f"http://127.0.0.1:{port}/v1/cases"
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
