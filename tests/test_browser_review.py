"""The case review page in a real browser: cases, batches, keyboard review, differential, exports, phone size."""

from __future__ import annotations

import csv
import hashlib
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from _browser_helpers import cell_images, chromium, need_browser, new_page, screenshot_dir, serving

pytestmark = pytest.mark.browser

REVIEWER = "Dr Review"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    store = tmp_path_factory.mktemp("cases")
    with serving("--max-files", "8", "--max-upload-mb", "2", "--cases", str(store)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server):
    with chromium() as b:
        yield b


def _case_via_api(server: str, accession: str, files: list[tuple[str, bytes]]) -> dict:
    kase = httpx.post(f"{server}/v1/cases", json={"accession": accession}).raise_for_status().json()
    upload = [("files", (name, data, "image/jpeg")) for name, data in files]
    httpx.post(f"{server}/v1/cases/{kase['id']}/cells", files=upload, timeout=60).raise_for_status()
    return kase


def _api_cells(server: str, case_id) -> dict:
    cells = httpx.get(f"{server}/v1/cases/{case_id}/cells").raise_for_status().json()["cells"]
    return {str(c["id"]): c for c in cells}


def _white(page) -> dict[str, int]:
    rows = page.query_selector_all("#diff-body tr")
    return {r.get_attribute("data-class"): int(r.query_selector("td").inner_text()) for r in rows}


def _key_for(page, label: str) -> str:
    """The key the page's legend gives a label (checks the legend follows the model's class order)."""
    for item in page.query_selector_all("#key-legend li"):
        key, _, text = item.inner_text().partition(" ")
        if text.strip() == label:
            return key
    raise AssertionError(f"{label} is not in the key legend")


def _review_by_key(page, server, case_id, label: str, key: str) -> str:
    """Press ``key`` on the focused card and wait until the server has the label; returns the cell id."""
    cell_id = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press(key)
    page.wait_for_function("id => document.querySelector(`.cell[data-id='${id}']`).classList.contains('is-reviewed')",
                           arg=cell_id)
    assert _api_cells(server, case_id)[cell_id]["label"] == label
    return cell_id


def test_case_review_flow(browser, server, tmp_path):
    page = new_page(browser, accept_downloads=True)
    page.goto(server + "/")
    page.wait_for_selector("#no-case")
    assert page.is_hidden("#review") and page.is_hidden("#case-open")  # nothing to review before a case is open
    page.fill("#reviewer", REVIEWER)
    page.fill("#new-accession", "H24-0001")
    page.fill("#new-note", "routine differential")
    page.select_option("#new-target", "100")
    page.click("#new-case button[type=submit]")
    page.wait_for_selector("#case-title:has-text('H24-0001')")
    case_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('case')")
    assert case_id
    images = cell_images(tmp_path, 20)
    page.set_input_files("#cell-input", [str(p) for p in images[:10]])  # 10 files: two requests of at most 8
    page.wait_for_selector("#case-count:has-text('10 / 100 cells')")
    page.set_input_files("#cell-input", [str(p) for p in images[10:]])
    page.wait_for_selector("#case-count:has-text('20 / 100 cells')")
    assert len(page.query_selector_all("#gallery .cell")) == 20
    cells = _api_cells(server, case_id)
    flagged = [c for c in cells.values() if c["uncertain"] or c["not_a_blood_cell"]]
    groups = [g.get_attribute("data-group") for g in page.query_selector_all("#gallery .group")]
    if flagged:
        assert groups[0] == "queue"
        assert len(page.query_selector_all(".group.queue .cell")) == len(flagged)
    classes = [c.strip() for c in page.eval_on_selector_all("#key-legend li", "els => els.map(e => e.textContent)")][:8]
    assert classes[0].startswith("1") and len(page.query_selector_all("#key-legend li")) >= 11

    before = _white(page)
    first = page.query_selector("#gallery .cell")
    first.focus()
    target = "monocyte" if cells[first.get_attribute("data-id")]["predicted"] != "monocyte" else "lymphocyte"
    reviewed_id = _review_by_key(page, server, case_id, target, _key_for(page, target))
    page.wait_for_function("([c, n]) => document.querySelector(`#diff-body tr[data-class=${c}] td`).textContent === n",
                           arg=[target, str(before[target] + 1)])
    assert _api_cells(server, case_id)[reviewed_id]["reviewer"] == REVIEWER
    shot_dir = screenshot_dir(tmp_path)
    page.screenshot(path=str(shot_dir / "review_after_reclassification.png"), full_page=True)

    smudged = _review_by_key(page, server, case_id, "smudge", "s")  # focus moved on to the next card
    assert smudged != reviewed_id
    page.wait_for_selector("#diff-excluded:has-text('1 smudge')")
    page.keyboard.press("u")
    page.wait_for_function("() => !document.querySelector('#diff-excluded').textContent.includes('smudge')")
    assert _api_cells(server, case_id)[smudged]["label"] is None
    assert page.evaluate("document.activeElement.dataset.id") == smudged
    page.keyboard.press("a")
    page.wait_for_selector("#diff-excluded:has-text('1 artefact')")
    summary = page.inner_text("#diff-summary")
    assert "2 of 20 cells reviewed" in summary
    order = "[...document.querySelectorAll('#gallery .cell')].indexOf(document.activeElement)"
    here = page.evaluate(order)
    page.keyboard.press("ArrowRight")
    assert page.evaluate(order) == here + 1
    confirmed = page.evaluate("document.activeElement.dataset.id")
    _review_by_key(page, server, case_id, cells[confirmed]["predicted"], "Enter")
    page.wait_for_selector("#diff-summary:has-text('3 of 20 cells reviewed')")
    page.keyboard.press("Control+z")
    page.wait_for_selector("#diff-summary:has-text('2 of 20 cells reviewed')")
    assert _api_cells(server, case_id)[confirmed]["label"] is None

    page.select_option("#filter-flag", "unreviewed")
    assert len(page.query_selector_all("#gallery .cell")) == 18
    page.select_option("#filter-flag", "")
    page.select_option("#filter-label", target)
    shown = {c.get_attribute("data-id") for c in page.query_selector_all("#gallery .cell")}
    assert reviewed_id in shown
    assert shown == {i for i, c in _api_cells(server, case_id).items() if c["final_label"] == target}
    page.select_option("#filter-label", "")

    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(download.value.path().read_text())))
    assert len(rows) == 20
    labels = {r["id"]: r["label"] for r in rows}
    assert labels[reviewed_id] == target and labels[smudged] == "artefact"
    assert sum(1 for v in labels.values() if v) == 2

    page.reload()
    page.wait_for_selector("#case-title:has-text('H24-0001')")
    page.wait_for_selector("#case-count:has-text('20 / 100 cells')")
    assert len(page.query_selector_all("#gallery .cell.is-reviewed")) == 2
    assert page.inner_text("#diff-summary") == summary
    assert page.input_value("#reviewer") == REVIEWER
    assert page.input_value("#case-select") == case_id
    page.screenshot(path=str(shot_dir / "review_gallery.png"), full_page=True)
    report = new_page(browser)
    report.goto(server + page.get_attribute("#export-report", "href"))
    assert "H24-0001" in report.inner_text("body")
    report.screenshot(path=str(shot_dir / "review_report.png"), full_page=True)
    report.context.close()
    page.context.close()


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    image = np.full((60, 60, 3), 230, np.uint8)
    image[15:45, 15:45] = colour
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_two_files_named_alike_keep_their_own_images(browser, server):
    page = new_page(browser)
    page.goto(server + "/")
    page.fill("#new-accession", "H24-DUP")
    page.click("#new-case button[type=submit]")
    page.wait_for_selector("#case-title:has-text('H24-DUP')")
    red, blue = _jpeg((200, 30, 40)), _jpeg((40, 30, 200))
    page.set_input_files("#cell-input", [{"name": "cell.jpg", "mimeType": "image/jpeg", "buffer": red},
                                         {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"},
                                         {"name": "cell.jpg", "mimeType": "image/jpeg", "buffer": blue}])
    page.wait_for_selector("#case-count:has-text('2 / 100 cells')")
    assert "notes.txt" in page.wait_for_selector("#skipped:not([hidden])").inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('#gallery .thumb')].every(i => i.complete && i.naturalWidth)")
    digests = page.eval_on_selector_all("#gallery .thumb", """async imgs => Promise.all(imgs.map(async i => {
        const bytes = await (await fetch(i.src)).arrayBuffer();
        return Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)))
          .map(b => b.toString(16).padStart(2, '0')).join('');
      }))""")
    assert sorted(digests) == sorted(hashlib.sha256(b).hexdigest() for b in (red, blue))

    case_id = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('case')")
    httpx.patch(f"{server}/v1/cases/{case_id}", json={"target": 3}).raise_for_status()
    page.reload()
    page.wait_for_selector("#case-count:has-text('2 / 3 cells')")
    page.set_input_files("#cell-input", [{"name": f"more{i}.jpg", "mimeType": "image/jpeg", "buffer": red} for i in range(2)])
    assert "1 more fit" in page.wait_for_selector("#error:not([hidden])").inner_text()
    assert page.inner_text("#case-count") == "2 / 3 cells"
    page.context.close()


def test_a_review_made_elsewhere_since_is_not_overwritten(browser, server, tmp_path):
    images = cell_images(tmp_path, 2)
    kase = _case_via_api(server, "H24-TWO", [(p.name, p.read_bytes()) for p in images])
    page = new_page(browser)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#case-count:has-text('2 / 100 cells')")
    page.focus("#gallery .cell")
    mine = _review_by_key(page, server, kase["id"], "smudge", "s")
    other = next(i for i in _api_cells(server, kase["id"]) if i != mine)
    for cell in (mine, other):  # a second reviewer, on another page, labels both cells after this page loaded them
        httpx.patch(f"{server}/v1/cases/{kase['id']}/cells/{cell}",
                    json={"label": "basophil", "reviewer": "Dr Other"}).raise_for_status()
    page.keyboard.press("u")  # undoing my smudge would wipe Dr Other's basophil
    assert "reviewed as basophil by Dr Other" in page.wait_for_selector("#error:not([hidden])").inner_text()
    page.focus(f"#gallery .cell[data-id='{other}']")
    page.keyboard.press("a")  # this page still showed the cell unreviewed
    page.wait_for_function("id => document.querySelector('#error').textContent.includes(`Cell ${id} was changed`)",
                           arg=other)
    cells = _api_cells(server, kase["id"])
    assert cells[mine]["label"] == cells[other]["label"] == "basophil"
    page.wait_for_selector("#diff-summary:has-text('2 of 2 cells reviewed')")
    page.context.close()


def test_gradcam_is_fetched_on_demand(browser, server, tmp_path):
    images = cell_images(tmp_path, 3)
    kase = _case_via_api(server, "H24-CAM", [(p.name, p.read_bytes()) for p in images])
    page = new_page(browser)
    asked = []
    page.on("request", lambda r: asked.append(r.url) if r.url.endswith("/gradcam") else None)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#case-count:has-text('3 / 100 cells')")
    page.wait_for_timeout(300)
    assert asked == []
    page.click("#gallery .cell .cam-btn")
    page.wait_for_function("() => document.querySelector('#cam-heat').naturalWidth > 0")
    assert len(asked) == 1
    box = page.eval_on_selector("#cam-box", "b => b.hidden ? null : [b.offsetWidth, b.offsetHeight]")
    assert box and box[0] > 0 and box[1] > 0
    assert page.is_visible(".cam-legend .ramp")
    assert "input crop" in page.inner_text("#cam-dialog")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_gradcam.png"))
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('#cam-dialog').open")
    page.context.close()


def test_phone_viewport_does_not_scroll_sideways(browser, server, tmp_path):
    images = cell_images(tmp_path, 6)
    kase = _case_via_api(server, "H24-PHONE-with-a-long-accession-number", [(p.name, p.read_bytes()) for p in images])
    overflow = "document.scrollingElement.scrollWidth <= innerWidth"
    page = new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#case-count:has-text('6 / 100 cells')")
    page.wait_for_function("() => [...document.querySelectorAll('#gallery .thumb')].every(i => i.complete)")
    assert page.evaluate(overflow), page.evaluate("document.scrollingElement.scrollWidth")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_phone.png"), full_page=True)
    page.click("#gallery .cell .menu-btn")
    page.wait_for_selector("#label-menu:not([hidden])")
    right = page.eval_on_selector("#label-menu", "m => m.getBoundingClientRect().right")
    assert right <= 390 and page.evaluate(overflow)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_phone_menu.png"))
    page.click("#label-menu .menu-item[data-label=smudge]")
    page.wait_for_selector("#diff-excluded:has-text('1 smudge')")
    page.click("#gallery .cell .cam-btn")
    page.wait_for_function("() => document.querySelector('#cam-heat').naturalWidth > 0")
    assert page.evaluate(overflow)
    assert page.eval_on_selector("#cam-dialog", "d => d.getBoundingClientRect().right") <= 390
    page.screenshot(path=str(screenshot_dir(tmp_path) / "review_phone_gradcam.png"))
    page.keyboard.press("Escape")
    page.click("#adapt-box summary")
    assert page.is_visible("#adapt-method") and page.evaluate(overflow)
    page.click(".quick summary")
    assert page.evaluate(overflow)
    page.context.close()


def test_a_case_mostly_uncertain_shows_the_warning(browser, tmp_path):
    from _serve_helpers import unsure_model

    model = unsure_model(tmp_path / "model")
    images = [(p.name, p.read_bytes()) for p in cell_images(tmp_path, 24)]
    with serving("--model", str(model), "--max-files", "24", "--cases", str(tmp_path / "cases")) as url:
        kase = _case_via_api(url, "H24-UNSURE", images)
        page = new_page(browser)
        page.goto(f"{url}/#case={kase['id']}")
        page.wait_for_selector("#case-count:has-text('24 / 100 cells')")
        warning = page.inner_text("#case-warning")
        assert " of these 24 cells are uncertain, against 1.0% of the model's" in warning
        assert page.is_visible("#case-warning")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "review_unfamiliar.png"), full_page=True)
        page.context.close()


def test_a_confident_case_shows_no_warning(browser, server, tmp_path):
    kase = _case_via_api(server, "H24-SURE", [(p.name, p.read_bytes()) for p in cell_images(tmp_path, 3)])
    page = new_page(browser)
    page.goto(f"{server}/#case={kase['id']}")
    page.wait_for_selector("#case-count:has-text('3 / 100 cells')")
    assert page.is_hidden("#case-warning") and page.inner_text("#case-warning") == ""
    page.context.close()


def test_adapt_to_the_reviewed_cells_and_switch_the_service(browser, tmp_path):
    from _serve_helpers import tiny_model

    env = {"BLOODCELL_MODEL": str(tiny_model()), "BLOODCELL_JOBS": str(tmp_path / "jobs")}
    images = [(p.name, p.read_bytes()) for p in cell_images(tmp_path, 8)]
    with serving("--cases", str(tmp_path / "cases"), env=env) as url:
        kase = _case_via_api(url, "H24-ADAPT", images)
        page = new_page(browser)
        page.goto(f"{url}/#case={kase['id']}")
        page.wait_for_selector("#case-count:has-text('8 / 100 cells')")
        page.click("#adapt-box summary")
        assert page.is_disabled("#adapt-start") and "review some cells first" in page.inner_text("#adapt-cells")
        for i, cell_id in enumerate(sorted(_api_cells(url, kase["id"]), key=int)[:6]):
            label = "lymphocyte" if i % 2 else "neutrophil"
            httpx.patch(f"{url}/v1/cases/{kase['id']}/cells/{cell_id}", json={"label": label}).raise_for_status()
        page.reload()
        page.click("#adapt-box summary")
        page.wait_for_selector("#adapt-cells:has-text('6 reviewed cells with a class: ')")
        page.select_option("#adapt-method", "prototype")
        page.click("#adapt-start")
        page.wait_for_selector("#adapt-status:has-text('Adapting'), #adapt-status:has-text('Done')")
        page.wait_for_selector("#adapt-status:has-text('Done: adapted model written')", timeout=240_000)
        assert page.is_visible("#adapt-switch") and page.is_hidden("#adapt-progress")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "review_adapt_done.png"), full_page=True)
        page.reload()  # the case's job is followed again after a reload
        page.wait_for_selector("#adapt-status:has-text('Done: adapted model written')")
        page.click("#adapt-switch")
        page.wait_for_selector("#model-line:has-text('adapted')")
        assert "now serves" in page.inner_text("#adapt-status")
        assert "adapted" in httpx.get(f"{url}/v1/model").json()["name"]
        page.reload()  # the job's model is the one served: said, and not offered again
        page.wait_for_selector("#adapt-status:has-text('the service serves this adapted model')")
        assert page.is_hidden("#adapt-switch")
        page.context.close()
