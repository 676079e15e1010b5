"""The REST service and web page (FastAPI).

Endpoints
---------
``GET /``                   the web page (drag and drop images, see classes, Grad-CAM, differential)
``GET /health``             liveness and the model in use
``GET /v1/model``           the model card
``POST /v1/predict``        classify one or many images (multipart field ``files``);
                            ``?explain=true`` adds a Grad-CAM overlay per image (base64 PNG)
``POST /v1/differential``   only the differential count of the uploaded images
``POST /v1/fields``         whole smear fields: every cell found, classified and counted
``/v1/cases...``            cases under review, their cells, reviews and exports
                            (:mod:`bloodcell.server.cases_routes`)
``GET /docs``, ``/openapi.json``  the OpenAPI description

Every error is JSON ``{"detail": "...", "skipped": [...]}`` (:mod:`bloodcell.server.errors`):
400 for a malformed upload or an unknown ``Host``, 413 when the request is over
``max_upload_mb`` or carries more than ``max_files`` images, 422 when no
uploaded file is a readable image, 503 with ``Retry-After`` when the service is
at its limit of concurrent work. Unreadable files in a batch with readable ones
are skipped and listed in ``skipped``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from bloodcell.core import __version__
from bloodcell.core.errors import ConfigError
from bloodcell.prediction.classifier import Classifier
from bloodcell.prediction.onnx_backend import no_telemetry
from bloodcell.server import cases_routes, jobs
from bloodcell.server.batching import Batcher
from bloodcell.server.case_fields_routes import router as case_fields_router
from bloodcell.server.errors import install_handlers, known_query
from bloodcell.server.fields_routes import router as fields_router
from bloodcell.server.guards import LOCAL_HOSTS, BodyLimit, Gate, HostCheck, SecurityHeaders
from bloodcell.server.routes import router
from bloodcell.server.uploads import DEFAULT_MAX_MEGAPIXELS

DEFAULT_MAX_UPLOAD_MB = 32.0
DEFAULT_MAX_FILES = 64
#: Images per onnxruntime run: its memory arena grows with the batch (about 350 MB at 64 images
#: on the default model, 150 MB at 16) while the time per image stays the same on a CPU.
BATCH_SIZE = 16
#: Requests in progress at once (their prepared images are small and batch together),
#: and how many more may wait before 503.
WORK_SLOTS, WORK_QUEUE = 32, 64
#: Requests decoding their uploads at once: a decoded image can take tens of MB until it is prepared.
DECODE_SLOTS = 2
#: Grad-CAM requests at once (each runs PyTorch backward passes), and how many more may wait.
GRADCAM_SLOTS, GRADCAM_QUEUE = 1, 2


def static_dir() -> Path:
    return Path(str(resources.files("bloodcell") / "server" / "static"))


def _describe(max_upload_mb: float, max_files: int, max_megapixels: float) -> str:
    return ("Classify microscope images of single peripheral blood cells into eight classes "
            "(basophil, eosinophil, erythroblast, ig, lymphocyte, monocyte, neutrophil, platelet), "
            "with uncertainty and not-a-blood-cell flags, Grad-CAM explanations and a differential count. "
            f"Limits: {max_upload_mb:g} MB and {max_files} images per request, "
            f"{max_megapixels:g} megapixels per image. Every error is JSON with `detail` and `skipped`.")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    """Gates are made in the serving event loop (their semaphores belong to it); at shutdown adaptation
    jobs are stopped, then the batcher."""
    app.state.work_gate = Gate("requests", WORK_SLOTS, WORK_QUEUE, trim=True)
    app.state.decode_gate = Gate("uploads", DECODE_SLOTS, WORK_SLOTS)
    app.state.gradcam_gate = Gate("Grad-CAM requests", GRADCAM_SLOTS, GRADCAM_QUEUE, retry_after=5, trim=True)
    yield
    jobs = getattr(app.state, "jobs", None)
    if jobs is not None:
        jobs.stop()
    app.state.batcher.close()


def check_limits(max_upload_mb: float, max_files: int, max_megapixels: float) -> None:
    if max_files < 1 or max_upload_mb <= 0 or max_megapixels <= 0:
        raise ConfigError("--max-files must be at least 1, --max-upload-mb and --max-megapixels positive.")


def create_app(
    model=None,
    *,
    classifier: Classifier | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_files: int = DEFAULT_MAX_FILES,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    threads: int | None = None,
    allowed_hosts: list[str] | None = None,
    cases_dir: str | Path | None = None,
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
    max_megapixels : float
        Most pixels per image, in millions, checked before the image is decoded.
    threads : int, optional
        onnxruntime threads.
    allowed_hosts : list of str, optional
        ``Host`` header names answered besides localhost, 127.0.0.1 and [::1] (``"*"`` answers any).
    cases_dir : str or Path, optional
        Folder of the case store (default ``bloodcell-cases`` in the working folder, or
        ``$BLOODCELL_CASES``), created on the first case request.
    """
    check_limits(max_upload_mb, max_files, max_megapixels)
    no_telemetry()
    clf = classifier or Classifier(model, threads=threads, batch_size=BATCH_SIZE)
    batcher = Batcher(clf.scores, max_batch=max(clf.batch_size, 1))

    app = FastAPIOffline(  # /docs and /redoc with bundled Swagger UI and ReDoc: they work offline
        lifespan=_lifespan, title="bloodcell", version=__version__,
        description=_describe(max_upload_mb, max_files, max_megapixels),
        form_limits={"max_files": max_files},  # the multipart parser stops at the limit, not at 1,000
        dependencies=[Depends(known_query)],
    )
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * 1e6))
    app.add_middleware(HostCheck, allowed_hosts=list(dict.fromkeys([*LOCAL_HOSTS, *(allowed_hosts or [])])))
    app.add_middleware(SecurityHeaders)
    app.state.classifier = clf
    app.state.batcher = batcher
    app.state.info = clf.describe()
    app.state.static = static_dir()
    app.state.max_pixels = int(max_megapixels * 1e6)
    app.state.limits = {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_megapixels": max_megapixels}
    install_handlers(app, max_files)
    cases_routes.install(app, cases_dir)
    for routes in (router, fields_router, case_fields_router):
        app.include_router(routes)
    jobs.install(app)
    app.mount("/static", StaticFiles(directory=app.state.static), name="static")
    return app
