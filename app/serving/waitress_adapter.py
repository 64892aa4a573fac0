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

from app.serving.common import (
    FRAMING_CODE,
    FRAMING_DETAIL,
    HOST_DETAIL,
    Worker,
    error_answer,
    framing_error,
)

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
        """Waitress's parsing, after the checks it leaves out: framing (see
        FRAMING_DETAIL), obs-fold (RFC 9112 5.2: a server may refuse it, and a
        proxy may join it differently) and Host on HTTP/1.1 (RFC 9112 3.2: exactly
        one). Bare CR and LF waitress refuses itself. The error answer closes the
        connection."""
        first, *lines = header_plus.split(b"\r\n")
        parts = first.split(b" ")
        self.path = (parts[1] if len(parts) == 3 else b"").split(b"?", 1)[0].decode("latin-1")
        version = parts[2].removeprefix(b"HTTP/").decode("latin-1") if len(parts) == 3 else ""
        if any(line[:1] in (b" ", b"\t") for line in lines):
            raise ParsingError("obs-fold (a header line continued on the next) is not accepted")
        pairs = [line.split(b":", 1) for line in lines]
        names = [pair[0].strip().lower() for pair in pairs]
        hosts = [pair[1].strip() for pair in pairs if pair[0].strip().lower() == b"host"]
        if version == "1.1" and (len(hosts) != 1 or not hosts[0]):
            raise ParsingError(HOST_DETAIL)
        codings = [pair[1].decode("latin-1") for pair in pairs
                   if len(pair) == 2 and pair[0].strip().lower() == b"transfer-encoding"]
        if framing_error(version, codings, b"content-length" in names):
            raise ParsingError(FRAMING_DETAIL)
        super().parse_header(header_plus)
        parsed: Any = self
        if parsed.expect_continue and parsed.body_rcv is None:
            # No body to continue with (a GET, Content-Length: 0). Waitress would
            # send "100 Continue" and mark the complete request incomplete again
            # (send_continue sets completed = False), so it is never answered.
            # Upstream fix: in HTTPChannel.received, send 100 Continue only while
            # ``not self.request.completed``.
            parsed.expect_continue = False


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
    def build_response_header(self) -> bytes:
        channel: Any = self.channel
        if channel.worker.draining.is_set():
            self.set_close_on_finish()  # "Connection: close", then close once flushed
        head: bytes = super().build_response_header()
        return head


class _Channel(HTTPChannel):
    """Remembers since when a request head has been arriving (``head_since``),
    for the header deadline and for shedding at the connection limit."""

    head_since: float | None = None
    _timed: Any = None  # the partial request head_since is about

    def received(self, data: bytes) -> bool:
        result: bool = super().received(data)
        partial: Any = self.request
        if partial is None or partial.headers_finished:
            self.head_since = self._timed = None
        elif partial is not self._timed:
            self._timed, self.head_since = partial, time.monotonic()
        return result


def _unanswered(channel: Any) -> bool:
    """A connection with no request read yet, nothing being answered, nothing to
    send: closing it loses no answer."""
    partial = channel.request
    return (not channel.requests and not channel.total_outbufs_len
            and (partial is None or not partial.headers_finished))


def _shed_order(channel: Any) -> tuple[int, float]:
    # Those sending a head first (slowest first), then idle ones (longest idle first).
    if channel.head_since is not None:
        return (0, channel.head_since)
    return (1, channel.last_activity)


ACCEPTS_PER_TURN = 64
HEAD_CHECK_INTERVAL = 0.5  # seconds between looks for heads past their deadline


def install(server: Any, worker: Worker) -> None:
    """Our channel class on ``server``, for the connections it accepts from now on;
    up to ACCEPTS_PER_TURN accepts per turn of the loop, not one: each turn costs
    time for every open connection, and a burst of a thousand connections must not
    keep the next client waiting in the backlog for seconds. At the connection
    limit a new client is accepted still, and the connection that has waited
    longest without a request to answer is closed for it (waitress would stop
    accepting: slow heads would lock everyone out)."""
    server.channel_class = type("KarmchariChannel", (_Channel,), {
        "parser_class": _Parser, "task_class": _Task, "error_task_class": _ErrorTask,
        "worker": worker})
    accept_one, socket_map, limit = server.handle_accept, server._map, server.adj.connection_limit
    waitress_readable = server.readable
    blocked_until = [0.0]  # at the limit with nothing to shed: stop polling the listener

    def readable() -> bool:
        waitress_readable()  # its maintenance (idle connections) and its log lines
        return server.accepting and time.monotonic() >= blocked_until[0]

    def handle_accept() -> None:
        victims: list[Any] | None = None
        for _ in range(ACCEPTS_PER_TURN):
            if len(socket_map) >= limit:
                if victims is None:  # sorted once per turn: a flood costs one sort
                    victims = sorted(filter(_unanswered, _channels(server)),
                                     key=_shed_order, reverse=True)
                while victims and not _unanswered(victims[-1]):
                    victims.pop()
                if not victims:
                    blocked_until[0] = time.monotonic() + 0.5
                    return
                victims.pop().close()
            before = len(socket_map)
            accept_one()
            if len(socket_map) == before:
                return  # nothing more waiting

    server.readable = readable
    server.handle_accept = handle_accept


def close_late_heads(server: Any, header_timeout: float) -> None:
    """The header deadline: a request head must arrive whole within
    ``header_timeout`` of its first byte, however it trickles (waitress itself
    only closes a connection silent for its channel_timeout)."""
    cutoff = time.monotonic() - header_timeout
    for channel in _channels(server):
        since = channel.head_since
        if since is not None and since < cutoff and _unanswered(channel):
            channel.will_close = True


def wake(server: Any) -> None:
    server.pull_trigger()


def _channels(server: Any) -> list[Any]:
    return [c for c in list(server._map.values()) if isinstance(c, HTTPChannel)]


# During the drain a connection is closed only once it has been quiet this long:
# a keep-alive client may be sending its next request right after an answer that
# went out before the drain began; that request is read and answered (with
# "Connection: close") rather than reset by a close under it.
DRAIN_QUIET = 1.0


def _close_idle(server: Any) -> None:
    """Close connections with no request in progress or waiting to be sent, and
    quiet for DRAIN_QUIET; a connection still sending its request head has not
    been accepted a request."""
    quiet_since = time.time() - DRAIN_QUIET
    for channel in _channels(server):
        if _unanswered(channel) and channel.last_activity < quiet_since:
            channel.will_close = True


def run(server: Any, worker: Worker, shutdown_timeout: float, header_timeout: float) -> None:
    """Serve until ``worker.draining``; then stop accepting, answer every request
    read so far (with ``Connection: close``), and return once every connection is
    closed or ``shutdown_timeout`` has passed."""
    loop, socket_map = server.asyncore.loop, server._map
    next_check = 0.0
    while not worker.draining.is_set():
        loop(timeout=HEAD_CHECK_INTERVAL, map=socket_map, use_poll=True, count=1)
        if time.monotonic() >= next_check:
            close_late_heads(server, header_timeout)
            next_check = time.monotonic() + HEAD_CHECK_INTERVAL
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
