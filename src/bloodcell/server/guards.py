"""What keeps the service up under hostile load: size, host and concurrency limits, security headers.

* :class:`BodyLimit` refuses request bodies over the upload limit (413);
* :class:`HostCheck` refuses ``Host`` headers the server does not answer to (400);
* :class:`SecurityHeaders` adds a Content-Security-Policy and friends to every response;
* :class:`Gate` bounds concurrent heavy work (decoding, inference, Grad-CAM) and
  turns the overflow into 503 with Retry-After instead of a growing process;
* :func:`limit_malloc_arenas` and :func:`release_memory` keep freed heap memory
  from staying with the process after heavy work.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from contextlib import asynccontextmanager

from starlette.middleware.trustedhost import TrustedHostMiddleware, parse_host_header

from bloodcell.server.errors import Busy, error_bytes

#: The page and the API: scripts, styles and images only from the server itself (plus
#: data:/blob: images for Grad-CAM overlays and previews of the uploaded files).
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
#: Swagger UI and ReDoc start from an inline script and inline styles.
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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
        return error_bytes(f"Upload too large: {got}; the limit is {mb:g} MB per request. "
                           "Send fewer or smaller images per request.")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _answer(send, 413, self._message(int(length)))
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
            await _answer(send, 413, self._message(None))


class HostCheck(TrustedHostMiddleware):
    """Starlette's trusted-host check, answering with the service's JSON error body."""

    async def __call__(self, scope, receive, send):
        if self.allow_any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        parsed = parse_host_header(headers.get(b"host", b"").decode("latin-1"))
        host = parsed.host.lower() if parsed is not None else None
        if host is not None and any(host == p or (p.startswith("*") and host.endswith(p[1:]))
                                    for p in self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        await _answer(send, 400, error_bytes(
            f"Invalid Host header {host!r}: this server answers to {', '.join(self.allowed_hosts)}. "
            "Start it with --allowed-hosts NAME to accept another name."))


class SecurityHeaders:
    """ASGI middleware adding CSP, nosniff, frame and referrer headers to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_POLICY if scope["path"].startswith(DOCS_PATHS) else PAGE_POLICY

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"content-security-policy", policy.encode()),
                                                  (b"x-content-type-options", b"nosniff"),
                                                  (b"x-frame-options", b"DENY"),
                                                  (b"referrer-policy", b"no-referrer")]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


LIBC = _libc()


#: glibc's mallopt parameter for the number of malloc arenas.
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Few malloc arenas for the whole process: glibc's default of eight per core lets every
    worker thread keep its own fragmented heap, which under load held hundreds of MB for good."""
    if LIBC is not None and hasattr(LIBC, "mallopt"):
        LIBC.mallopt(M_ARENA_MAX, arenas)


def release_memory() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise; no-op elsewhere)."""
    if LIBC is not None:
        LIBC.malloc_trim(0)


class Gate:
    """At most ``slots`` jobs at once and ``queue`` more waiting; past that, :class:`Busy`.

    Runs in the event loop only, so the counter needs no lock. With ``trim``, freed
    memory is returned to the system when the last job leaves (at most every
    ``trim_every`` seconds: a trim walks the whole heap).
    """

    def __init__(self, what: str, slots: int, queue: int, retry_after: int = 2, trim: bool = False,
                 trim_every: float = 1.0, clock=time.monotonic, release=release_memory):
        self.what = what
        self.limit = slots + queue
        self.retry_after = retry_after
        self.count = 0
        self.trim_every = trim_every if trim else None
        self._trimmed = 0.0
        self._clock = clock
        self._release = release
        self._pending = False
        self._slots = asyncio.Semaphore(slots)

    @asynccontextmanager
    async def enter(self):
        if self.count >= self.limit:
            raise Busy(self.what, self.retry_after)
        self.count += 1
        try:
            async with self._slots:
                yield
        finally:
            self.count -= 1
            if self.count == 0 and self.trim_every is not None:
                self._trim_when_idle()

    def _trim_when_idle(self, scheduled: bool = False) -> None:
        if scheduled:
            self._pending = False
        if self.count or self._pending:
            return
        wait = self._trimmed + self.trim_every - self._clock()
        if wait <= 0:
            self._release()
            self._trimmed = self._clock()
        else:
            self._pending = True
            asyncio.get_running_loop().call_later(wait, self._trim_when_idle, True)
