"""Run the service with uvicorn: :func:`serve`, the Python side of ``bloodcell serve``."""

from __future__ import annotations

import json
import os
import socket
import sys

import uvicorn

from bloodcell.core.errors import ConfigError
from bloodcell.core.model_choice import resolve_model
from bloodcell.core.settings import check_workers
from bloodcell.server.app import DEFAULT_MAX_FILES, DEFAULT_MAX_UPLOAD_MB, check_limits, create_app
from bloodcell.server.guards import limit_malloc_arenas
from bloodcell.server.uploads import DEFAULT_MAX_MEGAPIXELS

OPTIONS_ENV = "BLOODCELL_SERVE_OPTIONS"
ANY_ADDRESS = ("0.0.0.0", "::", "")


def bound_hosts(host: str) -> list[str]:
    """``Host`` names a server bound to ``host`` answers to (besides localhost): the address, or this machine's names."""
    if host not in ANY_ADDRESS:
        return [f"[{host}]" if ":" in host else host]
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return sorted(n for n in names if n)


def make_app():
    """Application factory for uvicorn worker processes (settings from the environment)."""
    limit_malloc_arenas()
    return create_app(**json.loads(os.environ[OPTIONS_ENV]))


def check_address(host: str, port: int) -> None:
    """Prove ``host:port`` can be listened on before the model loads; a :class:`ConfigError` says why not."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}.")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except socket.gaierror:
        raise ConfigError(f"--host {host!r} is not an address or a name this machine can resolve.") from None
    except OSError as e:
        raise ConfigError(f"Cannot listen on {host}:{port} ({os.strerror(e.errno) if e.errno else e}). Choose another --port, "
                          "or stop what is using it.") from None


def _check_counts(workers: int, threads: int | None) -> None:
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}.")
    check_workers(threads, "--threads")


def serve(
    model=None, host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1, threads: int | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    allowed_hosts: list[str] | None = None, log_level: str = "info", cases: str | os.PathLike | None = None,
) -> int:
    """Serve the model over HTTP (REST API and web page) until interrupted.

    Parameters
    ----------
    model : str or Path, optional
        Model folder or exported ``.onnx`` file (default: the bundled model, or ``$BLOODCELL_MODEL``).
    host : str
        Address to listen on (``0.0.0.0`` for all interfaces).
    port : int
        Port to listen on.
    workers : int
        Worker processes; one process already batches concurrent requests.
    threads : int, optional
        onnxruntime threads per worker (default: the usable CPUs; 1 with several workers).
    max_upload_mb : float
        Largest request body, in MB.
    max_files : int
        Most images per request.
    max_megapixels : float
        Most pixels per image, in millions (a cell image is about 0.13).
    allowed_hosts : list of str, optional
        More ``Host`` header names to answer besides localhost and the bound address.
    log_level : str
        uvicorn's log level.
    cases : str or Path, optional
        Case store folder (default ``bloodcell-cases`` here, or ``$BLOODCELL_CASES``).

    Returns
    -------
    int
        0 once the server has stopped.

    Raises
    ------
    ConfigError
        When a limit or the worker count is out of range, or ``host:port`` cannot be listened on.
    """
    _check_counts(workers, threads)
    check_limits(max_upload_mb, max_files, max_megapixels)
    check_address(host, port)
    options = {"max_upload_mb": max_upload_mb, "max_files": max_files, "max_megapixels": max_megapixels,
               "allowed_hosts": [*bound_hosts(host), *(allowed_hosts or [])],
               "cases_dir": None if cases is None else str(cases)}
    print(f"bloodcell serve: web page and API at http://{host}:{port}/ (API docs at /docs); Ctrl+C stops.",
          file=sys.stderr)
    if workers == 1:
        limit_malloc_arenas()
        uvicorn.run(create_app(model, threads=threads, **options), host=host, port=port, log_level=log_level)
    else:
        os.environ[OPTIONS_ENV] = json.dumps({"model": str(resolve_model(model)), "threads": threads or 1, **options})
        uvicorn.run("bloodcell.server.run:make_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    return 0
