"""Background adaptation jobs, and switching the service to another model.

``POST /v1/jobs/adapt``          adapt a model to labelled cells in a folder or manifest on the server
``POST /v1/cases/{id}/adapt``    adapt to the reviewed cells of a case (exported as class folders first)
``GET /v1/jobs``, ``/v1/jobs/{id}``  ``{id, state: queued|running|done|failed, progress: 0..1, message, model_dir, serving}``
``POST /v1/model/switch``        load a model folder (e.g. a finished job's) into the running service

Each job runs ``python -m bloodcell adapt`` as a fresh subprocess (the service's
own threads are never forked), one at a time, in a folder of its own under the
jobs folder (``bloodcell-jobs`` in the working folder, or ``$BLOODCELL_JOBS``):
``status.json`` (progress, rewritten by the subprocess), ``log.txt`` (its output)
and ``model/`` (the adapted model, exported to ONNX by ``adapt`` itself, so a service
switched to it predicts on onnxruntime). A failed job's message is the subprocess's
one-line error.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from bloodcell.cases.export import write_dataset_zip
from bloodcell.core.errors import BloodcellError
from bloodcell.core.model_folder import is_model_folder
from bloodcell.prediction.classifier import Classifier
from bloodcell.server.batching import Batcher
from bloodcell.server.cases_routes import store
from bloodcell.server.errors import ErrorBody, RequestBody, error

ENV = "BLOODCELL_JOBS"
router = APIRouter(tags=["jobs"])


#: Message of a job the service's shutdown stopped or never ran.
STOPPED = "stopped: the service shut down before the adaptation finished; submit it again"


class AdaptRequest(RequestBody):
    """What to adapt to; every field but ``data`` is optional."""

    data: str = Field(description="labelled cells on the server: class folders, .npz or a CSV manifest")
    model: str | None = Field(None, description="model folder to start from (default: the service's default model)")
    method: Literal["finetune", "linear", "prototype"] = "finetune"
    epochs: int | None = Field(None, ge=1, le=200, description="default: adapt's own (5)")


class CaseAdaptRequest(RequestBody):
    """Options of adapting to a case's reviewed cells."""

    model: str | None = Field(None, description="model folder to start from (default: the service's default model)")
    method: Literal["finetune", "linear", "prototype"] = "finetune"
    epochs: int | None = Field(None, ge=1, le=200, description="default: adapt's own (5)")


class SwitchRequest(RequestBody):
    model_dir: str = Field(description="a model folder on the server, e.g. a finished job's model_dir")


class JobView(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed"]
    progress: float = Field(ge=0, le=1)
    message: str
    model_dir: str | None = Field(None, description="the adapted model folder, once the job is done")
    serving: bool = Field(False, description="whether the service serves this job's adapted model now")


@dataclass
class Job:
    id: str
    folder: Path
    args: list[str]
    state: str = "queued"
    message: str = "waiting for the job before it"
    returncode: int | None = field(default=None, repr=False)

    def view(self, served: str | None = None) -> dict:
        """The job as the API shows it; ``served`` is the folder of the model the service serves now."""
        progress, message = (1.0 if self.state == "done" else 0.0), self.message
        if self.state == "running":
            try:
                status = json.loads((self.folder / "status.json").read_text())
                progress, message = float(status["progress"]), str(status["message"])
            except (OSError, ValueError, KeyError, TypeError):
                message = "starting"
        model = self.folder / "model"
        done = self.state == "done" and is_model_folder(model)
        return {"id": self.id, "state": self.state, "progress": progress, "message": message,
                "model_dir": str(model) if done else None,
                "serving": done and bool(served) and Path(served).resolve() == model.resolve()}


def _last_line(path: Path) -> str:
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return "the adaptation process left no output"
    errors = [x for x in lines if "error:" in x]
    return (errors or lines or ["the adaptation process left no output"])[-1][:500]


def _export_note(model: Path, log: Path) -> str:
    """The end of a done job's message: whether ``adapt`` exported the model to ONNX (its summary says why not)."""
    if (model / "model.onnx").is_file():
        return " and exported to ONNX"
    said = [x.strip() for x in log.read_text(errors="replace").splitlines() if "ONNX export" in x]
    return f" ({said[-1]})" if said else " (no ONNX export: it predicts through PyTorch)"


class JobRunner:
    """Runs queued jobs one at a time in one daemon thread, each as a ``python -m bloodcell adapt`` subprocess."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self._stopping = False

    def submit(self, data: str | Path, model: str | None, method: str, epochs: int | None,
               job_id: str | None = None) -> Job:
        job_id = job_id or uuid.uuid4().hex[:12]
        folder = self.folder / job_id
        folder.mkdir(parents=True, exist_ok=True)
        args = [str(data), "--out", str(folder / "model"), "--method", method,
                "--status-file", str(folder / "status.json"), "--quiet", "--force"]
        if epochs is not None:
            args += ["--epochs", str(epochs)]
        if model:
            args += ["--model", str(model)]
        job = Job(job_id, folder, args)
        with self._lock:
            self.jobs[job_id] = job
            self._queue.put(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="bloodcell-jobs", daemon=True)
                self._thread.start()
        return job

    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self._run(job)

    def _spawn(self, verb: list[str], log) -> int | None:
        """Run ``python -m bloodcell VERB...`` with its output in ``log`` and return its exit code; ``None``
        when the service is shutting down and nothing was started."""
        with self._lock:
            if self._stopping:
                return None
            self._process = subprocess.Popen([sys.executable, "-m", "bloodcell", *verb], stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ))
        try:
            return self._process.wait()
        finally:
            self._process = None

    def _run(self, job: Job) -> None:
        log = job.folder / "log.txt"
        job.state, job.message = "running", "starting"
        try:
            with open(log, "wb") as out:
                job.returncode = self._spawn(["adapt", *job.args], out)
            ok = job.returncode == 0 and is_model_folder(job.folder / "model")
        except OSError as e:
            job.state, job.message = "failed", f"could not start the adaptation process ({e})"
            return
        if job.returncode is None or self._stopping:
            job.state, job.message = "failed", STOPPED
            return
        job.state = "done" if ok else "failed"
        job.message = f"adapted model written{_export_note(job.folder / 'model', log)}" if ok else _last_line(log)

    def stop(self, grace: float = 10.0) -> None:
        """Stop at the service's shutdown: queued jobs fail as not run, a running adaptation is
        terminated (killed after ``grace`` seconds), so no process outlives the service."""
        with self._lock:
            self._stopping = True
            process, thread = self._process, self._thread
            for job in self.jobs.values():
                if job.state == "queued":
                    job.state, job.message = "failed", STOPPED
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if thread is not None:
            thread.join(grace)


def _runner(request: Request) -> JobRunner:
    return request.app.state.jobs


def _export_case(request: Request, case_id: int, job_id: str, folder: Path) -> Path:
    """Write the case's reviewed cells as class folders in ``folder/data``; returns its manifest."""
    cases = store(request)
    cases.case(case_id)
    data = folder / job_id / "data"
    data.mkdir(parents=True, exist_ok=True)
    archive = data.parent / "cells.zip"
    if not write_dataset_zip(cases, case_id, archive):
        raise LookupError(f"Case {case_id} has no reviewed cells with a class label; review some cells first.")
    with zipfile.ZipFile(archive) as z:
        z.extractall(data)
    archive.unlink()
    return data / "manifest.csv"


@router.post("/v1/jobs/adapt", status_code=202, response_model=JobView, summary="Adapt a model to labelled cells",
             responses={422: {"model": ErrorBody}})
def adapt_job(request: Request, body: AdaptRequest):
    if not Path(body.data).exists():
        return error(422, f"{body.data}: no such folder or file on the server.")
    return _runner(request).submit(body.data, body.model, body.method, body.epochs).view()


@router.post("/v1/cases/{case_id}/adapt", status_code=202, response_model=JobView,
             summary="Adapt a model to a case's reviewed cells", responses={404: {"model": ErrorBody},
                                                                           422: {"model": ErrorBody}})
def adapt_case(request: Request, case_id: int, body: CaseAdaptRequest | None = None):
    body = body or CaseAdaptRequest()
    runner = _runner(request)
    job_id = uuid.uuid4().hex[:12]
    try:
        manifest = _export_case(request, case_id, job_id, runner.folder)
    except LookupError as e:
        return error(422, str(e))
    return runner.submit(manifest, body.model, body.method, body.epochs, job_id).view()


@router.get("/v1/jobs", summary="Every job of this service run")
def list_jobs(request: Request):
    served = request.app.state.info.get("path")
    return {"jobs": [j.view(served) for j in _runner(request).jobs.values()]}


@router.get("/v1/jobs/{job_id}", response_model=JobView, summary="A job's state and progress",
            responses={404: {"model": ErrorBody}})
def job(request: Request, job_id: str):
    found = _runner(request).jobs.get(job_id)
    if not found:
        return error(404, f"No job {job_id!r}; GET /v1/jobs lists them.")
    return found.view(request.app.state.info.get("path"))


def _switch(state, model_dir: str) -> None:
    if not is_model_folder(model_dir):
        raise BloodcellError(f"{Path(model_dir).name}: not a model folder (expected model.json and weights).")
    clf = Classifier(model_dir, batch_size=state.classifier.batch_size)
    old = state.batcher
    state.classifier, state.batcher, state.info = clf, Batcher(clf.scores, max_batch=max(clf.batch_size, 1)), clf.describe()
    old.close()


@router.post("/v1/model/switch", summary="Serve another model folder from now on", responses={422: {"model": ErrorBody}})
async def switch_model(request: Request, body: SwitchRequest):
    try:
        await run_in_threadpool(_switch, request.app.state, body.model_dir)
    except BloodcellError as e:
        return error(422, f"Model not switched: {e}")
    info = request.app.state.info
    return {"model": {"name": info["name"], "backend": info["backend"], "classes": info["classes"]}}


def install(app: FastAPI) -> None:
    """Add the job and model-switch endpoints, with jobs in ``$BLOODCELL_JOBS`` (default ``bloodcell-jobs``)."""
    app.state.jobs = JobRunner(Path(os.environ.get(ENV) or "bloodcell-jobs"))
    app.include_router(router)
