"""``python -m bench``: the whole benchmark in one command (docs/benchmarks.md).

Starts a throwaway Redis on a unix socket and ``karmchari serve`` on
127.0.0.1, preloads jobs, drives every endpoint with wrk, checks how many
Redis commands each request sends, measures ``--workers`` scaling, runs the
listing and signal-latency benchmarks, then writes bench/results/*.json, the
plot and the generated part of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from importlib import metadata
from pathlib import Path

from bench import RESULTS, ROOT
from bench.compare import GRANIAN_2_TARGETS, WAITRESS_1_TARGETS, Contender, compare
from bench.http_load import ENDPOINTS, JobSets, measure, require_wrk, wrk_version
from bench.roundtrips import count_round_trips, shown
from bench.servers import BenchError, BenchRedis, BenchService, GoService

# Benchmarks of their own, run as ``python -m bench.<name>``; each writes
# bench/results/<name>.json.
COMPANIONS = ("listing", "signal_latency")
SCALING_ENDPOINT = "old_get_job_state"
# With --go-binary, the benchmark's Redis also listens on this loopback address,
# port 6379, which the Go service reaches as redis:6379 (an /etc/hosts line).
GO_REDIS_HOST = "127.0.0.2"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5,
                        help="measured rounds, each against a fresh service (default 5)")
    parser.add_argument("--seconds", type=float, default=3, help="length of one wrk run")
    parser.add_argument("--warmup", type=float, default=1,
                        help="warm-up per endpoint and round, seconds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--threads", type=int, default=16, help="waitress threads per process")
    parser.add_argument("--quick", action="store_true",
                        help="one short round, no companions: to try the suite, not to publish")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["endpoints", "roundtrips", "workers", "profile", "compare",
                                 *COMPANIONS],
                        help="leave a part out (repeatable)")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the service with py-spy under load (needs ptrace "
                             "rights: root, or kernel.yama.ptrace_scope=0)")
    parser.add_argument("--go-binary", type=Path, metavar="PATH",
                        help="the Go service Karmchari replaces, built from its source "
                             "(docs/benchmarks.md): measured beside Karmchari on the same Redis; "
                             "needs the line '127.0.0.2 redis' in /etc/hosts")
    parser.add_argument("--no-docs", action="store_true",
                        help="write bench/results only, not docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 2, 1
        args.skip += list(COMPANIONS)
        args.no_docs = True
    return args


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True)
    return run.stdout.strip() or "unknown"


def package_versions() -> dict[str, str]:
    """The libraries on the hot path, as the service (same interpreter) loads them."""
    import redis.utils

    versions = {}
    for name in ("falcon", "waitress", "redis", "hiredis", "jsonschema-rs", "prometheus-client"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["redis-py uses hiredis"] = str(redis.utils.HIREDIS_AVAILABLE)
    return versions


def machine(redis_version: str) -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": redis_version,
        "wrk": wrk_version(),
        "packages": package_versions(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_before": os.getloadavg()[0],
    }


def run_companion(name: str, log) -> dict | None:
    """Another benchmark of this package as a subprocess; None when it is not
    there. Its results are read back from bench/results/<name>.json."""
    if not (ROOT / "bench" / f"{name}.py").exists():
        log(f"{name}: bench/{name}.py is not there; skipped")
        return None
    log(f"{name}: python -m bench.{name}")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
    if run.returncode != 0:
        raise BenchError(f"python -m bench.{name} failed with exit status {run.returncode}")
    log(f"{name}: done in {time.monotonic() - started:.0f} s")
    return json.loads((RESULTS / f"{name}.json").read_text())


def http_benchmarks(args: argparse.Namespace, redis_server: BenchRedis, jobs: JobSets,
                    work: Path, log) -> dict:
    """Round trips, endpoints, the profile and --workers scaling, each part
    against its own fresh ``karmchari serve``."""

    def service(workers: int = 1) -> BenchService:
        return BenchService(redis_server.url, threads=args.threads, workers=workers,
                            log_dir=work)

    client = redis_server.client()
    results: dict = {}
    timing = dict(runs=args.runs, seconds=args.seconds, warmup=args.warmup,
                  connections=args.connections, log=log)
    log(f"karmchari serve: {args.threads} threads per process")
    if "roundtrips" not in args.skip:
        with service() as running:
            results["round_trips"] = count_round_trips(running, redis_server)
        log("redis commands per request:\n" + shown(results["round_trips"]))
    if "endpoints" not in args.skip:
        log(f"endpoints: {args.runs} rounds of {args.seconds:g} s per endpoint")
        results["endpoints"] = measure(service, ENDPOINTS, jobs, client, **timing)
    if args.profile and "profile" not in args.skip:
        from bench.profile import profile_endpoints
        log("profile: py-spy, 6 s per endpoint")
        with service() as running:
            results["profile"] = profile_endpoints(running, jobs, connections=args.connections,
                                                   log=log)
    if "compare" not in args.skip:
        results["comparison"] = comparison(args, redis_server, jobs, work, timing)
    if "workers" not in args.skip:
        results["workers"] = {}
        scaled = tuple(e for e in ENDPOINTS if e.key == SCALING_ENDPOINT)
        for workers in (1, 2):
            log(f"workers: {workers} process(es)")
            results["workers"][str(workers)] = measure(partial(service, workers), scaled, jobs,
                                                       client, **timing)
    client.close()
    return results


def comparison(args: argparse.Namespace, redis_server: BenchRedis, jobs: JobSets, work: Path,
               timing: dict) -> dict:
    """The old API against the Go service (with --go-binary), Karmchari under
    Granian with two processes and under waitress with its defaults. With Go
    in the run, every server reaches Redis over TCP, as Go does."""
    url = redis_server.tcp_url if args.go_binary else redis_server.url

    def karmchari(server: str, workers: int):
        return partial(BenchService, url, threads=args.threads, workers=workers,
                       log_dir=work, server=server)

    contenders = []
    if args.go_binary:
        probe = jobs.file("go_read").read_text().split()[0]
        go = GoService(args.go_binary, GO_REDIS_HOST, probe, log_dir=work)
        contenders.append(Contender("go", "Go service", lambda: go, is_go=True))
    contenders += [
        Contender("granian_2", "Karmchari, granian, 2 processes", karmchari("granian", 2),
                  target_go_ratio=GRANIAN_2_TARGETS),
        Contender("waitress_1", "Karmchari, waitress, 1 process", karmchari("waitress", 1),
                  target_go_ratio=WAITRESS_1_TARGETS),
    ]
    timing["log"](f"comparison: {', '.join(c.label for c in contenders)}; Redis at {url}")
    results = compare(contenders, jobs, redis_server.client(), **timing)
    results["redis_url"] = "TCP 127.0.0.2:6379" if args.go_binary else "unix socket"
    return results


class LoadSampler:
    """The 1-minute load average every 5 s while the HTTP benchmarks run: the
    benchmark's own processes add about 2-3 on a 2-core machine, anything
    above that is other work sharing the machine."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict:
        values = sorted(self.samples) or [os.getloadavg()[0]]
        return {"median": statistics.median(values), "min": values[0], "max": values[-1],
                "samples": len(self.samples)}

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    if os.getloadavg()[0] > 0.5:
        log(f"note: load average is {os.getloadavg()[0]:.2f}; figures from a busy machine "
            "drift (the ratios to /healthz less than the absolute numbers)")
    settings = {"runs": args.runs, "seconds": args.seconds, "warmup": args.warmup,
                "connections": args.connections, "threads": args.threads, "wrk_threads": 1,
                "go_binary": bool(args.go_binary)}
    results: dict = {"settings": settings}
    work = Path(tempfile.mkdtemp(prefix="karmchari-bench-jobs-"))
    # A quick run is a try-out: its figures stay out of bench/results.
    output = work if args.quick else RESULTS
    output.mkdir(parents=True, exist_ok=True)
    try:
        with BenchRedis(GO_REDIS_HOST if args.go_binary else None) as redis_server:
            results["machine"] = machine(redis_server.version())
            log(f"redis: {redis_server.url}; preloading jobs")
            jobs = JobSets.preload(redis_server.url, work, toggle_slices=args.runs + 1)
            with LoadSampler() as load:
                results.update(http_benchmarks(args, redis_server, jobs, work, log))
            results["machine"]["load_average_during"] = load.summary()
        results["machine"]["load_average_after"] = os.getloadavg()[0]
        results["duration_s"] = round(time.monotonic() - started)
        (output / "endpoints.json").write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {output / 'endpoints.json'}")
        for name in COMPANIONS:
            if name not in args.skip:
                run_companion(name, log)
        results["total_duration_s"] = round(time.monotonic() - started)
        (output / "endpoints.json").write_text(json.dumps(results, indent=2) + "\n")
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        if not args.quick:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_docs:
        from bench.report import write_report
        for path in write_report():
            log(f"wrote {path}")
    log(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
