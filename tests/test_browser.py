"""The web page in a real browser: Debian's Chromium driven by Playwright against `bloodcell serve`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _serve_helpers import REAL_DATA_DIR, SRC, cells, tiny_model, write_png

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("BLOODCELL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloodcell", "serve", "--model", str(tiny_model()), "--port", str(port),
         "--max-files", "8", "--max-upload-mb", "2", "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"bloodcell serve did not start: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _cell_images(tmp_path: Path, n: int) -> list[Path]:
    """``n`` real PBC images (one per class in turn) when the dataset is present, else synthetic cells."""
    if REAL_DATA_DIR.is_dir():
        per_class = [sorted(d.glob("*.jpg"))[:n] for d in sorted(REAL_DATA_DIR.iterdir()) if d.is_dir()]
        picked = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
        if len(picked) == n:
            return picked
    x, _ = cells(1, seed=31)
    return [write_png(tmp_path / f"cell_{i}.png", x[i]) for i in range(n)]


def test_upload_shows_class_and_heatmap(page, server, tmp_path):
    page.goto(server + "/")
    page.wait_for_selector("#model-line:has-text('tiny test model')")
    (image,) = _cell_images(tmp_path, 1)
    page.set_input_files("#file-input", str(image))
    card = page.wait_for_selector("article.card")
    label = card.query_selector(".label").inner_text().strip().lower()
    assert label in {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"}
    heat = page.wait_for_selector("img.heatmap")
    page.wait_for_function("document.querySelector('img.heatmap').naturalWidth > 0")
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert len(card.query_selector_all(".bars li")) == 8
    shot = Path(os.environ.get("BLOODCELL_SCREENSHOT_DIR", tmp_path)) / "page_single.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000


def test_batch_shows_differential(page, server, tmp_path):
    page.goto(server + "/")
    images = _cell_images(tmp_path, 6)
    page.set_input_files("#file-input", [str(p) for p in images])
    page.wait_for_selector("#differential:not([hidden])")
    assert len(page.query_selector_all("article.card")) == 6
    rows = page.query_selector_all("#diff-table tbody tr")
    assert len(rows) == 8
    counts = [int(r.query_selector_all("td")[1].inner_text()) for r in rows]
    not_cells = len(page.query_selector_all("article.card.is-ood"))
    assert sum(counts) == 6 - not_cells  # images flagged as not blood cells are left out of the count
    if not_cells:
        assert f"{not_cells} image(s) left out" in page.inner_text("#diff-summary")
    assert len(page.query_selector_all("#diff-chart .col-fill")) == 8
    shot = Path(os.environ.get("BLOODCELL_SCREENSHOT_DIR", tmp_path)) / "page_batch.png"
    page.screenshot(path=str(shot), full_page=True)


def test_bad_upload_shows_message(page, server, tmp_path):
    page.goto(server + "/")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#file-input", str(bad))
    err = page.wait_for_selector("#error:not([hidden])")
    assert "not a readable image" in err.inner_text()
    too_many = [write_png(tmp_path / f"m{i}.png", np.full((20, 20, 3), i * 20, np.uint8)) for i in range(9)]
    page.set_input_files("#file-input", [str(p) for p in too_many])
    page.wait_for_selector("#error:has-text('Too many files')")


def test_refused_uploads_show_the_server_message(page, server, tmp_path):
    noisy = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    shown = {}
    for name, image in [("noisy.png", noisy), ("huge.png", np.zeros((2500, 2000, 3), np.uint8))]:
        page.goto(server + "/")
        page.set_input_files("#file-input", str(write_png(tmp_path / name, image)))
        shown[name] = page.wait_for_selector("#error:not([hidden])").inner_text()
    assert "Upload too large" in shown["noisy.png"] and "2 MB per request" in shown["noisy.png"]
    assert "huge.png: image is 2000x2500 = 5,000,000 pixels, over the limit" in shown["huge.png"]
    page.goto(server + "/")
    busy = {"detail": "The service is busy with other requests; retry in 2 s.", "skipped": []}
    page.route("**/v1/predict*", lambda route: route.fulfill(status=503, json=busy, headers={"Retry-After": "2"}))
    page.set_input_files("#file-input", str(write_png(tmp_path / "cell.png", cells(1, seed=3)[0][0])))
    assert page.wait_for_selector("#error:not([hidden])").inner_text() == busy["detail"]
    page.route("**/v1/predict*", lambda route: route.fulfill(status=503, body="<html>proxy</html>",
                                                            headers={"Retry-After": "7"}))
    page.set_input_files("#file-input", str(write_png(tmp_path / "cell2.png", cells(1, seed=4)[0][0])))
    page.wait_for_selector("#error:has-text('Retry in 7 s')")
    shot = Path(os.environ.get("BLOODCELL_SCREENSHOT_DIR", tmp_path)) / "page_refused.png"
    page.screenshot(path=str(shot), full_page=True)
    page.unroute("**/v1/predict*")
