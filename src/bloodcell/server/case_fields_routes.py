"""Whole smear fields in a case.

``POST /v1/cases/{id}/fields``              find, classify and add every white cell of each field (multipart ``files``)
``GET /v1/cases/{id}/fields``               the case's fields, each with its cells' ids, boxes and final labels
``GET /v1/cases/{id}/fields/{field}/image`` the stored field image

Each cell found is stored as the crop the model classified, with its ``box`` in the field's
pixels, and reviewed like any other cell; the page draws the boxes on the field. A field whose
cells would take the case past its target is refused with 409 (nothing of that upload is added).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from bloodcell.cases import NewCell
from bloodcell.cases.fields import NewField, add_field, field_image, fields_of
from bloodcell.cases.images import facts
from bloodcell.fields.analyse import FieldResult
from bloodcell.server import cases_models as m
from bloodcell.server.cases_routes import case_of, image_response, model_name, store
from bloodcell.server.errors import UPLOAD_ERRORS, error, too_many_files
from bloodcell.server.fields_routes import analyse_uploads
from bloodcell.server.uploads import png_bytes

router = APIRouter(tags=["cases"])


def _to_store(name: str, data: bytes, _image, result: FieldResult) -> tuple[NewField, list[NewCell]]:
    """A field and its classified cells as the store takes them (each cell: its crop as PNG; the
    field is stored as uploaded, so its decoded image is not needed)."""
    stem = Path(name).stem or "field"
    cells = []
    for c in result.cells:
        if c.prediction is None:
            continue
        p, crop_name = c.prediction, f"{stem}_x{c.box[0]}_y{c.box[1]}.png"
        png = png_bytes(c.crop)
        cells.append(NewCell(crop_name, png, facts(png, crop_name), p.label, p.probabilities, p.probability,
                             p.uncertain, p.not_a_blood_cell, "field", box=tuple(int(v) for v in c.box),
                             at_border=c.at_border))
    by_size = sum(c.prediction is None for c in result.cells)
    field = NewField(name, data, facts(data, name), round(result.rbc, 1), by_size, len(result.elsewhere))
    return field, cells


@router.post("/v1/cases/{case_id}/fields", response_model=m.FieldsAdded,
             summary="Find, classify and add every cell of whole smear fields",
             responses={**UPLOAD_ERRORS, **m.NOT_FOUND, **m.OVER_TARGET})
async def add_fields(request: Request, case_id: int,
                     files: list[UploadFile] = File(..., description="field images (PNG, JPEG, TIFF, ...)"),
                     tile_overlap: float = Query(0.0, ge=0, description="pixels that neighbouring tiles share")):
    state = request.app.state
    if len(files) > state.limits["max_files"]:
        return too_many_files(state.limits["max_files"], len(files))
    cases = await run_in_threadpool(store, request)
    await run_in_threadpool(cases.room, case_id)
    async with state.work_gate.enter():
        async with state.decode_gate.enter():
            done, skipped = await run_in_threadpool(analyse_uploads, state, files, tile_overlap, _to_store, True)
    if not done:
        reasons = " ".join(s["detail"] for s in skipped)
        return error(422, f"No readable field in the upload. {reasons}".strip(), skipped)
    skipped = [{"filename": s["filename"], "error": s["detail"]} for s in skipped]
    held, target = await run_in_threadpool(cases.room, case_id)
    found = sum(len(cells) for _, cells in done)
    if held + found > target:
        raise cases.over_target(case_id, held, target, found)
    fields, cells = [], []
    for field, new in done:
        f, added = await run_in_threadpool(add_field, cases, case_id, field, new, model_name(request))
        fields.append(f)
        cells += added
    return {"fields": fields, "cells": cells, "skipped": skipped, "case": await run_in_threadpool(case_of, request, case_id)}


@router.get("/v1/cases/{case_id}/fields", response_model=m.FieldList, summary="The whole fields of a case",
            responses=m.NOT_FOUND)
def list_fields(request: Request, case_id: int):
    return {"fields": fields_of(store(request), case_id)}


@router.get("/v1/cases/{case_id}/fields/{field_id}/image", summary="The stored image of a field (a TIFF as PNG/JPEG)",
            response_class=FileResponse, responses={200: {"content": {"image/*": {}}}, **m.NOT_FOUND})
def get_field_image(request: Request, case_id: int, field_id: int):
    path, _ = field_image(store(request), case_id, field_id)
    return image_response(path)
