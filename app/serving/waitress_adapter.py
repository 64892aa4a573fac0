"""Every use of waitress's internals, kept here so a waitress release that
changes them breaks one small module (and tests/test_serving.py says so).

Waitress has no drain of its own (its open pull request #499: output in flight is
dropped at shutdown), answers framing errors and oversized bodies in plain text,
and lets a request carry both Content-Length and Transfer-Encoding (chunked wins).
So this module drives waitress's loop itself and plugs in its own channel, parser
and tasks. Checked against the versions in ``SUPPORTED``.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask, WSGITask

from app.serving.common import FRAMING_CODE, FRAMING_DETAIL, Worker, error_answer

SUPPORTED = ("3.0.",)  # waitress releases whose internals this module was written for


class UnsupportedWaitress(RuntimeError):
    pass


def check_version() -> str:
    found = version("waitress")
    if not found.startswith(SUPPORTED):
        raise UnsupportedWaitress(f"waitress {found} is not supported: Karmchari's adapter "
                                  f"was written for waitress {', '.join(SUPPORTED)}x")
    return found


class _Parser(HTTPRequestParser):
    def parse_header(self, header_plus: bytes) -> None:
        # See FRAMING_DETAIL; the error answer closes the connection.
        first, *lines = header_plus.split(b"\r\n")
        names = {line.split(b":", 1)[0].strip().lower() for line in lines}
        if b"transfer-encoding" in names:
            target = first.split(b" ")[1] if first.count(b" ") == 2 else b""
            self.path = target.split(b"?", 1)[0].decode("latin-1")  # for the error answer
            raise ParsingError(FRAMING_DETAIL)
        super().parse_header(header_plus)


_ERROR_CODES = {400: "bad_request", 413: "body_too_large", 431: "headers_too_large",
                501: "not_implemented"}


class _ErrorTask(ErrorTask):
    """Waitress's own errors (framing, sizes) as the app's problem documents."""

    def execute(self) -> None:
        request: Any = self.request
        error = request.error
        if error.code == 413:
            limit = self.channel.server.adj.max_request_body_size - 1
            detail = f"the body may be at most {limit} bytes"
            title = "Request body too large"
        else:
            detail, title = error.body, error.reason.capitalize()
        code = FRAMING_CODE if detail == FRAMING_DETAIL else _ERROR_CODES.get(error.code,
                                                                             "bad_request")
        path = getattr(request, "path", "")  # unset when the request line was bad
        media, body = error_answer(path, error.code, code, title, detail)
        self.status = f"{error.code} {error.reason}"
        headers: Any = self.response_headers  # a list at run time
        headers.append(("Content-Type", media))
        headers.append(("X-Content-Type-Options", "nosniff"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Task(WSGITask):
    def build_response_header(self):
        channel: Any = self.channel
        if channel.worker.draining.is_set():
            self.set_close_on_finish()  # "Connection: close", then close once flushed
        return super().build_response_header()


ACCEPTS_PER_TURN = 64


def install(server: Any, worker: Worker) -> None:
    """Our channel class on ``server``, for the connections it accepts from now on;
    and up to ACCEPTS_PER_TURN accepts per turn of the loop, not one: each turn
    costs time for every open connection, and a burst of a thousand connections
    must not keep the next client waiting in the backlog for seconds."""
    server.channel_class = type("KarmchariChannel", (HTTPChannel,), {
        "parser_class": _Parser, "task_class": _Task, "error_task_class": _ErrorTask,
        "worker": worker})
    accept_one, socket_map, limit = server.handle_accept, server._map, server.adj.connection_limit

    def handle_accept() -> None:
        for _ in range(ACCEPTS_PER_TURN):
            before = len(socket_map)
            accept_one()
            if len(socket_map) == before or len(socket_map) >= limit:
                return  # nothing more waiting, or the limit reached

    server.handle_accept = handle_accept


def wake(server: Any) -> None:
    server.pull_trigger()


def _channels(server: Any) -> list[Any]:
    return [c for c in list(server._map.values()) if isinstance(c, HTTPChannel)]


def _close_idle(server: Any) -> None:
    """Close connections with no request in progress or waiting to be sent; a
    connection still sending its request head has not been accepted a request."""
    for channel in _channels(server):
        partial = channel.request
        if (not channel.requests and not channel.total_outbufs_len
                and (partial is None or not partial.headers_finished)):
            channel.will_close = True


def run(server: Any, worker: Worker, shutdown_timeout: float) -> None:
    """Serve until ``worker.draining``; then stop accepting, answer every request
    read so far (with ``Connection: close``), and return once every connection is
    closed or ``shutdown_timeout`` has passed."""
    loop, socket_map = server.asyncore.loop, server._map
    while not worker.draining.is_set():
        loop(timeout=1.0, map=socket_map, use_poll=True, count=1)
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + shutdown_timeout
    while _channels(server) and time.monotonic() < deadline:
        _close_idle(server)
        loop(timeout=0.05, map=socket_map, use_poll=True, count=1)
    server.trigger.close()
    for channel in _channels(server):
        channel.close()
