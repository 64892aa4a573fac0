"""Listing cost at a small and a large number of jobs, measured side by side,
and Redis memory per job.

``python -m bench.listing`` starts two Redis servers and loads one to the
small size (1,000 jobs by default) and the other to the large one
(1,000,000), then starts one ``karmchari serve`` per Redis and times
``GET /v1/jobs`` requests one after the other, on one keep-alive connection
per service (latency without queueing). The two sizes are measured in the
same time window, so a ratio large ÷ small is not spoiled by the drifting
load of a shared machine: in each round every query is timed in a burst
against one service, then in a burst against the other, the order of the two
swapped from one round to the next. ``--sizes SMALL,LARGE`` takes exactly two
counts (``--small``/``--large`` set one each); the other options are those of
the earlier, size-after-size version.

The queries (selectivity at any size, the jobs being loaded as below):

- ``newest``: ``?limit=50``, the first page;
- ``cursor``: ``?limit=50&cursor=…``, the 11th page;
- ``label``: ``?limit=50&label=team:t3``, one job in eight has that label;
- ``sparse``: ``?limit=50&type=export&label=team:t3``, one job in 24: the
  service reads the smaller of the two indexes and checks the other condition
  on the jobs, at most 1,000 of them per request (a short page then carries a
  cursor), so even this stays bounded;
- ``worker``: ``?limit=50&worker=w03``, one job in 23 (the worker index);
- ``name``: ``?limit=50&name_prefix=listing-000003``, one group of 125 jobs
  (the name index, read whole and sorted);
- ``name_broad``: ``?limit=50&name_prefix=listing-``, every job: past 2,000
  entries the listing walks the time index and checks the names;
- ``waiting``: ``?state=start&started=false&stalled=false&limit=50``, the
  jobs waiting for a worker, one in eight (the ``idx:waiting`` index);
- ``workers``: ``GET /v1/workers?limit=50``, the 20 workers with their counts.

Jobs are written as the service writes them, by the registerJob Lua script
(pipelined, ``tests.bulk_load.register_many``), in groups of 125 with one of
three types and one of eight labels each, in turn, each group named
``listing-<group number>``; then each group gets one heartbeat per job, the
jobs naming the 20 workers in turn (job number modulo 20; recordHeartbeats,
one call per shard), except every eighth group (group number 5 modulo 8, so
every job labelled ``team:t5``), left waiting for a worker: each worker has
one job in 23 (1/20 of 7/8), and even 1,000 jobs have all 20 workers, so
``GET /v1/workers`` lists as many at both sizes. The upgrade the service
runs at start-up (app/store/migrations.py, a scan of every job in state
start) is run after loading, before the services start, so it does not run
during the measurement.

Besides latency (p50 and p99 over every request of a query and size), each
burst records the CPU time of the service process and of its Redis
(utime + stime from /proc/<pid>/stat, clock ticks) and Redis's INFO
commandstats, so the results give CPU µs per request of each, and Redis
commands and Redis µs (its own time in commands) per request. The load
average is sampled before loading, before measuring, and after each round.
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

DEFAULT_SIZES = (1_000, 1_000_000)
PAGE = 50
GROUP = 125  # jobs alike, in one pipeline, while loading
LABEL_VALUES = 8
WAITING_EVERY, WAITING_GROUP = 8, 5  # groups number 5 modulo 8 get no heartbeat
CURSOR_PAGE = 10  # pages skipped before the cursor query's page
WORKERS = 20
QUERIES = ("newest", "cursor", "label", "sparse", "worker", "name", "name_broad", "waiting",
           "workers")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
# One heartbeat per job, from the workers in turn: every size has all 20.
BEATS = [heartbeat_args(f"w{n:02d}", 1.0, None, None) for n in range(WORKERS)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.listing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="the two job counts measured side by side, small,large "
                             "(default: %(default)s)")
    parser.add_argument("--small", type=int, help="the small count alone (overrides --sizes)")
    parser.add_argument("--large", type=int, help="the large count alone (overrides --sizes)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed requests per query and size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="the requests are made in this many rounds; in each, every "
                             "query is timed at one size then the other, the order swapped "
                             "every round (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="untimed requests per query and size first (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS / "listing.json",
                        help="where to write the results (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes two integers, e.g. 1000,1000000")
    if len(sizes) != 2:
        parser.error("--sizes takes exactly two counts, small,large: they are measured "
                     "side by side")
    sizes = [args.small or sizes[0], args.large or sizes[1]]
    minimum = max(CURSOR_PAGE * PAGE + PAGE, WAITING_EVERY * GROUP)
    if sizes[0] >= sizes[1] or sizes[0] < minimum:
        parser.error(f"the small size must be below the large one and at least {minimum}")
    if args.rounds < 2 or args.requests < args.rounds * 10:
        parser.error("--rounds must be 2 or more and --requests at least 10 per round")
    args.sizes = sizes
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
        if group % WAITING_EVERY != WAITING_GROUP:
            store.record_heartbeats(ids, [BEATS[(first + i) % WORKERS] for i in range(len(ids))])
        if group % 800 == 799:
            log(f"  {first + GROUP:,} jobs, {time.monotonic() - began:.0f} s")
    return time.monotonic() - began


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (every thread), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def load_average() -> float:
    return round(float(Path("/proc/loadavg").read_text().split()[0]), 2)


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


def query_paths(timer: Timer) -> dict[str, str]:
    return {"newest": f"/v1/jobs?limit={PAGE}", "cursor": cursor_path(timer),
            "label": f"/v1/jobs?limit={PAGE}&label=team:t3",
            "sparse": f"/v1/jobs?limit={PAGE}&type=export&label=team:t3",
            "worker": f"/v1/jobs?limit={PAGE}&worker=w03",
            "name": f"/v1/jobs?limit={PAGE}&name_prefix=listing-000003",
            "name_broad": f"/v1/jobs?limit={PAGE}&name_prefix=listing-",
            "waiting": f"/v1/jobs?state=start&started=false&stalled=false&limit={PAGE}",
            "workers": f"/v1/workers?limit={PAGE}"}


def command_stats(store: JobStore) -> dict[str, tuple[int, int]]:
    """Redis's calls and µs per command so far."""
    stats = store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()}


class Side:
    """One size: its Redis, its service, its connection, and what was measured."""

    def __init__(self, jobs: int, redis_server: BenchRedis, store: JobStore,
                 service: BenchService) -> None:
        self.jobs = jobs
        self.redis = redis_server
        self.store = store
        self.service = service
        self.timer = Timer(service.base_url)
        self.paths = query_paths(self.timer)
        self.times: dict[str, list[list[float]]] = {q: [] for q in QUERIES}
        self.service_ticks = dict.fromkeys(QUERIES, 0)
        self.redis_ticks = dict.fromkeys(QUERIES, 0)
        self.commands: dict[str, dict[str, list[int]]] = {q: {} for q in QUERIES}
        self.pages: dict[str, dict] = {}

    def burst(self, query: str, requests: int) -> None:
        service_pid, redis_pid = self.service.process.pid, self.redis.process.pid
        before = command_stats(self.store)
        service0, redis0 = cpu_ticks(service_pid), cpu_ticks(redis_pid)
        times, self.pages[query] = self.timer.samples(self.paths[query], requests)
        self.service_ticks[query] += cpu_ticks(service_pid) - service0
        self.redis_ticks[query] += cpu_ticks(redis_pid) - redis0
        after = command_stats(self.store)
        self.times[query].append(times)
        for name, (calls, usec) in after.items():
            calls0, usec0 = before.get(name, (0, 0))
            if name == "info":  # this benchmark's own
                continue
            if calls > calls0:
                total = self.commands[query].setdefault(name, [0, 0])
                total[0] += calls - calls0
                total[1] += usec - usec0

    def summary(self, query: str) -> dict:
        rounds = self.times[query]
        every = [t for times in rounds for t in times]
        cuts = statistics.quantiles(every, n=100, method="inclusive")
        page = self.pages[query]
        requests = len(every)
        ms_per_tick = 1000 / CLOCK_TICK
        commands = self.commands[query]
        return {
            "path": self.paths[query], "requests": requests,
            "jobs_returned": len(page.get("jobs", page.get("workers", []))),
            "p50_ms": round(statistics.median(every), 3), "p90_ms": round(cuts[89], 3),
            "p99_ms": round(cuts[98], 3), "mean_ms": round(statistics.fmean(every), 3),
            "p50_ms_rounds": [round(statistics.median(t), 3) for t in rounds],
            "p99_ms_rounds": [round(statistics.quantiles(t, n=100, method="inclusive")[98], 3)
                              for t in rounds],
            "service_cpu_us_per_request":
                round(self.service_ticks[query] * ms_per_tick * 1000 / requests),
            "redis_cpu_us_per_request":
                round(self.redis_ticks[query] * ms_per_tick * 1000 / requests),
            "redis_commands_per_request":
                round(sum(calls for calls, _ in commands.values()) / requests, 2),
            "redis_us_per_request":
                round(sum(usec for _, usec in commands.values()) / requests, 1),
            "redis_by_command": {
                name: {"per_request": round(calls / requests, 2),
                       "us_per_call": round(usec / calls, 2)}
                for name, (calls, usec) in sorted(commands.items())},
        }

    def close(self) -> None:
        self.timer.close()


def measure(small: Side, large: Side, requests: int, rounds: int, warmup: int, log
            ) -> list[float]:
    """Every query ``rounds`` times at both sizes, a burst at one size right
    after a burst at the other; returns the load average after each round."""
    for side in (small, large):
        for path in side.paths.values():
            side.timer.samples(path, warmup)
    loads = []
    for number in range(rounds):
        order = (small, large) if number % 2 == 0 else (large, small)
        for query in QUERIES:
            for side in order:
                side.burst(query, requests // rounds)
        loads.append(load_average())
        log(f"  round {number + 1}/{rounds}, load average {loads[-1]}")
    return loads


def used_memory(store: JobStore) -> dict:
    info = store.client.info("memory")
    return {"used_memory": info["used_memory"],
            "used_memory_dataset": info.get("used_memory_dataset", 0)}


def ratios(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Large over small, per query: p50, p99, the median over rounds of each
    round's p50 ratio, and CPU per request of the service and of Redis."""
    small, large = rows[0]["queries"], rows[1]["queries"]
    found = {}
    for query in QUERIES:
        a, b = small[query], large[query]
        found[query] = {
            "p50": round(b["p50_ms"] / a["p50_ms"], 2),
            "p99": round(b["p99_ms"] / a["p99_ms"], 2),
            "p50_paired_rounds": round(statistics.median(
                y / x for x, y in zip(a["p50_ms_rounds"], b["p50_ms_rounds"], strict=True)), 2),
            "service_cpu": round(b["service_cpu_us_per_request"]
                                 / max(a["service_cpu_us_per_request"], 1), 2),
            "redis_us": round(b["redis_us_per_request"] / max(a["redis_us_per_request"], 0.1),
                              2),
        }
    return found


def markdown(rows: list[dict], found: dict[str, dict[str, float]]) -> str:
    small, large = rows
    lines = ["| jobs stored | load jobs/s | memory/job (bytes) |", "|---:|---:|---:|"]
    lines += [f"| {row['jobs']:,} | {row['load_jobs_per_s']:,} | {row['memory_per_job_bytes']:,} |"
              for row in rows]
    lines += ["", f"| query | p50 ms {small['jobs']:,} / {large['jobs']:,} | "
             f"p99 ms {small['jobs']:,} / {large['jobs']:,} | "
             "service CPU µs/req | Redis µs/req (commands) | "
             "p50 ratio | p99 ratio | CPU ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for query in QUERIES:
        a, b = small["queries"][query], large["queries"][query]
        lines.append(
            f"| {query} | {a['p50_ms']:.2f} / {b['p50_ms']:.2f} "
            f"| {a['p99_ms']:.2f} / {b['p99_ms']:.2f} "
            f"| {a['service_cpu_us_per_request']:,} / {b['service_cpu_us_per_request']:,} "
            f"| {a['redis_us_per_request']:,.0f} / {b['redis_us_per_request']:,.0f} "
            f"({a['redis_commands_per_request']:g} / {b['redis_commands_per_request']:g}) "
            f"| {found[query]['p50']:.2f} | {found[query]['p99']:.2f} "
            f"| {found[query]['service_cpu']:.2f} |")
    return "\n".join(lines)


def load_side(jobs: int, log) -> tuple[BenchRedis, JobStore, dict]:
    """A Redis of its own loaded to ``jobs`` jobs; the loading's figures."""
    redis_server = BenchRedis().start()
    store = JobStore(connect(redis_server.url, max_connections=4, socket_timeout=60))
    store.scripts.load_all()
    empty = used_memory(store)
    log(f"listing: loading {jobs:,} jobs")
    seconds = load_jobs(store, 0, jobs, log)
    store.upgrade()  # what the service does at start-up, done before it starts
    memory = used_memory(store)
    row = {"jobs": jobs, "load_s": round(seconds, 1), "load_jobs_per_s": round(jobs / seconds),
           **memory,
           "memory_per_job_bytes": round((memory["used_memory"] - empty["used_memory"]) / jobs),
           "dataset_per_job_bytes": round(
               (memory["used_memory_dataset"] - empty["used_memory_dataset"]) / jobs)}
    return redis_server, store, row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.monotonic()
    load_before = load_average()
    servers: list[BenchRedis] = []
    services: list[BenchService] = []
    sides: list[Side] = []
    rows: list[dict] = []
    stores: list[JobStore] = []
    try:
        for jobs in args.sizes:
            redis_server, store, row = load_side(jobs, log)
            servers.append(redis_server)
            stores.append(store)
            rows.append(row)
        # Started once both are loaded: an idle keep-alive connection would be
        # closed by the server (waitress's channel timeout) while the other loads.
        for jobs, redis_server, store in zip(args.sizes, servers, stores, strict=True):
            service = BenchService(redis_server.url, log_dir=redis_server.dir).start()
            services.append(service)
            sides.append(Side(jobs, redis_server, store, service))
        time.sleep(2)  # the services' start-up work (the upgrade check) is over
        load_measuring = load_average()
        log(f"listing: measuring side by side, load average {load_measuring}")
        loads = measure(sides[0], sides[1], args.requests, args.rounds, args.warmup, log)
        for side, row in zip(sides, rows, strict=True):
            row["queries"] = {q: side.summary(q) for q in QUERIES}
        redis_version = servers[0].version()
    except BenchError as error:
        print(f"bench.listing: {error}", file=sys.stderr)
        return 1
    finally:
        for side in sides:
            side.close()
        for store in stores:
            store.client.close()
        for service in services:
            service.stop()
        for redis_server in servers:
            redis_server.close()
    found = ratios(rows)
    results = {
        "settings": {"page": PAGE, "requests": args.requests, "rounds": args.rounds,
                     "warmup": args.warmup, "sizes": args.sizes, "load_group": GROUP,
                     "waiting_groups": f"group number {WAITING_GROUP} modulo {WAITING_EVERY}",
                     "cursor_page": CURSOR_PAGE + 1,
                     "connection": "one keep-alive connection per service, requests one "
                                   "after the other",
                     "pairing": "per round, each query: a burst at one size then at the "
                                "other, the order swapped every round"},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "redis": redis_version,
                    "load_average": load_measuring,
                    "load_average_before_loading": load_before,
                    "load_average_measuring": {"start": load_measuring, "rounds": loads,
                                               "median": statistics.median(loads)},
                    "date": datetime.datetime.now(datetime.timezone.utc)
                    .strftime("%Y-%m-%d %H:%M UTC")},
        "sizes": rows,
        "ratios_largest_to_smallest": found,
        "p50_ratio_largest_to_smallest": found["newest"]["p50"],
        "p99_ratio_largest_to_smallest": found["newest"]["p99"],
        "duration_s": round(time.monotonic() - started),
        "markdown": markdown(rows, found),
    }
    if args.sizes == [1_000, 1_000_000]:
        results["p50_ratio_1m_to_1k"] = found["newest"]["p50"]
        results["p99_ratio_1m_to_1k"] = found["newest"]["p99"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    log(results["markdown"])
    log(f"wrote {args.output} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
