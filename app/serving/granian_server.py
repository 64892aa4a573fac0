"""``karmchari serve --server granian`` (``pip install 'karmchari[fast]'``, Linux
and macOS): the same application under Granian's ASGI interface, through the
front in granian_front.py, which reads each body before a request thread runs
the WSGI application.

Granian starts its worker processes itself and imports the application in each
(``worker_app``); the settings and the store's URL reach them in one environment
variable. On SIGTERM/SIGINT the main process first sends SIGUSR1 to the workers,
so each begins its drain (long-polls answer, ``Connection: close``) while Granian
stops accepting and finishes the requests in flight.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import signal
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import TYPE_CHECKING, Any

from app.access_log import LOG_FORMAT
from app.config import Config
from app.embedded import die_with_parent
from app.serving.common import StartupError, Worker, limit_malloc_arenas, listen_socket

if TYPE_CHECKING:  # imported on use: it is the workers' module, not the main process's
    from app.serving.granian_front import GranianFront

log = logging.getLogger("karmchari")
# 2.7.9 fixes the blocking-thread pool that let one long-lived response starve
# ordinary requests (granian issue #873); a long-poll is such a response.
MIN_GRANIAN = (2, 7, 9)
STATE_VARIABLE = "KARMCHARI_SERVING_STATE"
# Not on Windows, where check_available refuses Granian.
DRAIN_SIGNAL: int = getattr(signal, "SIGUSR1", 0)


def check_available() -> None:
    try:
        found = version("granian")
    except PackageNotFoundError:
        raise StartupError("--server granian needs Granian: in a clone of the repository, "
                           "pip install ./client '.[fast]'") from None
    numbers = tuple(int(part) for part in found.split(".")[:3] if part.isdigit())
    if numbers < MIN_GRANIAN:
        raise StartupError(f"granian {found} is too old: Karmchari needs granian "
                           f"{'.'.join(map(str, MIN_GRANIAN))} or newer")
    if not DRAIN_SIGNAL:
        raise StartupError("--server granian is not supported on Windows; use waitress")


def _log_config(level: str) -> dict[str, Any]:
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": LOG_FORMAT}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                                 "stream": "ext://sys.stderr"}},
        "filters": {"threads": {"()": "app.serving.granian_server.ThreadsWarningFilter"}},
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {"_granian": {"handlers": [], "propagate": True, "filters": ["threads"]},
                    "granian.access": {"handlers": [], "propagate": True}},
    }


class ThreadsWarningFilter(logging.Filter):
    """Drops Granian's warning that more blocking threads than twice the cores is
    "quite high": Karmchari's threads mostly wait (on Redis, in long-polls), so
    --threads 16 is right on any machine, and the `backpressure` it suggests is
    not a Karmchari option."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "seems quite high compared to the number of CPU cores" not in record.getMessage()


def _forward_drain() -> None:
    """Runs in Granian's main process once its signal handlers are set: ours run
    first and tell the workers to begin their drain."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
            for child in multiprocessing.active_children():
                if not child.pid:
                    continue
                try:
                    os.kill(child.pid, DRAIN_SIGNAL)
                except ProcessLookupError:
                    pass
            if callable(previous):
                previous(signum, frame)

        signal.signal(signum, handler)


def run(config: Config, url: str, shown_store: str, open_files: int) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    listen_socket(config.host, config.port).close()  # a clear message if taken
    os.environ[STATE_VARIABLE] = json.dumps({"config": dataclasses.asdict(config),
                                             "url": url, "main_pid": os.getpid()})
    log.info("karmchari listening on http://%s:%d (granian, %d threads, %d process%s), "
             "store %s", f"[{config.host}]" if ":" in config.host else config.host,
             config.port, config.threads, config.workers, "es" if config.workers > 1 else "",
             shown_store)
    # Hyper's header-read timer is a total deadline from the head's first byte (not
    # reset by each line); it also runs while a keep-alive connection waits for its
    # next request: it is the idle timeout too.
    header_timeout = min(config.header_timeout, config.idle_timeout)
    server = Granian(
        "app.serving.granian_server:worker_app", factory=True, interface=Interfaces.ASGI,
        address=config.host.strip("[]"), port=config.port, workers=config.workers,
        # The request threads are the front's pool; Granian's loop reads the bodies.
        blocking_threads=1, runtime_threads=1,
        # Granian's backpressure is the connections a worker serves at once, idle
        # ones included: past it, new clients wait. The connection limit, then.
        backlog=1024, backpressure=config.connection_limit,
        http=HTTPModes.http1, websockets=False,
        # The read buffer holds the request head: its size is the head's limit.
        http1_settings=HTTP1Settings(header_read_timeout=header_timeout * 1000,
                                     max_buffer_size=max(8192, config.max_header_bytes)),
        log_level=LogLevels(config.log_level if config.log_level != "warning" else "warn"),
        log_dictconfig=_log_config(config.log_level), log_access=False,
        workers_kill_timeout=max(1, math.ceil(config.shutdown_timeout)))
    server.on_startup(_forward_drain)
    server.serve()
    log.info("stopped")


def worker_app() -> GranianFront:
    """Granian's factory, called in each worker process."""
    from app.serving.granian_front import GranianFront

    state = json.loads(os.environ[STATE_VARIABLE])
    limit_malloc_arenas()  # a spawned worker is a new process
    values: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                              for name, value in state["config"].items()}
    worker = Worker(Config(**values), state["url"])
    if DRAIN_SIGNAL:  # POSIX
        # The worker's main thread runs Granian's event loop, which wakes for
        # signals: the handler runs at once.
        signal.signal(DRAIN_SIGNAL, lambda signum, frame: worker.drain())
        # A main process killed by SIGKILL cannot stop its workers: they would
        # keep the port, serving without their (embedded) store. SIGKILL, as a
        # worker still starting up could miss a SIGTERM.
        die_with_parent(int(state["main_pid"]), signal.SIGKILL)
    return GranianFront(worker)
