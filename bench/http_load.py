"""HTTP load with ``wrk``: the endpoints measured, the jobs they need, and
runs whose figures are also given as ratios to ``/healthz`` of the same
server in the same run (absolute numbers drift on a shared machine)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from bench import ROOT
from bench.servers import BenchError, BenchService

WRK_DIR = ROOT / "bench" / "wrk"
RESULT_MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    script: str
    ids: str | None = None  # which preloaded jobs the script cycles over (JobSets)
    batch: int = 1  # jobs per request: figures also as job updates per second
    target_ratio: float | None = None  # requests/s as a share of /healthz's, at least
    path: str = "/"  # the request path, unless the script builds its requests

    def script_args(self, ids_file: Path | None) -> list[str]:
        args = [str(ids_file)] if ids_file else []
        return args + ([str(self.batch)] if self.batch > 1 else [])


HEALTHZ = Endpoint("healthz", "GET /healthz", "plain.lua", path="/healthz")
ENDPOINTS = (
    Endpoint("old_get_job_state", "GET /jobState (old)", "get_job_state.lua", "read",
             target_ratio=0.6),
    Endpoint("old_post_job_state", "POST /jobState (old)", "post_job_state.lua", "old_toggle",
             target_ratio=0.5),
    Endpoint("old_register_job", "POST /registerJob (old)", "register_job.lua",
             target_ratio=0.5),
    Endpoint("v1_get_job", "GET /v1/jobs/{id}", "v1_get_job.lua", "read"),
    Endpoint("v1_command", "POST /v1/jobs/{id}/commands", "v1_command.lua", "v1_toggle"),
    Endpoint("v1_register", "POST /v1/jobs", "v1_register.lua"),
    Endpoint("v1_heartbeats", "POST /v1/heartbeats (100 jobs)", "heartbeats.lua", "heartbeat",
             batch=100),
)
# Heartbeat target: job updates per second on the reference 2-core machine.
HEARTBEAT_TARGET = 50_000


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    errors: dict[str, int]
    service_cpu_us: float = 0.0  # CPU time of the service processes per request
    redis_cpu_us: float = 0.0  # CPU time of Redis per request
    wrk_cpu_us: float = 0.0  # CPU time of wrk itself per request
    connections_per_process: list[int] = field(default_factory=list)  # with --workers

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        print("wrk is not installed; the benchmark drives its load with it:\n"
              "    sudo apt-get install wrk", file=sys.stderr)
        raise SystemExit(2)
    return path


def wrk_version() -> str:
    run = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (run.stdout or run.stderr).split("Copyright")[0].strip()


def wrk_command(base_url: str, endpoint: Endpoint, ids_file: Path | None, seconds: float,
                connections: int) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
            "-s", str(WRK_DIR / endpoint.script), base_url + endpoint.path,
            "--", *endpoint.script_args(ids_file)]


def wrk_env() -> dict[str, str]:
    return {**os.environ, "LUA_PATH": f"{WRK_DIR}/?.lua;;"}


def parse_wrk_output(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(RESULT_MARK):
            return WrkResult(**json.loads(line[len(RESULT_MARK):]))
    raise BenchError("wrk printed no result:\n" + output[-2000:])


def process_cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes, with that of their
    finished children, from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def connections_per_process(service: BenchService) -> list[int]:
    """Established client connections held by each serving process, from
    /proc (Linux): with ``--workers``, the kernel decides which process
    accepts which connection."""
    port = f"{service.port:04X}"
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(":" + port) and fields[3] == "01":
                established.add(fields[9])  # the socket's inode
    return [len(_socket_inodes(pid) & established) for pid in service.pids()]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def run_wrk(service: BenchService, endpoint: Endpoint, ids_file: Path | None, seconds: float,
            connections: int, redis_client: redis.Redis) -> WrkResult:
    pids = service.all_pids()
    service_before = process_cpu_seconds(pids)
    redis_before = redis_cpu_seconds(redis_client)
    wrk_before = children_cpu_seconds()
    wrk = subprocess.Popen(wrk_command(service.base_url, endpoint, ids_file, seconds, connections),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=wrk_env())
    spread = []
    if len(service.pids()) > 1:
        time.sleep(min(1.0, seconds / 2))
        spread = connections_per_process(service)
    stdout, stderr = wrk.communicate(timeout=seconds + 60)
    if wrk.returncode != 0:
        raise BenchError(f"wrk failed for {endpoint.label}:\n{stderr}{stdout}")
    result = parse_wrk_output(stdout)
    result.connections_per_process = spread
    if result.requests:
        result.service_cpu_us = (process_cpu_seconds(pids) - service_before) * 1e6 \
            / result.requests
        result.redis_cpu_us = (redis_cpu_seconds(redis_client) - redis_before) * 1e6 \
            / result.requests
        result.wrk_cpu_us = (children_cpu_seconds() - wrk_before) * 1e6 / result.requests
    return result


@dataclass
class JobSets:
    """Files of preloaded job ids for the wrk scripts. Scripts that change
    states get a fresh slice of jobs per run (``toggle_slices``), so each run
    starts from jobs in ``start`` and every request is a real change."""

    dir: Path
    files: dict[str, list[Path]] = field(default_factory=dict)

    def file(self, name: str | None, run: int = 0) -> Path | None:
        if name is None:
            return None
        slices = self.files[name]
        return slices[run % len(slices)]

    @classmethod
    def preload(cls, redis_url: str, directory: Path, *, read: int = 1000,
                toggle: int = 1000, toggle_slices: int = 4, heartbeat: int = 5000) -> JobSets:
        from app.store import JobStore, connect

        store = JobStore(connect(redis_url, max_connections=4, socket_timeout=30))
        sets = cls(directory)

        def register(name: str, count: int, slices: int = 1, heartbeat_timeout: int = 0):
            sets.files[name] = []
            for number in range(slices):
                ids = [store.register("teams", name="preloaded",
                                      heartbeat_timeout=heartbeat_timeout)[0].id
                       for _ in range(count)]
                path = directory / f"{name}-{number}.ids"
                path.write_text("\n".join(ids) + "\n")
                sets.files[name].append(path)

        register("read", read)
        register("old_toggle", toggle, toggle_slices)
        register("v1_toggle", toggle, toggle_slices)
        register("heartbeat", heartbeat, heartbeat_timeout=300)
        # The same ids for the Go service, which reads hashes job:<id>.
        read_ids = sets.files["read"][0].read_text().split()
        pipe = store.client.pipeline(transaction=False)
        for job_id in read_ids:
            pipe.hset(f"job:{job_id}", mapping={"type": "teams", "state": "start"})
        # And the toggled ones, so POST /jobState finds them (the Go service's
        # job:<id> keys are its own: Karmchari's copies of these jobs are not touched).
        for path in sets.files["old_toggle"]:
            for job_id in path.read_text().split():
                pipe.hset(f"job:{job_id}", mapping={"type": "teams", "state": "start"})
        pipe.execute()
        sets.files["go_read"] = [sets.files["read"][0]]
        sets.files["go_toggle"] = sets.files["old_toggle"]
        store.client.close()
        return sets


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Reference:
    """/healthz in one round: the mean of its runs before and after the endpoints."""

    rps: float
    p50_us: float
    p99_us: float
    service_cpu_us: float
    redis_cpu_us: float
    wrk_cpu_us: float

    @classmethod
    def of(cls, before: WrkResult, after: WrkResult) -> Reference:
        return cls((before.rps + after.rps) / 2, (before.p50_us + after.p50_us) / 2,
                   (before.p99_us + after.p99_us) / 2,
                   (before.service_cpu_us + after.service_cpu_us) / 2,
                   (before.redis_cpu_us + after.redis_cpu_us) / 2,
                   (before.wrk_cpu_us + after.wrk_cpu_us) / 2)


def summarize(endpoint: Endpoint, runs: list, references: list[Reference]) -> dict:
    """Medians over the rounds of each figure and of its ratio to /healthz
    in the same round."""
    rounds = list(zip(runs, references, strict=True))
    summary = {
        "label": endpoint.label,
        "rps": _median([r.rps for r in runs]),
        "p50_ms": _median([r.p50_us / 1000 for r in runs]),
        "p99_ms": _median([r.p99_us / 1000 for r in runs]),
        "service_cpu_us": _median([r.service_cpu_us for r in runs]),
        "redis_cpu_us": _median([r.redis_cpu_us for r in runs]),
        "wrk_cpu_us": _median([r.wrk_cpu_us for r in runs]),
        "rps_ratio": _median([r.rps / h.rps for r, h in rounds]),
        "p50_ratio": _median([r.p50_us / h.p50_us for r, h in rounds]),
        "p99_ratio": _median([r.p99_us / h.p99_us for r, h in rounds]),
        "target_ratio": endpoint.target_ratio,
        "batch": endpoint.batch,
    }
    if endpoint.batch > 1:
        summary["job_updates_per_s"] = summary["rps"] * endpoint.batch
        summary["target_job_updates_per_s"] = HEARTBEAT_TARGET
    return summary


def measure(start_service: Callable[[], BenchService], endpoints: tuple[Endpoint, ...],
            jobs: JobSets, redis_client: redis.Redis, *, runs: int, seconds: float,
            warmup: float, connections: int, log=print) -> dict:
    """``runs`` rounds, each against a fresh ``karmchari serve`` (one process
    runs faster or slower than the next on a shared virtual machine, so every
    round samples that anew): warm every endpoint up, then /healthz, each
    endpoint, /healthz again. Each endpoint is compared with the mean of the
    two /healthz runs of its round."""
    results: dict[str, list[WrkResult]] = {e.key: [] for e in (HEALTHZ, *endpoints)}
    references: list[Reference] = []
    for number in range(1, runs + 1):
        with start_service() as service:
            for endpoint in (HEALTHZ, *endpoints):
                run_wrk(service, endpoint, jobs.file(endpoint.ids, 0), warmup, connections,
                        redis_client)
            before = run_wrk(service, HEALTHZ, None, seconds, connections, redis_client)
            for endpoint in endpoints:
                result = run_wrk(service, endpoint, jobs.file(endpoint.ids, number), seconds,
                                 connections, redis_client)
                results[endpoint.key].append(result)
                log(f"  round {number}/{runs}: {endpoint.label}: {result.rps:,.0f} req/s, "
                    f"p50 {result.p50_us / 1000:.2f} ms, p99 {result.p99_us / 1000:.2f} ms"
                    + (f", {result.error_count} ERRORS" if result.error_count else ""))
            after = run_wrk(service, HEALTHZ, None, seconds, connections, redis_client)
        results[HEALTHZ.key] += [before, after]
        references.append(Reference.of(before, after))
        log(f"  round {number}/{runs}: /healthz: {references[-1].rps:,.0f} req/s")
    summaries = {HEALTHZ.key: summarize(HEALTHZ, references, references)}
    for endpoint in endpoints:
        summaries[endpoint.key] = summarize(endpoint, results[endpoint.key], references)
    for key, summary in summaries.items():
        summary["runs"] = [asdict(r) | {"rps": r.rps} for r in results[key]]
        summary["errors"] = sum(r.error_count for r in results[key])
    return summaries
