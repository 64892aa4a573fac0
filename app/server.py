"""``karmchari serve``: the store, start-up checks, waitress, graceful shutdown."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import waitress.server

from app.app import build_store, create_app
from app.auth import TokenConfigError, TokenRegistry
from app.config import Config
from app.embedded import EmbeddedRedis, EmbeddedServerError
from app.errors import StoreUnavailable
from app.store import JobStore
from app.store.events import ChangeNotifier

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


def check_store(store: JobStore, wait_seconds: float = 30.0) -> None:
    """Wait for Redis, refuse one that is too old, warn about eviction."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            info = store.server_info()
            break
        except StoreUnavailable as error:
            if time.monotonic() > deadline:
                raise StartupError(f"Redis is not reachable: {error}") from None
            log.warning("waiting for Redis: %s", error)
            time.sleep(1)
    check_version(info["flavor"], info["version"])
    if info["maxmemory_policy"] not in (None, "noeviction"):
        log.warning("Redis maxmemory-policy is %s, not noeviction: Redis may evict jobs "
                    "under memory pressure", info["maxmemory_policy"])
    store.scripts.load_all()


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


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(1024)
    return sock


def _proxy_settings(config: Config) -> dict:
    if not config.trusted_proxy:
        return {}
    return {"trusted_proxy": config.trusted_proxy,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}


def _serve_process(config: Config, url: str, sock: socket.socket) -> None:
    """One waitress server on ``sock`` until SIGTERM/SIGINT, then drain."""
    store = build_store(config, url)
    notifier = ChangeNotifier(store, config.waiter_limit)
    app = create_app(config, store, notifier=notifier)
    stopping = threading.Event()
    start_sweeper(store, config.sweep_interval, stopping, config.job_types)
    server = waitress.server.create_server(
        app, sockets=[sock], threads=config.threads, ident="karmchari",
        connection_limit=config.connection_limit, channel_timeout=config.channel_timeout,
        max_request_body_size=config.max_body_bytes,
        max_request_header_size=config.max_header_bytes,
        clear_untrusted_proxy_headers=True, **_proxy_settings(config))

    def on_signal(signum, frame) -> None:
        if not stopping.is_set():
            log.info("shutting down: finishing requests in flight")
            stopping.set()
            notifier.stop()  # long-polls answer now instead of holding the shutdown
            server.accepting = False
            server.del_channel()  # stop accepting; open connections carry on

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    grace_deadline = None
    dispatcher = server.task_dispatcher
    while True:
        server.asyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
        if stopping.is_set():
            grace_deadline = grace_deadline or time.monotonic() + 30
            idle = dispatcher.active_count == 0 and not dispatcher.queue
            if idle or time.monotonic() > grace_deadline:
                # One more turn of the loop flushes answers already produced.
                server.asyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=2)
                break
    server.close()
    log.info("stopped")


def serve(config: Config) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tokens = TokenRegistry.load(config.tokens, config.tokens_file)
    except (TokenConfigError, OSError) as error:
        raise StartupError(f"cannot load tokens: {error}") from None
    check_exposure(config, tokens)
    embedded = None
    url = config.store_url
    if not url:
        try:
            embedded = EmbeddedRedis(Path(config.data_dir))
            url = embedded.start()
        except (EmbeddedServerError, OSError) as error:
            raise StartupError(f"cannot start the embedded store: {error}") from None
    try:
        check_store(build_store(config, url))
        sock = _listen_socket(config.host, config.port)
        host, port = sock.getsockname()[:2]
        log.info("karmchari listening on http://%s:%d (%d threads, %d process%s), store %s",
                 f"[{host}]" if ":" in host else host, port, config.threads, config.workers,
                 "es" if config.workers > 1 else "", shown_store(config, url))
        if config.workers > 1:
            _serve_forked(config, url, sock)
        else:
            _serve_process(config, url, sock)
    finally:
        if embedded:
            embedded.stop()
    return 0


def _serve_forked(config: Config, url: str, sock: socket.socket) -> None:
    """N waitress processes accept on one shared listening socket (Linux)."""
    if not hasattr(os, "fork"):
        raise StartupError("--workers > 1 needs fork (Linux); use one process per port")
    children = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:
            try:
                _serve_process(config, url, sock)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum, frame) -> None:
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
