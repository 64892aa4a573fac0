"""CPU per request without HTTP: the WSGI app called in-process (an environ
made once by ``falcon.testing.create_environ``, then the app called with it)
against a throwaway ``redis-server``, so the figures show the Python request
path and Redis alone (no HTTP server, no test client).

    PYTHONPATH=$PWD:$PWD/client python -m bench.inprocess_cpu [--rounds 5]

For each endpoint: Python CPU (``time.process_time``) per request, Redis CPU
per request (``INFO cpu``: its user and system time, network included), and
the time inside the top-level commands (``INFO commandstats``, wall time on
Redis's thread); the median and the lowest of the rounds (on a busy machine
the lowest is the better estimate)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable

from falcon import testing

from app.app import create_app
from app.config import Config
from app.store import JobStore, connect
from app.store.keys import KeySchema
from tests.servers import RedisProcess


def redis_cpu_seconds(client) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def wsgi_call(app, method: str, path: str, *, query: str = "", body: bytes = b"",
              content_type: str | None = None) -> Callable[[], int]:
    """A call of the app as a WSGI server makes it; answers the status code."""
    headers = {"Content-Type": content_type} if content_type else {}
    template = testing.create_environ(path=path, query_string=query, method=method,
                                      body=body, headers=headers)
    status: list[str] = []

    def start_response(line, headers, exc_info=None):
        status.append(line)

    def call() -> int:
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(body)
        for _ in app(environ, start_response):
            pass
        return int(status.pop()[:3])

    return call


def commands_usec(client) -> float:
    """The top-level commands' time (a script's inner commands are inside
    its EVALSHA's)."""
    stats = client.info("commandstats")
    return sum(v["usec"] for k, v in stats.items()
               if k in ("cmdstat_evalsha", "cmdstat_hmget", "cmdstat_eval"))


def measure(name: str, call: Callable[[], object], count: int, server: RedisProcess,
            client) -> tuple[float, float, float]:
    for _ in range(min(200, count)):  # warm: connections, caches, scripts
        call()
    client.config_resetstat()
    redis_before = redis_cpu_seconds(client)
    started = time.process_time()
    for _ in range(count):
        call()
    python = (time.process_time() - started) / count * 1e6
    redis_total = (redis_cpu_seconds(client) - redis_before) / count * 1e6
    inside = commands_usec(client) / count
    return python, redis_total, inside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=400)
    options = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the access line's cost is not what is measured here
    server = RedisProcess().start()
    try:
        config = Config(redis_url=server.url, key_prefix="cpu", threads=4)
        store = JobStore(connect(server.url), keys=KeySchema("cpu"))
        app = create_app(config, store)
        job_id = store.register("teams")[0].id
        batch = {"heartbeats": [{"id": store.register("teams", heartbeat_timeout=60)[0].id,
                                 "progress": 50, "worker": "host-1", "message": "working",
                                 "observed_state": "start"} for _ in range(100)]}
        calls = {
            "GET /jobState": (wsgi_call(app, "GET", "/jobState", query=f"id={job_id}"),
                              options.requests),
            "POST /registerJob": (wsgi_call(
                app, "POST", "/registerJob", body=b"type=teams",
                content_type="application/x-www-form-urlencoded"), options.requests),
            "POST /v1/heartbeats (100 jobs)": (wsgi_call(
                app, "POST", "/v1/heartbeats", body=json.dumps(batch).encode(),
                content_type="application/json"), options.batches),
        }
        for name, (call, _) in calls.items():
            status = call()
            assert status < 300, (name, status)
        admin = server.client()
        print(f"{'endpoint':32} {'python µs':>16} {'redis µs':>16} {'in cmds µs':>16}")
        print(f"{'':32} {'median   lowest':>16} {'median   lowest':>16} {'median   lowest':>16}")
        for name, (call, count) in calls.items():
            rounds = [measure(name, call, count, server, admin) for _ in range(options.rounds)]
            figures = " ".join(f"{statistics.median(r[i] for r in rounds):8.1f}"
                               f"{min(r[i] for r in rounds):8.1f}" for i in range(3))
            print(f"{name:32} {figures}")
            sys.stdout.flush()
    finally:
        server.close()


if __name__ == "__main__":
    main()
