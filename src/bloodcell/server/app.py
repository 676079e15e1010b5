"""The REST service and web page (FastAPI).

Endpoints
---------
``GET /``                   the web page (drag and drop images, see classes, Grad-CAM, differential)
``GET /health``             liveness and the model in use
``GET /v1/model``           the model card
``POST /v1/predict``        classify one or many images (multipart field ``files``);
                            ``?explain=true`` adds a Grad-CAM overlay per image (base64 PNG)
``POST /v1/differential``   only the differential count of the uploaded images
``GET /docs``, ``/openapi.json``  the OpenAPI description

Every error is JSON ``{"detail": "..."}`` with a 4xx status: 413 when the
request is over ``max_upload_mb`` or carries more than ``max_files`` images,
422 when no uploaded file is a readable image. Unreadable files in a batch
with readable ones are skipped and listed in ``skipped``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bloodcell import __version__
from bloodcell.core.errors import DataError
from bloodcell.core.preprocess import decode_image
from bloodcell.packaging.card import card
from bloodcell.prediction.classifier import Classifier
from bloodcell.server.batching import Batcher

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_FILES = 64


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413 (header or streamed count)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: int | None) -> bytes:
        mb = self.max_bytes / 1e6
        got = f"{size / 1e6:.1f} MB" if size is not None else f"over {mb:g} MB"
        return json.dumps({"detail": f"Upload too large: {got}; the limit is {mb:g} MB per request. "
                                     "Send fewer or smaller images per request."}).encode()

    async def _refuse(self, send, size: int | None) -> None:
        body = self._message(size)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        state = {"received": 0, "exceeded": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["exceeded"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if state["exceeded"] and not state["started"]:
            await self._refuse(send, None)


def _png_base64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def static_dir() -> Path:
    return Path(str(resources.files("bloodcell") / "server" / "static"))


def create_app(
    model=None,
    *,
    classifier: Classifier | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_files: int = DEFAULT_MAX_FILES,
    threads: int | None = None,
) -> FastAPI:
    """Build the service.

    Parameters
    ----------
    model : str or Path, optional
        Model folder or ``.onnx`` file (default: the bundled model).
    classifier : Classifier, optional
        An already built classifier (overrides ``model``).
    max_upload_mb : float
        Largest request body accepted, in MB.
    max_files : int
        Most images per request.
    threads : int, optional
        onnxruntime threads.
    """
    clf = classifier or Classifier(model, threads=threads)
    batcher = Batcher(clf.scores, max_batch=max(clf.batch_size, 1))
    info = clf.describe()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPIOffline(  # /docs and /redoc with bundled Swagger UI and ReDoc: they work offline
        lifespan=lifespan,
        title="bloodcell",
        version=__version__,
        description=(
            "Classify microscope images of single peripheral blood cells into eight classes "
            "(basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet), "
            "with uncertainty and not-a-blood-cell flags, Grad-CAM explanations and a differential count. "
            f"Limits: {max_upload_mb:g} MB and {max_files} images per request."
        ),
    )
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 1e6))
    app.state.classifier = clf
    app.state.batcher = batcher
    app.state.limits = {"max_upload_mb": max_upload_mb, "max_files": max_files}

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields = {str(e.get("loc", ["", ""])[-1]) for e in exc.errors()}
        if "files" in fields:
            msg = "No images received: send one or more image files as multipart/form-data in the field 'files'."
        else:
            msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": msg}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "The upload could not be read as multipart/form-data. Send images in the field 'files'."
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def _read(files: list[UploadFile]):
        if len(files) > max_files:
            return None, JSONResponse(
                {"detail": f"Too many files: {len(files)}; at most {max_files} images per request. Split the batch."},
                status_code=413)
        blobs = [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]

        def decode_all():
            images, names, skipped = [], [], []
            for name, data in blobs:
                if not data:
                    skipped.append({"filename": name, "detail": f"{name}: empty file (0 bytes)."})
                    continue
                try:
                    images.append(clf.prepare(decode_image(data, name)))
                    names.append(name)
                except DataError as e:
                    skipped.append({"filename": name, "detail": str(e)})
            return images, names, skipped

        images, names, skipped = await run_in_threadpool(decode_all)
        if not images:
            reasons = " ".join(s["detail"] for s in skipped)
            return None, JSONResponse({"detail": f"No readable image in the upload. {reasons}".strip(), "skipped": skipped},
                                      status_code=422)
        return (np.stack(images), names, skipped), None

    async def _classify(batch: np.ndarray, names: list[str]):
        probs, scores = await asyncio.wrap_future(batcher.submit(batch))
        return clf.make_predictions(probs, scores, names)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static_dir() / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness and the model in use")
    def health():
        return {"status": "ok", "version": __version__, "model": info["name"], "backend": info["backend"]}

    @app.get("/v1/model", summary="The model card: data, intended use, metrics, limitations, licence")
    def model_card():
        return {**card(clf.meta), "runtime": info, "limits": app.state.limits}

    @app.post("/v1/predict", summary="Classify one or many images")
    async def predict(
        files: list[UploadFile] = File(..., description="image files (PNG, JPEG, TIFF, BMP, ...)"),
        explain: bool = Query(False, description="add a Grad-CAM overlay (base64 PNG) per image"),
    ):
        read, error = await _read(files)
        if error is not None:
            return error
        batch, names, skipped = read
        preds = await _classify(batch, names)
        out = [p.to_dict() for p in preds]
        for entry in out:
            entry["filename"] = entry.pop("source")
        if explain:
            def cams():
                maps = clf.explain(batch)
                from bloodcell.prediction.explain import overlay

                return [_png_base64(overlay(img, m)) for img, m in zip(batch, maps)]

            for entry, png in zip(out, await run_in_threadpool(cams)):
                entry["gradcam_png"] = png
        diff = clf.differential(preds).to_dict() if len(preds) >= 2 else None
        return {"model": {"name": info["name"], "backend": info["backend"], "classes": info["classes"],
                          "abstain_threshold": clf.abstain_threshold, "ood_threshold": clf.ood_threshold},
                "predictions": out, "skipped": skipped, "differential": diff}

    @app.post("/v1/differential", summary="Differential count of the uploaded images")
    async def differential(files: list[UploadFile] = File(..., description="image files")):
        read, error = await _read(files)
        if error is not None:
            return error
        batch, names, skipped = read
        preds = await _classify(batch, names)
        return {"differential": clf.differential(preds).to_dict(), "skipped": skipped}

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app
