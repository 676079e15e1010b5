"""Start ``bloodcell serve`` and Debian's Chromium for the browser tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from _serve_helpers import REAL_DATA_DIR, cells, start_serve, write_png

CHROMIUM = os.environ.get("BLOODCELL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def need_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")


@contextmanager
def serving(*extra: str, env: dict | None = None):
    """``bloodcell serve`` on the tiny test model at a free port; yields its URL."""
    proc, url = start_serve(*extra, env=env)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium():
    """Headless Chromium (Debian's), driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, **context):
    """A page in a fresh browser context (``viewport`` defaults to 1200x900; ``accept_downloads``, ...)."""
    ctx = browser.new_context(**{"viewport": {"width": 1200, "height": 900}, **context})
    ctx.set_default_timeout(60_000)
    return ctx.new_page()


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BLOODCELL_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cell_images(tmp_path: Path, n: int) -> list[Path]:
    """``n`` real PBC images (one per class in turn) when the dataset is present, else synthetic cells."""
    if REAL_DATA_DIR.is_dir():
        per_class = [[f for f in sorted(d.glob("*.jpg")) if not f.name.startswith(".")][:n]
                     for d in sorted(REAL_DATA_DIR.iterdir()) if d.is_dir()]
        picked = [files[i] for i in range(n) for files in per_class if i < len(files)][:n]
        if len(picked) == n:
            return picked
    x, _ = cells(-(-n // 8), seed=31)
    return [write_png(tmp_path / f"cell_{i}.png", x[i]) for i in range(n)]
