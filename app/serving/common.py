"""What ``karmchari serve`` does before and around the HTTP server, whichever it
is: the start-up checks, the store, the listening socket, the open-files limit,
the sweeper, and the WSGI layer both servers share (drain, framing checks)."""

from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app import access_log
from app.app import create_app
from app.auth import TokenRegistry
from app.config import Config
from app.errors import StoreUnavailable
from app.events import ChangeNotifier
from app.store import JobStore
from app.store_setup import build_store

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("karmchari")

MIN_REDIS = (7, 0)
MIN_VALKEY = (7, 2)


class StartupError(RuntimeError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config, tokens: TokenRegistry) -> None:
    """No tokens: loopback only, unless the operator says so explicitly."""
    if tokens.enabled or is_loopback(config.host):
        return
    if not config.allow_unauthenticated:
        raise StartupError(
            f"refusing to listen on {config.host} without authentication: configure tokens "
            "(KARMCHARI_TOKENS or --tokens-file), or pass --allow-unauthenticated")
    log.warning("listening on %s WITHOUT authentication: anyone who can reach it can "
                "kill jobs", config.host)


def check_version(flavor: str, version: str | None) -> None:
    """Refuse a server older than the supported minimum (Redis 7.0, Valkey 7.2)."""
    numbers = re.match(r"(\d+)\.(\d+)", version or "")
    found = (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)
    minimum = MIN_VALKEY if flavor == "valkey" else MIN_REDIS
    if found < minimum:
        name = "Valkey" if flavor == "valkey" else "Redis"
        raise StartupError(f"{name} {version or '(unknown version)'} is too old: Karmchari "
                           f"needs {name} {minimum[0]}.{minimum[1]} or newer")


def check_store(store: JobStore, wait_seconds: float = 30.0, where: str = "",
                upgrade: bool = True) -> None:
    """Wait for Redis, refuse one that is too old, warn about eviction, load the
    scripts and (``upgrade``) bring data an earlier release wrote up to date.
    While it waits: one line per try, tries further and further apart, and one
    final error naming the store and the option that sets the wait (not a line
    per second)."""
    deadline = time.monotonic() + wait_seconds
    delay = 1.0
    quiet = logging.getLogger("app.store.connection")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # each failed try is told here, once
    try:
        while True:
            try:
                info = store.server_info()
                break
            except StoreUnavailable as error:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StartupError(
                        f"Redis{' at ' + where if where else ''} is not reachable after "
                        f"{wait_seconds:g} s: {error} (check --redis-url, --shost or "
                        "--redis-sentinel; --store-wait sets how long to wait)") from None
                log.warning("waiting for Redis%s (trying again in %.0f s, giving up in "
                            "%.0f s): %s", " at " + where if where else "", min(delay, left),
                            left, error)
                time.sleep(min(delay, left))
                delay *= 2
    finally:
        quiet.setLevel(level)
    check_version(info["flavor"], info["version"])
    if info["maxmemory_policy"] not in (None, "noeviction"):
        log.warning("Redis maxmemory-policy is %s, not noeviction: Redis may evict jobs "
                    "under memory pressure", info["maxmemory_policy"])
    store.scripts.load_all()
    # Before serving: data an earlier release wrote is brought up to date once
    # (app/store/migrations.py); afterwards this reads one set per shard.
    if not upgrade:
        return
    try:
        if changed := store.upgrade():
            log.info("upgraded the data of an earlier release: %d jobs indexed", changed)
    except StoreUnavailable as error:
        raise StartupError(f"Redis failed during the upgrade of stored data: {error}") from None


def start_sweeper(store: JobStore, interval: float, stopping: threading.Event,
                  job_types: Sequence[str] = ()) -> None:
    """Deletes terminal jobs past their retention, with their index entries
    (and clears the entries of jobs that are gone, in ``job_types``' indexes too)."""
    def sweep() -> None:
        while not stopping.wait(interval):
            try:
                while store.sweep_expired(job_types=job_types) and not stopping.is_set():
                    pass
            except StoreUnavailable:
                pass
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.exception("retention sweep failed")

    threading.Thread(target=sweep, name="karmchari-sweeper", daemon=True).start()


def shown_url(url: str) -> str:
    """The store's URL for a log line: without its password and its query."""
    parts = urlsplit(url)
    credentials, at, address = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{parts.scheme}://{user}{'@' if user else ''}{address}{parts.path}"


def shown_store(config: Config, url: str) -> str:
    if config.redis_sentinel:
        return f"master {config.sentinel_master} of Sentinel {config.redis_sentinel}"
    return shown_url(url)


def listen_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(backlog)
    return sock


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one: every connection is a file, and
    the common soft limit of 1,024 is reached by a few hundred idle clients."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open-files limit from %d: %s", soft, error)
    return soft


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena, up to eight per
    core, and Python's request threads all allocate: with 48 threads one process
    held about 99 MB, 81 MB with two arenas (measured by bench/signal_latency.py).
    The threads take turns on the GIL anyway, so two arenas cost no speed. An
    operator's MALLOC_ARENA_MAX wins; other C libraries are left alone."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(M_ARENA_MAX, MALLOC_ARENAS)


class Worker:
    """The application of one serving process with what it owns: its store
    connections, change notifier and sweeper, and its drain flag."""

    def __init__(self, config: Config, url: str) -> None:
        self.config = config
        self.store = build_store(config, url)
        self.notifier = ChangeNotifier(self.store, config.waiter_limit,
                                       per_holder=config.waiter_limit_per_client)
        self.draining = threading.Event()
        self.app = create_app(config, self.store, notifier=self.notifier, draining=self.draining)
        start_sweeper(self.store, config.sweep_interval, self.draining, config.job_types)

    def drain(self) -> None:
        """From now on each answer closes its connection, and long-polls answer now."""
        if not self.draining.is_set():
            access_log.flush()  # the lines so far before this one
            log.info("shutting down: finishing requests in flight")
            self.draining.set()
            self.notifier.stop()


PROBLEM_MEDIA = "application/problem+json"
# The old API's routes, whose errors are plain text (their ``plain_text_errors``).
PLAIN_TEXT_PATHS = ("/registerJob", "/jobState")


def problem_body(status: int, code: str, title: str, detail: str | None = None) -> bytes:
    """A problem document shaped as ``app.problems.serialize_error`` makes it, for
    answers given before the application runs."""
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["code"] = code
    return json.dumps(body).encode()


def error_answer(path: str, status: int, code: str, title: str,
                 detail: str | None = None) -> tuple[str, bytes]:
    """(Content-Type, body) of an error answered before the application runs, as
    the application would answer it on ``path``."""
    if path.rstrip("/") in PLAIN_TEXT_PATHS:
        return "text/plain; charset=utf-8", (detail or title).encode()
    return PROBLEM_MEDIA, problem_body(status, code, title, detail)


# Request framing (RFC 9112 6): a body comes with Content-Length, or with
# ``Transfer-Encoding: chunked`` alone. Anything else a proxy in front may frame
# differently (request smuggling): both codings and a length, a coding other than
# chunked, chunked twice, or a Transfer-Encoding on HTTP/1.0. Both servers refuse
# those alike, and close the connection.
FRAMING_CODE = "transfer_encoding_refused"
FRAMING_DETAIL = ("Transfer-Encoding is accepted only as 'chunked' alone, without "
                  "Content-Length")
HOST_DETAIL = "an HTTP/1.1 request needs exactly one Host header, not empty"


def framing_error(version: str, codings: list[str], has_length: bool) -> bool:
    """Whether a request's Transfer-Encoding values (one per header line) make
    its framing ambiguous or unsupported; ``codings`` is empty without one."""
    if not codings:
        return False
    return (has_length or version != "1.1" or len(codings) != 1
            or codings[0].strip(" \t").lower() != "chunked")


def _head_size(environ: WSGIEnvironment) -> int:
    """About the bytes of the request head: the request line and the headers."""
    size = len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) + 16
    for name, value in environ.items():
        if name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            size += len(name) + len(value) + 4
    return size


def _apply_proxy_headers(environ: WSGIEnvironment, trusted_proxy: str) -> None:
    """As waitress does with ``trusted_proxy``: from that address, the client is the
    last X-Forwarded-For entry and the scheme X-Forwarded-Proto; from any other,
    both headers are dropped, so nobody else can claim an address."""
    forwarded_for = environ.pop("HTTP_X_FORWARDED_FOR", "")
    forwarded_proto = environ.pop("HTTP_X_FORWARDED_PROTO", "")
    if environ.get("REMOTE_ADDR") != trusted_proxy:
        return
    if forwarded_for.strip():
        environ["REMOTE_ADDR"] = forwarded_for.split(",")[-1].strip()
    if forwarded_proto.strip().lower() in ("http", "https"):
        environ["wsgi.url_scheme"] = forwarded_proto.strip().lower()


# Granian's read buffer, which holds the request head, is 8 KiB at least: a
# smaller head limit is the guard's to enforce.
GRANIAN_MIN_HEAD = 8192


def guarded(worker: Worker) -> WSGIApplication:
    """The WSGI application for a server that leaves these to the application:
    the trusted proxy's headers, a request head over a limit below Granian's
    smallest (GRANIAN_MIN_HEAD), and ``Connection: close`` on every answer once
    the drain has begun. Each is skipped when it has nothing to do: this runs
    for every request."""
    app, draining = worker.app, worker.draining
    max_head = worker.config.max_header_bytes
    check_head = max_head < GRANIAN_MIN_HEAD
    trusted_proxy = worker.config.trusted_proxy

    def refuse(environ: WSGIEnvironment, start_response: StartResponse, status: str,
               code: str, title: str, detail: str) -> list[bytes]:
        media, body = error_answer(environ.get("PATH_INFO", ""), int(status[:3]), code,
                                   title, detail)
        start_response(status, [("Content-Type", media), ("Content-Length", str(len(body))),
                                ("Connection", "close"), ("X-Content-Type-Options", "nosniff")])
        return [body]

    def application(environ: WSGIEnvironment,
                    start_response: StartResponse) -> Iterable[bytes]:
        if trusted_proxy:
            _apply_proxy_headers(environ, trusted_proxy)
        if check_head and _head_size(environ) > max_head:
            return refuse(environ, start_response, "431 Request Header Fields Too Large",
                          "headers_too_large", "Request header fields too large",
                          f"the request head may be at most {max_head} bytes")

        def respond(status: str, headers: list[tuple[str, str]],
                    exc_info: OptExcInfo | None = None) -> Callable[[bytes], Any]:
            # Decided when the answer starts: a long-poll begun before the drain
            # ends because of it, and its answer closes the connection too.
            if draining.is_set():
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)

        return app(environ, respond)

    return application
