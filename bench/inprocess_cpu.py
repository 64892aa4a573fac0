"""CPU per request without HTTP: the WSGI app called in-process through
``falcon.testing`` against a throwaway ``redis-server``, so the figures show
the Python request path and Redis alone (no server, no sockets to the client).

    PYTHONPATH=$PWD:$PWD/client python -m bench.inprocess_cpu [--rounds 3]

For each endpoint: Python CPU (``time.process_time``) per request, Redis CPU
per request from ``/proc/<pid>/stat`` (utime + stime, network included), and
the scripts' and commands' own time from ``INFO commandstats``; medians of
the rounds."""

from __future__ import annotations

import argparse
import logging
import os
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

TICK = os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


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
    redis_before = redis_cpu_seconds(server.process.pid)
    started = time.process_time()
    for _ in range(count):
        call()
    python = (time.process_time() - started) / count * 1e6
    redis_total = (redis_cpu_seconds(server.process.pid) - redis_before) / count * 1e6
    inside = commands_usec(client) / count
    return python, redis_total, inside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--batches", type=int, default=400)
    options = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the access line's cost is not what is measured here
    server = RedisProcess().start()
    try:
        config = Config(redis_url=server.url, key_prefix="cpu", threads=4)
        store = JobStore(connect(server.url), keys=KeySchema("cpu"))
        app = testing.TestClient(create_app(config, store))
        job_id = store.register("teams")[0].id
        batch = {"heartbeats": [{"id": store.register("teams", heartbeat_timeout=60)[0].id,
                                 "progress": 50, "worker": "host-1", "message": "working",
                                 "observed_state": "start"} for _ in range(100)]}
        calls = {
            "GET /jobState": (lambda: app.simulate_get("/jobState", params={"id": job_id}),
                              options.requests),
            "POST /registerJob": (lambda: app.simulate_post(
                "/registerJob", body="type=teams",
                headers={"Content-Type": "application/x-www-form-urlencoded"}),
                options.requests),
            "POST /v1/heartbeats (100 jobs)": (
                lambda: app.simulate_post("/v1/heartbeats", json=batch), options.batches),
        }
        for name, (call, _) in calls.items():
            reply = call()
            assert reply.status_code < 300, (name, reply.status_code, reply.text)
        admin = server.client()
        print(f"{'endpoint':32} {'python µs':>10} {'redis µs':>10} {'in cmds µs':>11}")
        for name, (call, count) in calls.items():
            rounds = [measure(name, call, count, server, admin) for _ in range(options.rounds)]
            python, redis_total, inside = (statistics.median(r[i] for r in rounds)
                                           for i in range(3))
            print(f"{name:32} {python:10.1f} {redis_total:10.1f} {inside:11.1f}")
            sys.stdout.flush()
    finally:
        server.close()


if __name__ == "__main__":
    main()
