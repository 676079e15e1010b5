"""The whole-field section of ``bloodcell report --fields BOXES.csv``: how well white cells are
found against hand-drawn boxes, what the model counts in those fields, and a few overlays."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from bloodcell.core.errors import DataError
from bloodcell.core.files import atomic_write_bytes, atomic_write_json
from bloodcell.core.preprocess import decode_image
from bloodcell.fields.analyse import analyse_image, overall_counts, overall_differential
from bloodcell.fields.measure import image_paths, read_boxes, score_fields, white_truth
from bloodcell.fields.overlay import draw

#: Overlays shown in the report: the fields with the most cells.
SHOWN = 3


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def measure_fields(classifier, boxes_csv: str | Path) -> tuple[dict, list[tuple[str, bytes]]]:
    """Find, classify and count the cells of the fields a boxes file lists, score the white cells
    found against its boxes (IoU ≥ 0.5), and draw the overlays of the busiest fields.

    Returns the figures (detection, counts, differential) and ``(name, png)`` overlays.
    """
    boxes = read_boxes(boxes_csv)
    paths, missing = image_paths(boxes_csv, sorted(boxes))
    if not paths:
        raise DataError(f"{boxes_csv}: none of its images was found beside it or in images/.")
    results, found, drawn = [], {}, []
    for name, path in paths.items():
        image = decode_image(path, str(path))
        result = analyse_image(classifier, image, name)
        results.append(result)
        found[name] = [(c.box, c.score) for c in result.cells if c.prediction is not None]
        drawn.append((len(result.cells), name, image, result))
    detection = score_fields(found, white_truth(boxes))
    overlays = []
    for _, name, image, result in sorted(drawn, key=lambda d: -d[0])[:SHOWN]:
        buf = io.BytesIO()
        draw(image, result).save(buf, format="PNG")
        overlays.append((name, buf.getvalue()))
    return {"boxes": str(boxes_csv), "missing_images": missing, "detection": detection,
            "counts": overall_counts(results),
            "differential": overall_differential(results, classifier.class_names).to_dict()}, overlays


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def section_html(figures: dict, overlays: list[tuple[str, bytes]]) -> str:
    """The report section as HTML."""
    d, n = figures["detection"], figures["counts"]
    rows = [("fields", d["fields"]), ("white cells boxed", d["true"]), ("white cells found", d["found"]),
            ("recall at IoU ≥ 0.5", _pct(d["recall"])), ("precision at IoU ≥ 0.5", _pct(d["precision"])),
            ("AP50", _pct(d["ap50"])), ("fields with the exact count", _pct(d["count_exact_share"])),
            ("mean absolute count error per field", f"{d['count_error_mean_abs']:.2f}")]
    counts = [("white cells", n["white"]), ("nucleated red cells", n["nucleated_red"]), ("platelets", n["platelet"]),
              ("flagged not a blood cell", n["not_a_blood_cell"]), ("cut by the border", n["at_border"])]
    diff = figures["differential"]["classes"]
    out = ["<section id='fields'><h2>Whole smear fields</h2>",
           f"<p class='muted'>Fields and boxes: <code>{html.escape(figures['boxes'])}</code>. White cells are found "
           "by stain colour deconvolution and classified one by one; a found box counts when it overlaps a boxed "
           "white cell with IoU ≥ 0.5.</p><table><tr><th>finding white cells</th><th></th></tr>"]
    out += [f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows]
    out.append("</table><table><tr><th>counted in these fields</th><th></th></tr>")
    out += [f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in counts]
    out.append("</table><table><tr><th>white-cell differential</th><th>count</th><th>%</th></tr>")
    out += [f"<tr><td>{html.escape(r['class'])}</td><td>{r['count']}</td><td>{_pct(r['percent'])}</td></tr>" for r in diff]
    out.append("</table>")
    flagged = n["not_a_blood_cell"]
    if flagged:
        out.append(f"<p class='note'>The model flagged {flagged} of the {flagged + n['white'] + n['nucleated_red']} cells it "
                   "classified as not a blood cell and they are left out of the counts: these fields look unlike its "
                   "training images (another lab's stain or magnification).</p>")
    if figures["missing_images"]:
        out.append(f"<p class='note'>{len(figures['missing_images'])} image(s) named in the boxes file were not found.</p>")
    for name, png in overlays:
        data = base64.b64encode(png).decode()
        out.append(f"<p class='muted'>{html.escape(name)}</p><img alt='cells found in {html.escape(name)}' "
                   f"src='data:image/png;base64,{data}'>")
    out.append("</section>")
    return "".join(out)


def add_fields_section(report_html: Path, classifier, boxes_csv: str | Path) -> dict:
    """Measure the fields of ``boxes_csv`` and add their section to a written ``report.html``
    (before its closing ``</main>``), with ``fields.json`` beside it. Returns the figures."""
    figures, overlays = measure_fields(classifier, boxes_csv)
    page = report_html.read_text(encoding="utf-8")
    section = section_html(figures, overlays)
    page = page.replace("</main>", section + "</main>", 1) if "</main>" in page else page + section
    atomic_write_bytes(report_html, page.encode("utf-8"))
    atomic_write_json(report_html.parent / "fields.json", figures)
    return figures
