"""Listing cost against the number of jobs stored, and Redis memory per job.

``python -m bench.listing`` starts its own Redis, then for each size (1,000 to
1,000,000 jobs by default) tops the store up to that many jobs, starts
``karmchari serve`` on it and times ``GET /v1/jobs`` requests one after the
other on one keep-alive connection (latency without queueing), in rounds
where the queries take turns; the figures are medians over the rounds:

- ``newest``: ``?limit=50``, the first page;
- ``cursor``: ``?limit=50&cursor=…``, the 11th page;
- ``label``: ``?limit=50&label=team:t3``, one job in eight has that label;
- ``sparse``: ``?limit=50&type=export&label=team:t3``, one job in 24: the
  service reads the smaller of the two indexes and checks the other condition
  on the jobs, at most 1,000 of them per request (a short page then carries a
  cursor), so even this stays bounded;
- ``worker``: ``?limit=50&worker=w03``, one job in 20 (the worker index);
- ``name``: ``?limit=50&name_prefix=listing-000003``, one group of 125 jobs
  (the name index, read whole and sorted);
- ``name_broad``: ``?limit=50&name_prefix=listing-``, every job: past 2,000
  entries the listing walks the time index and checks the names;
- ``workers``: ``GET /v1/workers?limit=50``, the 20 workers with their counts.

Jobs are written as the service writes them, by the registerJob Lua script
(pipelined, ``tests.bulk_load.register_many``), in groups of 125 with one of three
types and one of eight labels each, in turn, each group named
``listing-<group number>``; then each group gets one heartbeat per job from
one of 20 workers, in turn (recordHeartbeats, one call per shard).
Memory per job is Redis ``used_memory`` growth over the empty store divided
by the jobs stored. Writes bench/results/listing.json (``--output``).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import statistics
import sys
import time
import urllib.parse
from pathlib import Path

from app.model import DEFAULT_JOB_TYPES
from app.store import JobStore, connect, heartbeat_args
from bench import RESULTS
from bench.servers import BenchError, BenchRedis, BenchService
from tests.bulk_load import register_many

DEFAULT_SIZES = (1_000, 10_000, 100_000, 1_000_000)
PAGE = 50
GROUP = 125  # jobs alike, in one pipeline, while loading
LABEL_VALUES = 8
CURSOR_PAGE = 10  # pages skipped before the cursor query's page
WORKERS = 20
QUERIES = ("newest", "cursor", "label", "sparse", "worker", "name", "name_broad", "workers")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated job counts, ascending (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed requests per query and size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the requests are made in this many rounds, queries taking "
                             "turns; figures are medians over rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="untimed requests first (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "listing.json",
                        help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes integers, e.g. 1000,10000")
    if args.sizes != sorted(args.sizes) or args.sizes[0] < CURSOR_PAGE * PAGE + PAGE:
        parser.error(f"--sizes must ascend and start at {CURSOR_PAGE * PAGE + PAGE} or more")
    return args


def load_jobs(store: JobStore, start: int, stop: int, log) -> float:
    """Register jobs number ``start`` to ``stop``; returns the seconds taken."""
    began = time.monotonic()
    for first in range(start, stop, GROUP):
        group = first // GROUP
        ids = register_many(store, DEFAULT_JOB_TYPES[group % len(DEFAULT_JOB_TYPES)],
                            min(GROUP, stop - first), name=f"listing-{group:06d}",
                            labels={"team": f"t{group % LABEL_VALUES}"},
                            heartbeat_timeout=3600)
        beat = heartbeat_args(f"w{group % WORKERS:02d}", 1.0, None, None)
        store.record_heartbeats(ids, [beat] * len(ids))
        if group % 800 == 799:
            log(f"  {first + GROUP:,} jobs, {time.monotonic() - began:.0f} s")
    return time.monotonic() - began


class Timer:
    """Sequential GETs on one keep-alive connection."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def get(self, path: str) -> dict:
        self._connection.request("GET", path)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BenchError(f"GET {path}: {response.status} {body[:300]!r}")
        return json.loads(body)

    def samples(self, path: str, requests: int) -> tuple[list[float], dict]:
        """Milliseconds per request, and the last page."""
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            page = self.get(path)
            times.append((time.perf_counter() - started) * 1000)
        return times, page

    def close(self) -> None:
        self._connection.close()


def cursor_path(timer: Timer) -> str:
    """The path of page CURSOR_PAGE + 1 of the full listing."""
    cursor = None
    for _ in range(CURSOR_PAGE):
        query = f"/v1/jobs?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
        cursor = timer.get(query)["next_cursor"]
    return f"/v1/jobs?limit={PAGE}&cursor={cursor}"


def summary(path: str, rounds: list[list[float]], page: dict) -> dict:
    """Per-round figures, and their medians: one burst of load from elsewhere
    on the machine spoils one round, not the result."""
    figures = []
    for times in rounds:
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        figures.append({"p50_ms": statistics.median(times), "p90_ms": cuts[89],
                        "p99_ms": cuts[98], "mean_ms": statistics.fmean(times)})
    result = {"path": path, "requests": sum(map(len, rounds)),
              "jobs_returned": len(page.get("jobs", page.get("workers", [])))}
    for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        result[name] = round(statistics.median(f[name] for f in figures), 3)
    result["p99_ms_rounds"] = [round(f["p99_ms"], 3) for f in figures]
    return result


def measure(service: BenchService, requests: int, rounds: int, warmup: int) -> dict:
    """Each query ``rounds`` times, the queries taking turns."""
    timer = Timer(service.base_url)
    try:
        paths = {"newest": f"/v1/jobs?limit={PAGE}", "cursor": cursor_path(timer),
                 "label": f"/v1/jobs?limit={PAGE}&label=team:t3",
                 "sparse": f"/v1/jobs?limit={PAGE}&type=export&label=team:t3",
                 "worker": f"/v1/jobs?limit={PAGE}&worker=w03",
                 "name": f"/v1/jobs?limit={PAGE}&name_prefix=listing-000003",
                 "name_broad": f"/v1/jobs?limit={PAGE}&name_prefix=listing-",
                 "workers": f"/v1/workers?limit={PAGE}"}
        for path in paths.values():
            timer.samples(path, warmup)
        times: dict[str, list[list[float]]] = {name: [] for name in paths}
        pages = {}
        for _ in range(rounds):
            for name, path in paths.items():
                round_times, pages[name] = timer.samples(path, requests // rounds)
                times[name].append(round_times)
        return {name: summary(path, times[name], pages[name]) for name, path in paths.items()}
    finally:
        timer.close()


def used_memory(store: JobStore) -> dict:
    info = store.client.info("memory")
    return {"used_memory": info["used_memory"],
            "used_memory_dataset": info.get("used_memory_dataset", 0)}


def ratio(rows: list[dict], query: str, figure: str, small: int, large: int) -> float | None:
    by_size = {row["jobs"]: row["queries"][query][figure] for row in rows}
    if small in by_size and large in by_size:
        return round(by_size[large] / by_size[small], 2)
    return None


def markdown(rows: list[dict]) -> str:
    lines = ["| jobs stored | load jobs/s | memory/job (bytes) | "
             + " | ".join(f"{q} p50 / p99 ms" for q in QUERIES) + " |",
             "|---:|---:|---:|" + "---:|" * len(QUERIES)]
    for row in rows:
        cells = [f"{row['jobs']:,}", f"{row['load_jobs_per_s']:,.0f}",
                 f"{row['memory_per_job_bytes']:,.0f}"]
        cells += [f"{row['queries'][q]['p50_ms']:.2f} / {row['queries'][q]['p99_ms']:.2f}"
                  for q in QUERIES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    rows: list[dict] = []
    try:
        with BenchRedis() as redis_server:
            store = JobStore(connect(redis_server.url, max_connections=4, socket_timeout=60))
            store.scripts.load_all()
            empty = used_memory(store)
            stored = 0
            for size in args.sizes:
                log(f"listing: loading {size - stored:,} jobs (to {size:,})")
                seconds = load_jobs(store, stored, size, log)
                loaded, stored = size - stored, size
                memory = used_memory(store)
                with BenchService(redis_server.url, log_dir=redis_server.dir) as service:
                    queries = measure(service, args.requests, args.rounds, args.warmup)
                row = {
                    "jobs": size,
                    "load_s": round(seconds, 1),
                    "load_jobs_per_s": round(loaded / seconds),
                    **memory,
                    "memory_per_job_bytes": round(
                        (memory["used_memory"] - empty["used_memory"]) / size),
                    "dataset_per_job_bytes": round(
                        (memory["used_memory_dataset"] - empty["used_memory_dataset"]) / size),
                    "queries": queries,
                }
                rows.append(row)
                log(f"listing: {size:,} jobs, {row['memory_per_job_bytes']} bytes/job; "
                    + ", ".join(f"{name} p50 {q['p50_ms']:.2f} ms p99 {q['p99_ms']:.2f} ms"
                                for name, q in queries.items()))
            store.client.close()
            redis_version = redis_server.version()
    except BenchError as error:
        print(f"bench.listing: {error}", file=sys.stderr)
        return 1
    smallest, largest = args.sizes[0], args.sizes[-1]
    results = {
        "settings": {"page": PAGE, "requests": args.requests, "rounds": args.rounds,
                     "warmup": args.warmup,
                     "sizes": args.sizes, "load_group": GROUP, "cursor_page": CURSOR_PAGE + 1,
                     "connection": "one keep-alive connection, requests one after the other"},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "redis": redis_version,
                    "load_average": round(os.getloadavg()[0], 2),
                    "date": datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%d %H:%M UTC")},
        "sizes": rows,
        "p50_ratio_largest_to_smallest": ratio(rows, "newest", "p50_ms", smallest, largest),
        "p99_ratio_largest_to_smallest": ratio(rows, "newest", "p99_ms", smallest, largest),
        "duration_s": round(time.monotonic() - started),
        "markdown": markdown(rows),
    }
    p99_1m = ratio(rows, "newest", "p99_ms", 1_000, 1_000_000)
    if p99_1m is not None:
        results["p99_ratio_1m_to_1k"] = p99_1m
        results["p50_ratio_1m_to_1k"] = ratio(rows, "newest", "p50_ms", 1_000, 1_000_000)
    # Every query: largest over smallest size, p50 and p99.
    results["ratios_largest_to_smallest"] = {
        q: {"p50": ratio(rows, q, "p50_ms", smallest, largest),
            "p99": ratio(rows, q, "p99_ms", smallest, largest)} for q in QUERIES}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    log(results["markdown"])
    log(f"wrote {args.output} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
