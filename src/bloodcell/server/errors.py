"""One error body for every failed request, documented in the OpenAPI schema.

Every error is JSON ``{"detail": "...", "skipped": [...]}``: ``detail`` is one
line naming the problem and the fix, ``skipped`` lists the uploaded files that
could not be read (empty when the error is not about files).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class RequestBody(BaseModel):
    """A JSON request body: a field the route does not take is refused (422), not ignored, so a
    misspelt option does not silently fall back to its default."""

    model_config = ConfigDict(extra="forbid")


class SkippedFile(BaseModel):
    """An uploaded file that was not classified, and why."""

    filename: str = Field(description="the file's name as uploaded")
    detail: str = Field(description="why it was skipped")


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="what went wrong and how to fix it, in one line")
    skipped: list[SkippedFile] = Field(default_factory=list, description="uploaded files that could not be read")


class Busy(Exception):
    """The service is at its limit of concurrent heavy work: answer 503 with Retry-After."""

    def __init__(self, what: str, retry_after: int):
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


#: The error responses of the upload endpoints, for the OpenAPI schema.
UPLOAD_ERRORS = {
    400: {"model": ErrorBody, "description": "The upload is not multipart/form-data with images in the field 'files'."},
    413: {"model": ErrorBody, "description": "The request is over the upload size or carries too many files."},
    422: {"model": ErrorBody, "description": "No images were sent, or no uploaded file is a readable image."},
    503: {"model": ErrorBody, "description": "The service is busy; retry after the seconds in the Retry-After header."},
}


def error(status: int, detail: str, skipped: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    """An error response with the one error body."""
    return JSONResponse({"detail": detail, "skipped": skipped or []}, status_code=status, headers=headers)


def error_bytes(detail: str) -> bytes:
    """The error body as bytes, for the ASGI middlewares that answer before FastAPI."""
    return json.dumps({"detail": detail, "skipped": []}).encode()


def too_many_files(max_files: int, count: int | None = None) -> JSONResponse:
    got = f"{count}" if count is not None else f"more than {max_files}"
    return error(413, f"Too many files: {got}; at most {max_files} images per request. Split the batch.")


def _query_names(dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    return {p.alias for p in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


def known_query(request: Request) -> None:
    """Refuse query parameters an API route does not take, naming the ones it does (a misspelt or
    unsupported option, ``/v1/predict?tta=true`` say, was ignored without a word)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params or not route.path.startswith("/v1/"):
        return  # the page and the docs take any query string
    taken = sorted(_query_names(dependant))
    unknown = sorted(set(request.query_params) - set(taken))
    if unknown:
        raise HTTPException(422, f"Unknown query parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                                 f"{route.path} takes {', '.join(taken) if taken else 'none'}.")


def _said(e: dict) -> str:
    """One validation error in words."""
    if e.get("type") == "extra_forbidden":
        return "not a field this route takes (the fields are listed at /docs)"
    return str(e.get("msg"))


def install_handlers(app: FastAPI, max_files: int) -> None:
    """Answer validation errors, HTTP errors and :class:`Busy` with the one error body."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields = {str(e.get("loc", ["", ""])[-1]) for e in exc.errors()}
        if "files" in fields:
            msg = "No images received: send one or more image files as multipart/form-data in the field 'files'."
        else:
            msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []))}: {_said(e)}" for e in exc.errors())
        return error(422, msg)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 400 and "Too many files" in detail:
            return too_many_files(max_files)
        if exc.status_code == 400 and ("parsing the body" in detail or "multipart" in detail.lower()):
            detail = "The upload could not be read as multipart/form-data. Send images in the field 'files'."
        return error(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy):
        return error(503, f"The service is busy with other {exc.what}; retry in {exc.retry_after} s.",
                     headers={"Retry-After": str(exc.retry_after)})
