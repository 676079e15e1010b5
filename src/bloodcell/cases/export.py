"""A case as CSV (one row per cell), JSON (case, cells, lab differential, events) or a ZIP of the
reviewed cells as class folders with a ``manifest.csv`` (a dataset ``bloodcell train`` and
``bloodcell audit`` read)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

from PIL import Image

from bloodcell.cases.fields import fields_of
from bloodcell.cases.store import CaseStore
from bloodcell.core import __version__
from bloodcell.core.classes import CLASSES
from bloodcell.data import IMAGE_EXTENSIONS

CSV_COLUMNS = ("id", "filename", "sha256", "predicted", "confidence", "flags", "label", "final_label", "reviewer",
               "reviewed_at", "field_id", "x0", "y0", "x1", "y1", "at_border")


def _safe(text: str) -> str:
    """User text for a spreadsheet cell: a leading ``=``, ``+``, ``-``, ``@`` or tab would start a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _flags(cell: dict) -> str:
    return ";".join(f for f in ("uncertain", "unfamiliar", "not_a_blood_cell") if cell.get(f))


def _class_names(cells: list[dict]) -> list[str]:
    names = {n for c in cells for n in c["probabilities"]}
    return [n for n in CLASSES if n in names] + sorted(names - set(CLASSES))


def _where(cell: dict) -> list:
    """The field, box and border flag of a cell found in a whole field (empty for a single-cell image)."""
    if cell.get("box") is None:
        return [""] * 6
    return [cell["field_id"], *cell["box"], int(bool(cell["at_border"]))]


def case_csv(store: CaseStore, case_id: int) -> str:
    """One row per cell: :data:`CSV_COLUMNS` and ``p_<class>`` per class (file and reviewer names that
    a spreadsheet would read as a formula get a leading ``'``)."""
    cells = store.cells(case_id)
    names = _class_names(cells)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *(f"p_{n}" for n in names)])
    for c in cells:
        w.writerow([c["id"], _safe(c["filename"]), c["sha256"], c["predicted"], f"{c['confidence']:.6f}", _flags(c),
                    c["label"] or "", c["final_label"], _safe(c["reviewer"] or ""), c["reviewed_at"] or "",
                    *_where(c), *(f"{c['probabilities'].get(n, 0.0):.6f}" for n in names)])
    return buf.getvalue()


def case_document(store: CaseStore, case_id: int) -> dict:
    """The whole case: the case with its lab differential, its cells, its events and the models."""
    case = store.case(case_id)
    return {"case": case, "cells": store.cells(case_id), "fields": fields_of(store, case_id),
            "differential": case["differential"], "events": store.events(case_id), "models": store.models(case_id),
            "bloodcell": __version__}


def case_json(store: CaseStore, case_id: int) -> str:
    return json.dumps(case_document(store, case_id), indent=1) + "\n"


def _member(cell: dict, ext: str) -> str:
    return f"{cell['label']}/case{cell['case_id']}-cell{cell['id']}-{cell['sha256'][:12]}{ext}"


def _image_bytes(path: Path, ext: str) -> tuple[bytes, str]:
    """The stored bytes, or a PNG of them when the dataset readers do not read the stored format."""
    if ext in IMAGE_EXTENSIONS:
        return path.read_bytes(), ext
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue(), ".png"


def write_dataset_zip(store: CaseStore, case_id: int, target) -> int:
    """Write the reviewed cells whose label is a class to ``target`` (a path or binary file) as
    ``<class>/<name>`` members and ``manifest.csv`` (``path,label`` plus the cell's origin); return
    how many images it holds. Cells reviewed as not a cell, smudge or artefact stay out."""
    cells = [c for c in store.cells(case_id, flag="reviewed") if c["label"] in CLASSES]
    rows = []
    with zipfile.ZipFile(target, "w") as z:
        for c in cells:
            path, _ = store.image(case_id, c["id"])
            ext = path.suffix
            data, ext = _image_bytes(path, ext)
            name = _member(c, ext)
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)
            rows.append([name, c["label"], c["predicted"], c["sha256"], case_id, c["id"], c["filename"],
                         c["reviewer"] or "", c["reviewed_at"]])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "label", "predicted", "sha256", "case_id", "cell_id", "filename", "reviewer",
                    "reviewed_at"])
        w.writerows(rows)
        z.writestr(zipfile.ZipInfo("manifest.csv", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                   zipfile.ZIP_DEFLATED)
    return len(rows)


def media(fmt: str) -> tuple[str, str]:
    """The media type and file suffix of an export format."""
    return {"csv": ("text/csv; charset=utf-8", ".csv"), "json": ("application/json", ".json"),
            "report": ("text/html; charset=utf-8", ".html"), "dataset": ("application/zip", ".zip")}[fmt]

