"""What ``--server auto`` and ``--workers 0`` (the defaults) become on this host.

Measured on 2 cores (docs/benchmarks.md): Granian answers a read for about a
fifth less CPU than waitress, and one process per CPU is what lets the
service use the machine at all, since a Python process runs on one core at a
time. So a host that has Granian (``karmchari[fast]``) and can run it gets it,
one process per CPU; waitress stays the server of Windows and of an install
without the extra, and the documented choice everywhere (``--server waitress``).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from app.config import Config

MAX_AUTO_WORKERS = 8  # beyond this, size it yourself: each process holds its own threads


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (cgroups, taskset)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers() -> int:
    """One process per usable CPU (at most MAX_AUTO_WORKERS) on Linux, where the
    processes share one listening socket; one elsewhere."""
    if not sys.platform.startswith("linux"):
        return 1
    return max(1, min(usable_cpus(), MAX_AUTO_WORKERS))


def auto_server() -> str:
    from app.serving import granian_server
    from app.serving.common import StartupError

    try:
        granian_server.check_available()
    except StartupError:
        return "waitress"
    return "granian"


def resolve(config: Config) -> Config:
    """``config`` with the server and the process count it will really run."""
    server = auto_server() if config.server == "auto" else config.server
    workers = config.workers or auto_workers()
    if server == config.server and workers == config.workers:
        return config
    return dataclasses.replace(config, server=server, workers=workers)
