"""Whole fields on the review page, in a real browser: upload fields to a case, see a box per cell
on each field, go from a box to its card and back, and review a cell found in a field."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from _browser_helpers import chromium, need_browser, new_page, screenshot_dir, serving

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
FIELDS = Path(os.environ.get("BLOODCELL_FIELDS", REPO.parent / "shared" / "data" / "fields" / "draaslan"))
OVERFLOW = "document.scrollingElement.scrollWidth <= innerWidth"


@pytest.fixture(scope="module")
def fields() -> list[Path]:
    if not (FIELDS / "boxes.csv").is_file():
        pytest.skip(f"development fields not found at {FIELDS} (set BLOODCELL_FIELDS)")
    return [FIELDS / "images" / name for name in ("image-110.png", "image-1.png")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    store = tmp_path_factory.mktemp("cases")
    with serving("--max-files", "8", "--cases", str(store)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as b:
        yield b


def _case(server: str, accession: str) -> dict:
    return httpx.post(f"{server}/v1/cases", json={"accession": accession}).raise_for_status().json()


def test_fields_show_their_boxes_and_lead_to_the_cards(browser, server, fields, tmp_path):
    kase = _case(server, "H24-FIELDS")
    page = new_page(browser)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#case-open:not([hidden])")
    assert page.is_hidden("#fields-box")
    page.set_input_files("#field-input", [str(p) for p in fields])
    page.wait_for_selector("#upload-status:has-text('2 fields:')", timeout=120_000)
    api = httpx.get(f"{server}/v1/cases/{kase['id']}/fields").raise_for_status().json()["fields"]
    n_cells = sum(len(f["cells"]) for f in api)
    assert [f["filename"] for f in api] == [p.name for p in fields] and n_cells >= 3
    assert page.locator("#fields .field-fig").count() == 2
    assert page.locator("#fields .box").count() == n_cells == page.locator("#gallery .cell").count()
    page.wait_for_function("() => [...document.querySelectorAll('#fields img')].every(i => i.complete && i.naturalWidth)")
    # Each box sits where the server says the cell is, on the displayed image.
    f0 = api[0]
    x0, y0, x1, y1 = f0["cells"][0]["box"]
    img = page.locator("#fields .field-fig").first.locator("img").bounding_box()
    rect = page.locator(f"#fields .box[data-cell='{f0['cells'][0]['id']}'] rect").bounding_box()
    scale = img["width"] / f0["width"]
    assert abs(rect["x"] - (img["x"] + x0 * scale)) < 4 and abs(rect["width"] - (x1 - x0) * scale) < 6
    assert abs(rect["y"] - (img["y"] + y0 * scale)) < 4
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_fields.png"), full_page=True)

    target = str(api[0]["cells"][-1]["id"])
    page.click(f"#fields .box[data-cell='{target}']")
    page.wait_for_function("id => document.activeElement?.dataset?.id === id", arg=target)
    page.keyboard.press("0")  # not a cell
    page.wait_for_function(
        "id => document.querySelector(`#fields .box[data-cell='${id}']`).classList.contains('reviewed')", arg=target)
    assert "excluded" in page.locator(f"#fields .box[data-cell='{target}']").get_attribute("class")
    assert page.locator(f"#fields .box[data-cell='{target}'] text").text_content().startswith("not a cell")
    cell = httpx.get(f"{server}/v1/cases/{kase['id']}/cells/{target}").json()
    assert cell["label"] == "not_a_cell" and cell["box"] == api[0]["cells"][-1]["box"]

    page.click(f"#gallery .cell[data-id='{target}'] .field-btn")
    page.wait_for_selector(f"#fields .box.is-target[data-cell='{target}']")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_fields_target.png"))
    page.reload()
    page.wait_for_selector("#fields .field-fig")
    assert page.locator("#fields .box").count() == n_cells
    assert page.locator(f"#fields .box.excluded[data-cell='{target}']").count() == 1
    page.context.close()


def test_fields_fit_a_phone_screen(browser, server, fields, tmp_path):
    kase = _case(server, "H24-FIELDS-PHONE")
    upload = [("files", (p.name, p.read_bytes(), "image/png")) for p in fields[:1]]
    httpx.post(f"{server}/v1/cases/{kase['id']}/fields", files=upload, timeout=120).raise_for_status()
    page = new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#fields .box")
    page.wait_for_function("() => [...document.querySelectorAll('#fields img')].every(i => i.complete && i.naturalWidth)")
    assert page.evaluate(OVERFLOW), page.evaluate("document.scrollingElement.scrollWidth")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_fields_phone.png"), full_page=True)
    page.context.close()
