"""``karmchari serve --server waitress`` (the default, and the one for Windows)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

import waitress.server

from app import access_log
from app.config import Config
from app.embedded import die_with_parent
from app.serving import waitress_adapter
from app.serving.common import StartupError, Worker, listen_socket

log = logging.getLogger("karmchari")
RESERVED_FILES = 64  # for Redis connections, logs and the store's own files


def check_available() -> None:
    try:
        waitress_adapter.check_version()
    except waitress_adapter.UnsupportedWaitress as error:
        raise StartupError(str(error)) from None


def run(config: Config, url: str, shown_store: str, open_files: int) -> None:
    sock = listen_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    limit = config.connection_limit
    if open_files and limit > open_files - RESERVED_FILES:
        limit = max(1, open_files - RESERVED_FILES)
        log.warning("connection limit lowered to %d by the open-files limit", limit)
    log.info("karmchari listening on http://%s:%d (waitress, %d threads, %d process%s, "
             "%d connections), store %s", f"[{host}]" if ":" in host else host, port,
             config.threads, config.workers, "es" if config.workers > 1 else "", limit,
             shown_store)
    if config.workers > 1:
        _serve_forked(config, url, sock, limit)
    else:
        _serve_process(config, url, sock, limit)


def _proxy_settings(config: Config) -> dict[str, Any]:
    if not config.trusted_proxy:
        return {}
    return {"trusted_proxy": config.trusted_proxy,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}


def _serve_process(config: Config, url: str, sock: socket.socket, limit: int) -> None:
    """One waitress server on ``sock`` until SIGTERM/SIGINT, then drain."""
    worker = Worker(config, url)
    app: Any = worker.app
    server: Any = waitress.server.create_server(
        app, sockets=[sock], threads=config.threads, ident="karmchari",
        connection_limit=limit, channel_timeout=config.idle_timeout,
        cleanup_interval=max(1, min(30, config.idle_timeout // 2)),
        # Waitress refuses a body of its limit or more; the app names the limit.
        max_request_body_size=config.max_body_bytes + 1,
        max_request_header_size=config.max_header_bytes, asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
        # Reading on while a request runs is how waitress sees its client go away
        # (environ "waitress.client_disconnected"): a long-poll then frees its slot.
        channel_request_lookahead=1, **_proxy_settings(config))
    waitress_adapter.install(server, worker)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.drain()
        waitress_adapter.wake(server)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    waitress_adapter.run(server, worker, config.shutdown_timeout, config.header_timeout)
    access_log.flush()
    log.info("stopped")


def _serve_forked(config: Config, url: str, sock: socket.socket, limit: int) -> None:
    """N waitress processes accept on one shared listening socket (Linux)."""
    if not hasattr(os, "fork"):
        raise StartupError("--workers > 1 needs fork (Linux); use one process per port")
    children = []
    parent = os.getpid()
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            try:
                # Killed with the parent, when that is killed without forwarding a
                # drain: no orphan keeps the port.
                die_with_parent(parent, signal.SIGKILL)
                _serve_process(config, url, sock, limit)
            finally:
                access_log.flush()  # os._exit runs no atexit handler
                os._exit(0)
        children.append(pid)
    sock.close()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
    sys.stdout.flush()
