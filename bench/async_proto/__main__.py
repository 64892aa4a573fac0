"""``python -m bench.async_proto``: the async prototype side by side with the
product's WSGI path on Granian and with the Go service (docs/benchmarks.md,
"Async prototype"). Writes bench/results/async_proto.json and prints the
table of that section.

The same rounds as the comparison of ``python -m bench`` (bench/compare.py):
each round starts every server afresh, one after the other, and measures
``/healthz``, ``GET /jobState`` and ``POST /registerJob`` with wrk, and the CPU
time of the server's processes and of Redis per request. With the Go service
in the run every server reaches Redis over TCP at 127.0.0.2:6379, as Go does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from bench import RESULTS, ROOT
from bench.__main__ import GO_REDIS_HOST, machine
from bench.compare import Contender, compare
from bench.http_load import JobSets, require_wrk
from bench.servers import BenchError, BenchRedis, BenchService, GoService

DEFAULT_GO_BINARY = Path("/work/go/karmchari-go")
OUTPUT = RESULTS / "async_proto.json"


class ProtoService(BenchService):
    """A prototype application of bench/async_proto under Granian: ``asgi``
    (falcon.asgi), ``raw`` (bare ASGI) or ``wsgi`` (the threaded control)."""

    ready_path = "/healthz"

    def __init__(self, redis_url: str, *, app: str, workers: int, log_dir: Path,
                 loop: str = "asyncio", client: str = "hiredis", threads: int = 16) -> None:
        super().__init__(redis_url, workers=workers, log_dir=log_dir, server="granian")
        interface = "wsgi" if app == "wsgi" else "asgi"
        self.args = [sys.executable, "-m", "granian", "--interface", interface, "--factory",
                     "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
                     "--runtime-threads", "1", "--http", "1", "--no-ws", "--backlog", "1024",
                     *(["--loop", loop] if interface == "asgi" else
                       ["--blocking-threads", str(threads)]),
                     f"bench.async_proto.{app}:create_app"]
        path = [str(ROOT), str(ROOT / "client"), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {"KARMCHARI_PROTO_REDIS_URL": redis_url, "PYTHONPATH": os.pathsep.join(path)}
        if client != "hiredis":
            self.env["KARMCHARI_PROTO_CLIENT"] = client


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.async_proto",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3, help="length of one wrk run")
    parser.add_argument("--warmup", type=float, default=1, help="warm-up per endpoint, seconds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--go-binary", type=Path,
                        default=DEFAULT_GO_BINARY if DEFAULT_GO_BINARY.exists() else None,
                        help=f"the Go service (default {DEFAULT_GO_BINARY} when it exists); "
                             "needs the line '127.0.0.2 redis' in /etc/hosts")
    parser.add_argument("--no-go", action="store_true", help="leave the Go service out")
    parser.add_argument("--extras", action="store_true",
                        help="also the WSGI control (the prototype's features, threaded), "
                             "the prototype without Falcon, and on redis.asyncio")
    parser.add_argument("--uvloop", action="store_true",
                        help="also the ASGI prototypes on uvloop (uvloop must be importable: "
                             "pip install --target DIR uvloop, DIR in PYTHONPATH)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY",
                        help="measure only these contenders (repeatable), e.g. asgi_1")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.no_go:
        args.go_binary = None
    return args


def contenders(args: argparse.Namespace, url: str, jobs: JobSets, work: Path,
               loads: dict[str, list[float]]) -> list[Contender]:
    def product(workers: int):
        return partial(BenchService, url, threads=16, workers=workers, log_dir=work,
                       server="granian")

    def proto(app: str, workers: int, **options):
        return partial(ProtoService, url, app=app, workers=workers, log_dir=work, **options)

    found: list[Contender] = []
    if args.go_binary:
        go_ids = jobs.file("go_read")
        assert go_ids is not None
        probe = go_ids.read_text().split()[0]
        go = GoService(args.go_binary, GO_REDIS_HOST, probe, log_dir=work)
        found.append(Contender("go", "Go service", lambda: go, is_go=True))
    found += [
        Contender("wsgi_1", "product, WSGI on Granian, 1 process", product(1)),
        Contender("wsgi_2", "product, WSGI on Granian, 2 processes", product(2)),
        Contender("asgi_1", "ASGI prototype, 1 process", proto("asgi", 1)),
        Contender("asgi_2", "ASGI prototype, 2 processes", proto("asgi", 2)),
    ]
    if args.extras:
        found += [
            Contender("control_1", "WSGI control, 1 process", proto("wsgi", 1)),
            Contender("control_2", "WSGI control, 2 processes", proto("wsgi", 2)),
            Contender("raw_1", "bare ASGI prototype, 1 process", proto("raw", 1)),
            Contender("raw_2", "bare ASGI prototype, 2 processes", proto("raw", 2)),
            Contender("asgi_redis_py_1", "ASGI prototype on redis.asyncio, 1 process",
                      proto("asgi", 1, client="redis-py")),
        ]
    if args.uvloop:
        found += [Contender(f"{app}_uvloop_{n}", f"{label}, uvloop, {n} process{'es' * (n > 1)}",
                            proto(app, n, loop="uvloop"))
                  for app, label in (("asgi", "ASGI prototype"), ("raw", "bare ASGI prototype"))
                  if app == "asgi" or args.extras for n in (1, 2)]
    if args.only:
        found = [c for c in found if c.key in args.only or c.is_go]

    def with_load(contender: Contender) -> Contender:
        # The 1-minute load average as each server starts, for the record.
        def start():
            loads.setdefault(contender.key, []).append(os.getloadavg()[0])
            return contender.start()
        return Contender(contender.key, contender.label, start, contender.is_go)

    return [with_load(c) for c in found]


def table(comparison: dict, loads: dict[str, list[float]]) -> str:
    """The Markdown table of docs/benchmarks.md "Async prototype"."""
    lines = ["| server | GET /jobState req/s | × Go | CPU µs/req (service + Redis) "
             "| POST /registerJob req/s | × Go | CPU µs/req (service + Redis) | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for key, server in comparison["servers"].items():
        cells = [server["label"]]
        for endpoint in ("old_get_job_state", "old_register_job"):
            entry = server["endpoints"][endpoint]
            ratio = entry.get("go_ratio")
            cells += [f"{entry['rps']:,.0f}",
                      "—" if ratio is None else f"{ratio:.2f}×",
                      f"{entry['service_cpu_us']:.0f} + {entry['redis_cpu_us']:.0f}"]
        shown = loads.get(key, [])
        cells.append(" / ".join(f"{x:.1f}" for x in shown))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()

    def log(message: str) -> None:
        print(f"[load {os.getloadavg()[0]:.2f}] {message}", flush=True)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="karmchari-async-proto-"))
    loads: dict[str, list[float]] = {}
    try:
        with BenchRedis(GO_REDIS_HOST if args.go_binary else None) as redis_server:
            url = redis_server.tcp_url if args.go_binary else redis_server.url
            results: dict = {"machine": machine(redis_server.version()),
                             "settings": {"runs": args.runs, "seconds": args.seconds,
                                          "warmup": args.warmup,
                                          "connections": args.connections, "wrk_threads": 1,
                                          "redis": "TCP 127.0.0.2:6379" if args.go_binary
                                          else "unix socket"}}
            log(f"redis: {url}; preloading jobs")
            jobs = JobSets.preload(redis_server.url, work, toggle=1, toggle_slices=1,
                                   heartbeat=1)
            racers = contenders(args, url, jobs, work, loads)
            log(f"{args.runs} rounds of: {', '.join(c.label for c in racers)}")
            results["comparison"] = compare(racers, jobs, redis_server.client(),
                                            runs=args.runs, seconds=args.seconds,
                                            warmup=args.warmup, connections=args.connections,
                                            log=log)
    except BenchError as error:
        print(f"bench.async_proto: {error}", file=sys.stderr)
        return 1
    results["load_average_at_start"] = loads
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    results["duration_s"] = round(time.monotonic() - started)
    results["table"] = table(results["comparison"], loads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    log(f"wrote {args.output} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
