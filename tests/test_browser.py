"""The web page's quick-classify section in a real browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import numpy as np
import pytest

from _browser_helpers import cell_images, chromium, need_browser, new_page, screenshot_dir, serving
from _serve_helpers import cells, unsure_model, write_png

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    need_browser()
    with serving("--max-files", "8", "--max-upload-mb", "2") as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    with chromium() as browser:
        yield new_page(browser)


def _quick(page, server):
    """Open the page's quick-classify section (images classified without a case)."""
    page.goto(server + "/")
    page.click(".quick summary")


def test_upload_shows_class_and_heatmap(page, server, tmp_path):
    _quick(page, server)
    page.wait_for_selector("#model-line:has-text('tiny test model')")
    assert not page.is_checked("#quick-explain")  # Grad-CAM costs seconds per image: asked for, not by default
    page.check("#quick-explain")
    (image,) = cell_images(tmp_path, 1)
    page.set_input_files("#quick-input", str(image))
    card = page.wait_for_selector("article.card")
    label = card.query_selector(".label").inner_text().strip().lower()
    assert label in {"basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"}
    heat = page.wait_for_selector("img.heatmap")
    page.wait_for_function("document.querySelector('img.heatmap').naturalWidth > 0")
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert len(card.query_selector_all(".bars li")) == 8
    shot = screenshot_dir(tmp_path) / "page_single.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000


def test_a_tiff_upload_is_classified_and_says_it_has_no_preview(page, server, tmp_path):
    from PIL import Image

    _quick(page, server)
    tiff = tmp_path / "cell.tif"
    Image.fromarray(cells(1, seed=8)[0][0]).save(tiff, "TIFF")
    page.set_input_files("#quick-input", str(tiff))
    card = page.wait_for_selector("article.card:has(.no-preview)")
    assert "cannot show the file" in card.inner_text() and card.query_selector(".label").inner_text().strip()


def test_batch_shows_differential(page, server, tmp_path):
    _quick(page, server)
    images = cell_images(tmp_path, 6)
    page.set_input_files("#quick-input", [str(p) for p in images])
    page.wait_for_selector("#quick-differential:not([hidden])")
    assert len(page.query_selector_all("article.card")) == 6
    rows = page.query_selector_all("#quick-diff-table tbody tr")
    assert len(rows) == 8
    counts = [int(r.query_selector_all("td")[1].inner_text()) for r in rows]
    not_cells = len(page.query_selector_all("article.card.is-ood"))
    assert sum(counts) == 6 - not_cells  # images flagged as not blood cells are left out of the count
    if not_cells:
        assert f"{not_cells} image(s) left out" in page.inner_text("#quick-diff-summary")
    assert len(page.query_selector_all("#quick-diff-chart .col-fill")) == 8
    assert page.is_hidden("#quick-diff-warning")  # the tiny model records no validation share to compare with
    shot = screenshot_dir(tmp_path) / "page_batch.png"
    page.screenshot(path=str(shot), full_page=True)


def test_bad_upload_shows_message(page, server, tmp_path):
    _quick(page, server)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#quick-input", str(bad))
    err = page.wait_for_selector("#quick-error:not([hidden])")
    assert "not a readable image" in err.inner_text()
    too_many = [write_png(tmp_path / f"m{i}.png", np.full((20, 20, 3), i * 20, np.uint8)) for i in range(9)]
    page.set_input_files("#quick-input", [str(p) for p in too_many])
    page.wait_for_selector("#quick-error:has-text('Too many files')")


def test_refused_uploads_show_the_server_message(page, server, tmp_path):
    noisy = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    shown = {}
    for name, image in [("noisy.png", noisy), ("huge.png", np.zeros((2500, 2000, 3), np.uint8))]:
        _quick(page, server)
        page.set_input_files("#quick-input", str(write_png(tmp_path / name, image)))
        shown[name] = page.wait_for_selector("#quick-error:not([hidden])").inner_text()
    assert "Upload too large" in shown["noisy.png"] and "2 MB per request" in shown["noisy.png"]
    assert "huge.png: image is 2000x2500 = 5,000,000 pixels, over the limit" in shown["huge.png"]
    _quick(page, server)
    busy = {"detail": "The service is busy with other requests; retry in 2 s.", "skipped": []}
    page.route("**/v1/predict*", lambda route: route.fulfill(status=503, json=busy, headers={"Retry-After": "2"}))
    page.set_input_files("#quick-input", str(write_png(tmp_path / "cell.png", cells(1, seed=3)[0][0])))
    assert page.wait_for_selector("#quick-error:not([hidden])").inner_text() == busy["detail"]
    page.route("**/v1/predict*", lambda route: route.fulfill(status=503, body="<html>proxy</html>",
                                                            headers={"Retry-After": "7"}))
    page.set_input_files("#quick-input", str(write_png(tmp_path / "cell2.png", cells(1, seed=4)[0][0])))
    page.wait_for_selector("#quick-error:has-text('Retry in 7 s')")
    shot = screenshot_dir(tmp_path) / "page_refused.png"
    page.screenshot(path=str(shot), full_page=True)
    page.unroute("**/v1/predict*")


def test_a_batch_mostly_uncertain_shows_the_warning(page, tmp_path):
    model = unsure_model(tmp_path / "model")
    with serving("--model", str(model), "--max-files", "40") as url:
        _quick(page, url)  # the module's browser page, on a second server
        page.set_input_files("#quick-input", [str(p) for p in cell_images(tmp_path, 32)])
        page.wait_for_selector("#quick-differential:not([hidden])")
        counted = 32 - len(page.query_selector_all("article.card.is-ood"))
        warning = page.inner_text("#quick-diff-warning")
        assert counted == 32
        assert warning.startswith(f"100% of these {counted} cells are uncertain, against 1.0% of the model's")
        assert "bloodcell adapt" in warning and page.is_visible("#quick-diff-warning")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "page_unfamiliar.png"), full_page=True)
