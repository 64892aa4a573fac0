"""CPU per request of the application alone, in this process: the WSGI app
called directly (no HTTP server) for ``GET /jobState`` against a real Redis
on a unix socket, logging configured as ``karmchari serve`` does it and
standard error sent to a file. ``time.process_time`` counts every thread of
the process, so a background writer's work is included.

``python -m bench.request_cpu [--requests N] [--rounds R] [--access-log MODE]
[--log-level LEVEL] [--threads N]``
prints the least and the median µs of CPU per request over the rounds.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import threading
import time

from falcon import testing

from app.app import build_store, create_app
from app.config import Config
from app.serving import LOG_FORMAT
from bench.servers import BenchRedis


def _redirect_stderr() -> None:
    """Standard error to a temporary file, as under a service manager: the access
    lines are written as they would be, and not to this terminal."""
    target = tempfile.TemporaryFile()
    os.dup2(target.fileno(), 2)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)


def measure(app, environ: dict, requests: int, threads: int = 1) -> float:
    """µs of CPU per request over ``requests`` calls of the WSGI app, made by
    ``threads`` threads at once (as a server's request threads)."""
    def start_response(status, headers, exc_info=None):
        return None

    def run(count: int) -> None:
        for _ in range(count):
            for _chunk in app(dict(environ), start_response):
                pass

    workers = [threading.Thread(target=run, args=(requests // threads,))
               for _ in range(threads)]
    begin = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.process_time() - begin) * 1e6 / (requests // threads * threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--access-log", default=None,
                        help="the --access-log setting (where the code has it)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--threads", type=int, default=1, help="request threads at once")
    args = parser.parse_args(argv)
    out = sys.stdout
    redis = BenchRedis().start()
    _redirect_stderr()
    try:
        logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
        settings = {"redis_url": redis.url, "key_prefix": "cpu"}
        if args.access_log:
            settings["access_log"] = args.access_log
        config = Config(**settings)
        store = build_store(config, redis.url)
        store.scripts.load_all()
        app = create_app(config, store)
        client = testing.TestClient(app)
        answer = client.simulate_post("/registerJob", body="type=teams",
                                    content_type="application/x-www-form-urlencoded")
        job_id = answer.text.rpartition(" ")[2]
        environ = testing.create_environ("/jobState", query_string=f"id={job_id}",
                                         remote_addr="127.0.0.1")
        assert client.simulate_get("/jobState", params={"id": job_id}).status_code == 200
        measure(app, environ, args.requests // 5, args.threads)  # warm-up
        results = [measure(app, environ, args.requests, args.threads)
                   for _ in range(args.rounds)]
        # The least is the one least disturbed by other work on the machine.
        threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
        print(f"GET /jobState, {threads}: least {min(results):.1f}, median "
              f"{statistics.median(results):.1f} µs CPU per request ({args.rounds} rounds of "
              f"{args.requests})", file=out)
    finally:
        redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
