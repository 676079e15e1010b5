"""The service's endpoints: the page, health, the model card, predictions and the differential."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from bloodcell.core import __version__
from bloodcell.packaging.card import card
from bloodcell.prediction.differential import lab_differential_of, run_warning
from bloodcell.server.errors import UPLOAD_ERRORS, error, too_many_files
from bloodcell.server.uploads import Upload, decode_uploads, png_base64

router = APIRouter()


async def _classify(request: Request, files: list[UploadFile]):
    """Decode and classify the upload: ``(upload, predictions)`` or ``(None, error response)``."""
    state = request.app.state
    if len(files) > state.limits["max_files"]:
        return None, too_many_files(state.limits["max_files"], len(files))
    clf = state.classifier
    async with state.decode_gate.enter():
        upload: Upload = await run_in_threadpool(decode_uploads, clf, files, state.max_pixels)
    if upload.images is None:
        reasons = " ".join(s["detail"] for s in upload.skipped)
        return None, error(422, f"No readable image in the upload. {reasons}".strip(), upload.skipped)
    probs, scores = await asyncio.wrap_future(state.batcher.submit(upload.images))
    return upload, clf.make_predictions(probs, scores, upload.names, framings=upload.framings)


#: Images per Grad-CAM pass: the backward pass's memory grows with it (about 120 MB per 4 images; at 4 the
#: 3-minute soak peaked at 1,535 MB, at 2 at 1,370 MB).
GRADCAM_CHUNK = 2


def _gradcam(clf, images):
    from bloodcell.prediction.explain import overlay  # deferred: loads PyTorch, which only Grad-CAM needs

    out = []
    for start in range(0, len(images), GRADCAM_CHUNK):
        part = images[start:start + GRADCAM_CHUNK]
        out += [png_base64(overlay(img, m)) for img, m in zip(part, clf.explain(part))]
    return out


@router.get("/", include_in_schema=False)
def index(request: Request):
    return FileResponse(request.app.state.static / "index.html", media_type="text/html")


@router.get("/health", summary="Liveness and the model in use")
def health(request: Request):
    info = request.app.state.info
    return {"status": "ok", "version": __version__, "model": info["name"], "backend": info["backend"]}


@router.get("/v1/model", summary="The model card: data, intended use, metrics, limitations, licence")
def model_card(request: Request):
    state = request.app.state
    runtime = {k: v for k, v in state.info.items() if k != "path"}
    return {**card(state.classifier.meta), "runtime": runtime, "limits": state.limits}


@router.post("/v1/predict", summary="Classify one or many images", responses=UPLOAD_ERRORS)
async def predict(
    request: Request,
    files: list[UploadFile] = File(..., description="image files (PNG, JPEG, TIFF, BMP, ...)"),
    explain: bool = Query(False, description="add a Grad-CAM overlay (base64 PNG) per image"),
):
    state = request.app.state
    clf, info = state.classifier, state.info
    async with AsyncExitStack() as stack:
        if explain:
            await stack.enter_async_context(state.gradcam_gate.enter())
        async with state.work_gate.enter():
            upload, preds = await _classify(request, files)
        if upload is None:
            return preds
        out = [p.to_dict() for p in preds]
        for entry in out:
            entry["filename"] = entry.pop("source")
        if explain:
            for entry, png in zip(out, await run_in_threadpool(_gradcam, clf, upload.images)):
                entry["gradcam_png"] = png
    diff = clf.differential(preds) if len(preds) >= 2 else None
    lab = lab_differential_of(preds) if len(preds) >= 2 else None
    return {"model": {"name": info["name"], "backend": info["backend"], "classes": info["classes"],
                      "abstain_threshold": clf.abstain_threshold, "ood_threshold": clf.ood_threshold},
            "predictions": out, "skipped": upload.skipped, "differential": diff.to_dict() if diff else None,
            "lab_differential": lab, "warning": run_warning(diff, info)}


@router.post("/v1/differential", summary="Differential count of the uploaded images", responses=UPLOAD_ERRORS)
async def differential(request: Request, files: list[UploadFile] = File(..., description="image files")):
    async with request.app.state.work_gate.enter():
        upload, preds = await _classify(request, files)
    if upload is None:
        return preds
    diff = request.app.state.classifier.differential(preds)
    return {"differential": diff.to_dict(), "lab_differential": lab_differential_of(preds), "skipped": upload.skipped,
            "warning": run_warning(diff, request.app.state.info)}
