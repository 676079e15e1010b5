"""``POST /v1/fields``: whole smear fields found, classified and counted.

Each uploaded image is a field; the answer has, per field, every cell's ``box`` ``[x0, y0, x1,
y1]`` (original pixels), ``at_border``, class and flags, the counts (white cells, nucleated red
cells, platelets) and the white-cell differential, then the totals over the fields.
``?overlay=true`` adds a PNG per field with the boxes coloured by class (base64 ``data:`` URL);
``?tile_overlap=PX`` treats the images as overlapping tiles of one slide.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import decode_image
from bloodcell.fields.analyse import analyse_image, fields_warning, overall_counts, overall_differential
from bloodcell.fields.overlay import draw
from bloodcell.fields.tiles import ALL_SHARED, shared_edges
from bloodcell.server.errors import UPLOAD_ERRORS, error, too_many_files
from bloodcell.server.uploads import png_base64

router = APIRouter()


class BatchedClassifier:
    """The service's classifier with its forward passes going through the shared batcher."""

    def __init__(self, clf, batcher):
        self.clf, self.batcher = clf, batcher

    def predict_arrays(self, images, sources=None, familiarity: bool = True):
        if not images:
            return []
        framed = [self.clf.prepare_framed(im) for im in images]
        probs, scores = self.batcher.submit(np.stack([a for a, _ in framed])).result()
        return self.clf.make_predictions(probs, scores, sources, framings=[f for _, f in framed], familiarity=familiarity)


def analyse_uploads(state, files: list[UploadFile], tile_overlap: float, keep, keep_crops: bool = False
                    ) -> tuple[list, list[dict]]:
    """Decode and analyse each uploaded field, one at a time (blocking: runs in a worker thread).

    ``keep(name, data, image, result)`` turns each analysed field into what the caller holds on to,
    so no decoded image outlives its turn. Returns the kept values and the skipped files
    (``{"filename", "detail"}``: empty or unreadable).
    """
    names = [f.filename or f"field {i + 1}" for i, f in enumerate(files)]
    edges = shared_edges(names) if tile_overlap > 0 else {}
    model = BatchedClassifier(state.classifier, state.batcher)
    kept, skipped = [], []
    for name, upload in zip(names, files):
        upload.file.seek(0)
        data = upload.file.read()
        try:
            if not data:
                raise DataError(f"{name}: empty file (0 bytes).")
            image = decode_image(data, name, max_pixels=state.max_pixels)
        except DataError as e:
            skipped.append({"filename": name, "detail": str(e)})
            continue
        result = analyse_image(model, image, name, tile_overlap, edges.get(name, ALL_SHARED), keep_crops=keep_crops)
        kept.append(keep(name, data, image, result))
    return kept, skipped


def _with_overlay(overlay: bool):
    def keep(name, data, image, result):
        return result, png_base64(np.asarray(draw(image, result))) if overlay else None
    return keep


@router.post("/v1/fields", summary="Find, classify and count every cell of whole smear fields", responses=UPLOAD_ERRORS)
async def fields(
    request: Request,
    files: list[UploadFile] = File(..., description="field images (PNG, JPEG, TIFF, ...)"),
    overlay: bool = Query(False, description="add a PNG per field with the boxes coloured by class"),
    tile_overlap: float = Query(0.0, ge=0, description="pixels that neighbouring tiles of one slide share"),
):
    state = request.app.state
    if len(files) > state.limits["max_files"]:
        return too_many_files(state.limits["max_files"], len(files))
    async with state.work_gate.enter():
        async with state.decode_gate.enter():
            done, skipped = await run_in_threadpool(analyse_uploads, state, files, tile_overlap, _with_overlay(overlay))
    if not done:
        reasons = " ".join(s["detail"] for s in skipped)
        return error(422, f"No readable image in the upload. {reasons}".strip(), skipped)
    names = state.classifier.class_names
    out = []
    for result, png in done:
        entry = result.to_dict(names)
        entry["filename"] = entry.pop("source")
        if png is not None:
            entry["overlay_png"] = png
        out.append(entry)
    results = [r for r, _ in done]
    info, diff = state.info, overall_differential(results, names)
    return {"model": {"name": info["name"], "backend": info["backend"], "classes": info["classes"]},
            "fields": out, "counts": overall_counts(results), "differential": diff.to_dict(), "skipped": skipped,
            "warning": fields_warning(results, diff, info)}
