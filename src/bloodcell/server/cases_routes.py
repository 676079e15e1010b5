"""The case endpoints: a lab's samples under review, their cells, the reviewer's labels and exports.

``POST /v1/cases``                          a new case ``{accession, note?, target?}``
``GET /v1/cases``                           the cases, most recently changed first
``GET|PATCH /v1/cases/{id}``                one case with its lab differential; change accession, note, target
``POST /v1/cases/{id}/cells``               classify and add images (multipart ``files``, the limits of /v1/predict)
``GET /v1/cases/{id}/cells``                its cells, ``?label=`` (final label) and ``?flag=`` filters
``GET|PATCH /v1/cases/{id}/cells/{cell}``   one cell; review: ``{label, reviewer?, if_label?}``, ``label: null`` clears it
``GET .../cells/{cell}/image``, ``/gradcam`` the stored image; Grad-CAM over the model's crop (``X-Crop-Box``)
``GET /v1/cases/{id}/events``               every change
``GET /v1/cases/{id}/export.csv``, ``/export.json``, ``/report``, ``/dataset.zip``  exports

An upload that would take a case past its target is refused whole with 409, saying how many fit.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from bloodcell.cases import CaseStore, NewCell, allowed_labels
from bloodcell.cases.export import case_csv, case_document, media, write_dataset_zip
from bloodcell.cases.fields import field_platelet_share
from bloodcell.cases.images import facts, for_display
from bloodcell.cases.records import CaseNotFound, ChangedSince, OverTarget
from bloodcell.cases.report import CSS, case_report
from bloodcell.core import __version__
from bloodcell.core.errors import ConfigError, DataError
from bloodcell.core.preprocess import decode_image, prepare_with_info
from bloodcell.fields.analyse import platelet_share_warning
from bloodcell.prediction.differential import uncertain_share_warning
from bloodcell.server import cases_models as m
from bloodcell.server.errors import UPLOAD_ERRORS, error, too_many_files
from bloodcell.server.uploads import decode_uploads

router = APIRouter(tags=["cases"])
_OPEN = threading.Lock()
CELL = "/v1/cases/{case_id}/cells/{cell_id}"


def store(request: Request) -> CaseStore:
    """The service's case store, opened (and created) on first use."""
    state = request.app.state
    with _OPEN:
        if getattr(state, "cases_store", None) is None:
            state.cases_store = CaseStore(state.cases_dir)
    return state.cases_store


def image_response(path: Path) -> Response:
    """A stored image as the page can show it: the file itself, or a PNG/JPEG of a TIFF (see ``for_display``)."""
    headers = {"Cache-Control": "private, max-age=86400"}
    data, media_type = for_display(path)
    if data is None:
        return FileResponse(path, media_type=media_type, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def install(app: FastAPI, cases_dir: str | Path | None) -> None:
    """Add the case endpoints to ``app``, with its store in ``cases_dir`` (opened on first use)."""
    app.state.cases_dir = cases_dir
    app.state.cases_store = None
    for kind, status in ((CaseNotFound, 404), (OverTarget, 409), (ChangedSince, 409), (DataError, 422), (ConfigError, 500)):
        app.add_exception_handler(kind, lambda request, exc, status=status: error(status, str(exc)))
    app.include_router(router)


@router.post("/v1/cases", response_model=m.Case, summary="Open a case", responses=m.BAD_INPUT)
def create_case(request: Request, body: m.NewCase):
    return store(request).create_case(body.accession, body.note, body.target)


@router.get("/v1/cases", response_model=m.CaseList, summary="The cases, most recently changed first")
def list_cases(request: Request):
    return {"cases": store(request).cases()}


@router.get("/v1/cases/report.css", include_in_schema=False)
def report_css():
    return Response(CSS, media_type="text/css")


@router.get("/v1/cases/{case_id}", response_model=m.Case, summary="A case with its lab differential",
            responses=m.NOT_FOUND)
def get_case(request: Request, case_id: int):
    return case_of(request, case_id)


def case_of(request: Request, case_id: int) -> dict:
    """The case with its warning: far more of the cells the serving model classified are uncertain than its
    validation images were (:func:`~bloodcell.prediction.differential.uncertain_share_warning`), or far more of
    the white-sized cells of its fields are called platelets than on PBC's (:func:`platelet_share_warning`)."""
    cases, model = store(request), model_name(request)
    case = cases.case(case_id)
    said = [uncertain_share_warning(*cases.uncertain_share(case_id, model), request.app.state.info.get("validation_uncertain")),
            platelet_share_warning(*field_platelet_share(cases, case_id, model))]
    case["warning"] = " ".join(w for w in said if w) or None
    return case


@router.patch("/v1/cases/{case_id}", response_model=m.Case, summary="Change a case's accession, note or target",
              responses={**m.NOT_FOUND, **m.BAD_INPUT})
def update_case(request: Request, case_id: int, body: m.CaseChange):
    store(request).update_case(case_id, accession=body.accession, note=body.note, target=body.target)
    return case_of(request, case_id)


def _decode(clf, files: list[UploadFile], max_pixels: int) -> tuple[list[tuple], list[dict]]:
    """Each file decoded and prepared as ``/v1/predict`` does, with its bytes and facts (blocking)."""
    kept, skipped = [], []
    for i, upload in enumerate(files):
        name = upload.filename or f"file {i + 1}"
        done = decode_uploads(clf, [upload], max_pixels)
        if done.images is None:
            skipped.append({"filename": name, "error": done.skipped[0]["detail"]})
            continue
        upload.file.seek(0)
        data = upload.file.read()
        try:
            kept.append((name, data, facts(data, name), done.images[0], done.framings[0]))
        except DataError as e:
            skipped.append({"filename": name, "error": str(e)})
    return kept, skipped


def model_name(request: Request) -> str:
    return f"{request.app.state.info['name']} (bloodcell {__version__})"


@router.post("/v1/cases/{case_id}/cells", response_model=m.CellsAdded, summary="Classify images and add them",
             responses={**UPLOAD_ERRORS, **m.NOT_FOUND, **m.OVER_TARGET})
async def add_cells(request: Request, case_id: int,
                    files: list[UploadFile] = File(..., description="image files (PNG, JPEG, TIFF, BMP, ...)")):
    state = request.app.state
    if len(files) > state.limits["max_files"]:
        return too_many_files(state.limits["max_files"], len(files))
    cases = await run_in_threadpool(store, request)
    held, target = await run_in_threadpool(cases.room, case_id)
    if held + len(files) > target:
        raise cases.over_target(case_id, held, target, len(files))
    clf = state.classifier
    async with state.work_gate.enter():
        async with state.decode_gate.enter():
            kept, skipped = await run_in_threadpool(_decode, clf, files, state.max_pixels)
        if not kept:
            reasons = " ".join(s["error"] for s in skipped)
            return error(422, f"No readable image in the upload. {reasons}".strip(),
                         [{"filename": s["filename"], "detail": s["error"]} for s in skipped])
        probs, scores = await asyncio.wrap_future(state.batcher.submit(np.stack([k[3] for k in kept])))
    preds = clf.make_predictions(probs, scores, [k[0] for k in kept], framings=[k[4] for k in kept])
    new = [NewCell(k[0], k[1], k[2], p.label, p.probabilities, p.probability, p.uncertain, p.not_a_blood_cell,
                   p.framing, unfamiliar=p.unfamiliar) for k, p in zip(kept, preds)]
    cells = await run_in_threadpool(cases.add_cells, case_id, new, model_name(request))
    return {"cells": cells, "skipped": skipped, "case": await run_in_threadpool(case_of, request, case_id)}


@router.get("/v1/cases/{case_id}/cells", response_model=m.CellList, summary="The cells of a case",
            responses={**m.NOT_FOUND, **m.BAD_INPUT})
def list_cells(request: Request, case_id: int,
               label: str | None = Query(None, description="keep cells with this final label"),
               flag: str | None = Query(None, description="uncertain, not_a_blood_cell, unreviewed or reviewed")):
    return {"cells": store(request).cells(case_id, label=label or None, flag=flag or None)}


@router.get(CELL, response_model=m.Cell, summary="One cell of a case", responses=m.NOT_FOUND)
def get_cell(request: Request, case_id: int, cell_id: int):
    return store(request).cell(case_id, cell_id)


@router.patch(CELL, response_model=m.Cell, summary="Review a cell: set or clear its label",
              responses={**m.NOT_FOUND, **m.BAD_INPUT, **m.CHANGED_SINCE})
def review_cell(request: Request, case_id: int, cell_id: int, body: m.Review):
    allowed = allowed_labels(request.app.state.classifier.class_names)
    expected = {"expected": body.if_label} if "if_label" in body.model_fields_set else {}
    return store(request).review(case_id, cell_id, body.label, body.reviewer, allowed=allowed, **expected)


@router.get(CELL + "/image", summary="The stored image of a cell (a TIFF as PNG/JPEG)", response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}}, **m.NOT_FOUND})
def cell_image(request: Request, case_id: int, cell_id: int):
    path, _ = store(request).image(case_id, cell_id)
    return image_response(path)


def _gradcam_png(clf, path: Path) -> tuple[bytes, tuple[int, int, int, int]]:
    from bloodcell.prediction.explain import overlay  # deferred: loads PyTorch, which only Grad-CAM needs

    image = decode_image(path.read_bytes(), path.name)
    prepared, _, box = prepare_with_info(image, clf.preprocess)
    cam = clf.explain(np.stack([prepared]))[0]
    buf = io.BytesIO()
    Image.fromarray(overlay(prepared, cam)).save(buf, format="PNG")
    return buf.getvalue(), box


@router.get(CELL + "/gradcam", summary="Grad-CAM over the model's crop of a cell (X-Crop-Box: x0,y0,x1,y1)",
            response_class=Response, responses={200: {"content": {"image/png": {}}}, **m.NOT_FOUND,
                                                503: UPLOAD_ERRORS[503]})
async def cell_gradcam(request: Request, case_id: int, cell_id: int):
    state = request.app.state
    path, _ = await run_in_threadpool(lambda: store(request).image(case_id, cell_id))
    async with state.gradcam_gate.enter():
        png, box = await run_in_threadpool(_gradcam_png, state.classifier, path)
    return Response(png, media_type="image/png", headers={"X-Crop-Box": ",".join(str(int(v)) for v in box)})


@router.get("/v1/cases/{case_id}/events", response_model=m.EventList, summary="Every change to a case",
            responses=m.NOT_FOUND)
def list_events(request: Request, case_id: int):
    return {"events": store(request).events(case_id)}


def _attachment(case_id: int, fmt: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="case-{case_id}{media(fmt)[1]}"'}


@router.get("/v1/cases/{case_id}/export.csv", summary="One CSV row per cell", response_class=Response,
            responses={200: {"content": {"text/csv": {}}}, **m.NOT_FOUND})
def export_csv(request: Request, case_id: int):
    return Response(case_csv(store(request), case_id), media_type=media("csv")[0], headers=_attachment(case_id, "csv"))


@router.get("/v1/cases/{case_id}/export.json", summary="The case, its cells, lab differential and events",
            responses=m.NOT_FOUND)
def export_json(request: Request, case_id: int):
    return JSONResponse(case_document(store(request), case_id), headers=_attachment(case_id, "json"))


@router.get("/v1/cases/{case_id}/report", summary="The printable report of a case", response_class=HTMLResponse,
            responses=m.NOT_FOUND)
def report(request: Request, case_id: int):
    return HTMLResponse(case_report(store(request), case_id, stylesheet="/v1/cases/report.css"))


@router.get("/v1/cases/{case_id}/dataset.zip", summary="Reviewed cells as class folders with manifest.csv",
            response_class=FileResponse, responses={200: {"content": {"application/zip": {}}}, **m.NOT_FOUND})
def dataset_zip(request: Request, case_id: int):
    cases = store(request)
    cases.case(case_id)
    fd, tmp = tempfile.mkstemp(prefix="bloodcell-case-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as f:
            write_dataset_zip(cases, case_id, f)
    except BaseException:
        os.unlink(tmp)
        raise
    return FileResponse(tmp, media_type=media("dataset")[0], headers=_attachment(case_id, "dataset"),
                        background=BackgroundTask(os.unlink, tmp))
