"""The front of ``--server granian``: Granian's ASGI interface, where an async
coroutine on Granian's event loop reads each request body whole, within
``--body-timeout``, and only then hands the request to a request thread, which
runs the WSGI application.

Granian's WSGI interface would take a thread at once and read the body in it:
``--threads`` clients that send a head and then stall their bodies froze the
whole service. Here a slow client holds a connection and a little memory (its
body, at most ``--max-body-bytes``), never a thread.

The checks hyper (Granian's HTTP parser) leaves out are made here too, on the
parsed head: exactly one Host on HTTP/1.1, and a Transfer-Encoding that is
``chunked`` alone. What hyper does not let us see: a bare LF it took as a line
end, and a Content-Length beside ``Transfer-Encoding: chunked`` (hyper drops it,
reads the body as chunked and closes the connection after the answer, as
RFC 9112 6.3 allows). docs/security.md says so. (ASGI, not RSGI: RSGI drops
every header whose value is not ASCII, where WSGI reads it as latin-1.)
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from app.serving.common import (
    FRAMING_CODE,
    FRAMING_DETAIL,
    HOST_DETAIL,
    Worker,
    error_answer,
    guarded,
)
from app.serving.request_threads import RequestThreads

if TYPE_CHECKING:
    from _typeshed import OptExcInfo

DRAIN_QUIET = 1.0  # seconds without a request before a draining worker's loop ends
DRAIN_GRACE = 0.5  # seconds from the drain's start to Granian's shutdown

# Header names as WSGI environ keys, for the common ones: no string work per request.
_ENVIRON_NAMES: dict[bytes, str] = {}


def _environ_name(name: bytes) -> str:
    key = _ENVIRON_NAMES.get(name)
    if key is None:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if len(_ENVIRON_NAMES) < 512:  # a bound: names are the client's to choose
            _ENVIRON_NAMES[name] = key
    return key


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, code: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.code, self.title, self.detail = (
            status, reason, code, title, detail)


def _bad(detail: str, code: str = "bad_request") -> _Refusal:
    return _Refusal(400, "Bad Request", code, "Bad request", detail)


class _ClientGone:
    """``environ["waitress.client_disconnected"]``: true once the client has closed
    its connection. Only a waiting request asks, so only it pays for the watch."""

    __slots__ = ("_loop", "_receive", "_event", "_task", "_done")

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Any) -> None:
        self._loop, self._receive = loop, receive
        self._event: threading.Event | None = None  # made when first asked: most never are
        self._task: asyncio.Task[None] | None = None
        self._done = False

    def __call__(self) -> bool:  # in the request thread
        if self._event is None:
            self._event = threading.Event()
            self._loop.call_soon_threadsafe(self._start)
        return self._event.is_set()

    def _start(self) -> None:
        if not self._done:
            self._task = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        # The body is read: the next message is the client's going away.
        while (await self._receive())["type"] != "http.disconnect":
            pass
        assert self._event is not None  # made before this task was started
        self._event.set()

    def finish(self) -> None:  # on the loop, once answered
        self._done = True
        if self._task is not None:
            self._task.cancel()


class _Gone(Exception):
    """The client went away while sending its body: nobody to answer."""


class GranianFront:
    """The ASGI application of one Granian worker process."""

    def __init__(self, worker: Worker) -> None:
        config = worker.config
        self.worker = worker
        self.app = guarded(worker)
        self.max_body = config.max_body_bytes
        self.body_timeout = config.body_timeout
        self.pool = RequestThreads(config.threads)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0
        self.last_seen = 0.0  # when a request last began or ended
        self.shutdown_timeout = config.shutdown_timeout
        self.base = {"SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.errors": sys.stderr,
                     "wsgi.multithread": True, "wsgi.multiprocess": config.workers > 1,
                     "wsgi.run_once": False}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.in_flight += 1
            try:
                await self._serve(scope, receive, send)
            finally:
                self.in_flight -= 1
                if self.worker.draining.is_set():
                    self.last_seen = time.monotonic()
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        """Startup: the loop, and the signal handlers to wrap. Shutdown: Granian
        has stopped its loop's main task, while its server still finishes the
        requests in flight, whose coroutines need the loop; so it runs on until
        no request has been seen for DRAIN_QUIET (a keep-alive client's next
        request, sent before it saw "Connection: close", is answered), at most
        --shutdown-timeout."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self._delay_shutdown(self.loop)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._drained()
                self.pool.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _delay_shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        """On SIGTERM/SIGINT, begin the drain at once and let Granian shut down
        DRAIN_GRACE later: hyper closes idle keep-alive connections when it does,
        and a client may be sending its next request on one right after an answer
        that went out before the drain; in the grace that request is answered,
        with "Connection: close". (Granian set its handlers on its loop just
        before this; asyncio keeps them in ``_signal_handlers``.)"""
        handlers = getattr(loop, "_signal_handlers", {})
        for signum in (signal.SIGTERM, signal.SIGINT):
            granian = handlers.get(signum)
            if granian is None:
                continue

            def later(granian: Any = granian) -> None:  # asyncio's own handler
                self.worker.drain()
                loop.call_later(DRAIN_GRACE, granian._run)

            loop.add_signal_handler(signum, later)

    async def _drained(self) -> None:
        deadline = loop_time = time.monotonic()
        deadline += self.shutdown_timeout
        while loop_time < deadline:
            if not self.in_flight and loop_time - self.last_seen >= DRAIN_QUIET:
                return
            await asyncio.sleep(0.05)
            loop_time = time.monotonic()

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        loop = self.loop or asyncio.get_running_loop()
        if self.worker.draining.is_set():
            self.last_seen = time.monotonic()
        try:
            environ, chunked, length = self._environ(scope)
            body = b""
            if chunked or length:
                body = await self._body(receive)
            if chunked:  # now framed by its length, as waitress hands it on
                del environ["HTTP_TRANSFER_ENCODING"]
                environ["CONTENT_LENGTH"] = str(len(body))
        except _Refusal as refusal:
            media, text = error_answer(scope["path"], refusal.status, refusal.code,
                                       refusal.title, refusal.detail)
            await self._answer(send, refusal.status, [
                ("Content-Type", media), ("Connection", "close")], text)
            return
        except _Gone:
            return
        environ["wsgi.input"] = BytesIO(body)
        gone = environ["waitress.client_disconnected"] = _ClientGone(loop, receive)
        try:
            status, headers, content = await self.pool.run(loop, self._call, environ)
        finally:
            gone.finish()
        await self._answer(send, status, headers, content)

    @staticmethod
    async def _answer(send: Any, status: int, headers: list[tuple[str, str]],
                      content: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(name.encode("latin-1"), value.encode("latin-1"))
                                for name, value in headers]})
        await send({"type": "http.response.body", "body": content})

    def _environ(self, scope: dict[str, Any]) -> tuple[dict[str, Any], bool, int]:
        """The WSGI environ of the head, and how its body is framed; refuses what
        is ambiguous."""
        server = scope.get("server") or ("", "")
        client = scope.get("client") or ("", "")
        raw_path = scope.get("raw_path")
        environ = {**self.base, "REQUEST_METHOD": scope["method"],
                   # WSGI strings are bytes as latin-1, the path percent-decoded.
                   "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1") if raw_path
                   else scope["path"].encode().decode("latin-1"),
                   "QUERY_STRING": scope["query_string"].decode("latin-1"),
                   "SERVER_NAME": str(server[0]), "SERVER_PORT": str(server[1]),
                   "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
                   "REMOTE_ADDR": str(client[0]), "wsgi.url_scheme": scope["scheme"]}
        hosts = 0
        codings = []
        for name, raw in scope["headers"]:
            key = _environ_name(name)
            value = raw.decode("latin-1")
            if key == "HTTP_HOST":
                # Granian makes up an empty Host when none came; an http URI has
                # an authority, so an empty Host is no Host (RFC 9112 3.2).
                hosts += 1 if value.strip() else 2
            elif key == "HTTP_TRANSFER_ENCODING":
                codings.append(value)
            if key in environ:  # a repeated header: one value, comma-joined (RFC 9110 5.3)
                environ[key] += "," + value
            else:
                environ[key] = value
        if scope["http_version"] == "1.1" and hosts != 1:
            raise _bad(HOST_DETAIL)
        if codings:
            if len(codings) != 1 or codings[0].strip(" \t").lower() != "chunked":
                raise _bad(FRAMING_DETAIL, FRAMING_CODE)
            return environ, True, 0
        length = environ.get("CONTENT_LENGTH", "")
        if not length:
            return environ, False, 0
        if not length.isdigit() or not length.isascii():
            raise _bad("Content-Length is invalid")
        if int(length) > self.max_body:
            raise self._too_large()
        return environ, False, int(length)

    def _too_large(self) -> _Refusal:
        return _Refusal(413, "Content Too Large", "body_too_large", "Request body too large",
                        f"the body may be at most {self.max_body} bytes")

    async def _body(self, receive: Any) -> bytes:
        """The whole body within --body-timeout, else 408; up to the body limit
        (a chunked one is counted as it arrives), else 413."""
        try:
            return await asyncio.wait_for(self._chunks(receive), self.body_timeout)
        except TimeoutError:
            raise _Refusal(408, "Request Timeout", "body_timeout", "Request timeout",
                           f"the body did not arrive within {self.body_timeout:g} s"
                           ) from None

    async def _chunks(self, receive: Any) -> bytes:
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Runs in a request thread: the WSGI application, its answer collected."""
        started: list[Any] = []  # status, headers

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: OptExcInfo | None = None) -> Callable[[bytes], None]:
            started[:] = [status, headers]
            return lambda data: None  # no application here writes through this

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return int(started[0][:3]), started[1], content
