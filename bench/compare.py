"""Karmchari beside the Go service it replaces, in one run: ``GET /jobState``
and ``POST /registerJob`` of the old API, on the same Redis, with the same wrk
settings, against Go (with ``--go-binary``), Karmchari under Granian with two
processes, and Karmchari under waitress with its defaults.

Every round starts each server afresh, one after the other, and measures it
alone. Each Karmchari figure is given as a ratio to the Go service in the
same round and to ``/healthz`` of the same server in the same round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis

from bench.http_load import (
    ENDPOINTS,
    HEALTHZ,
    Endpoint,
    JobSets,
    Reference,
    WrkResult,
    _median,
    run_wrk,
)

COMPARED_KEYS = ("old_get_job_state", "old_register_job", "old_post_job_state", "v1_heartbeats")
COMPARED = tuple(e for e in ENDPOINTS if e.key in COMPARED_KEYS)
# Shares of the Go service's req/s to reach, by server and endpoint (issue 17's
# targets); batch heartbeats are held to a multiple of Go's updates per second
# (POST /jobState, its only update), counted in jobs.
GRANIAN_2_TARGETS = {"old_get_job_state": 0.33, "old_register_job": 0.23, "v1_heartbeats": 3.0}
WAITRESS_1_TARGETS = {"old_get_job_state": 0.10}
GO_TARGET_RATIO = GRANIAN_2_TARGETS["old_get_job_state"]  # the plot's line
GO_IDS = {"old_get_job_state": "go_read", "old_post_job_state": "go_toggle"}
GO_UPDATE = "old_post_job_state"  # what batch heartbeats are set against
NOT_IN_GO = {"v1_heartbeats"}


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    start: Callable  # () -> a service (context manager) ready for requests
    is_go: bool = False
    # By endpoint: req/s as a share of Go's, at least (job updates/s over Go's
    # updates/s for a batch endpoint).
    target_go_ratio: dict[str, float] | None = None


def _ids(contender: Contender, endpoint: Endpoint) -> str | None:
    return GO_IDS.get(endpoint.key, endpoint.ids) if contender.is_go else endpoint.ids


def compare(contenders: list[Contender], jobs: JobSets, redis_client: redis.Redis, *,
            runs: int, seconds: float, warmup: float, connections: int, log=print) -> dict:
    runs_of: dict[str, dict[str, list[WrkResult]]] = {
        c.key: {e.key: [] for e in COMPARED} for c in contenders}
    references: dict[str, list[Reference]] = {c.key: [] for c in contenders if not c.is_go}
    for number in range(1, runs + 1):
        for contender in contenders:
            with contender.start() as service:
                endpoints = [e for e in COMPARED
                             if not (contender.is_go and e.key in NOT_IN_GO)]
                measured = endpoints if contender.is_go else (HEALTHZ, *endpoints)
                for endpoint in measured:
                    run_wrk(service, endpoint, jobs.file(_ids(contender, endpoint), 0), warmup,
                            connections, redis_client)
                before = None if contender.is_go else run_wrk(
                    service, HEALTHZ, None, seconds, connections, redis_client)
                for endpoint in endpoints:
                    result = run_wrk(service, endpoint,
                                     jobs.file(_ids(contender, endpoint), number), seconds,
                                     connections, redis_client)
                    runs_of[contender.key][endpoint.key].append(result)
                    log(f"  round {number}/{runs}: {contender.label}: {endpoint.label}: "
                        f"{result.rps:,.0f} req/s, {result.service_cpu_us:.0f} µs CPU/req"
                        + (f", {result.error_count} ERRORS" if result.error_count else ""))
                if before is not None:
                    after = run_wrk(service, HEALTHZ, None, seconds, connections, redis_client)
                    references[contender.key].append(Reference.of(before, after))
                    log(f"  round {number}/{runs}: {contender.label}: /healthz "
                        f"{references[contender.key][-1].rps:,.0f} req/s")
    go = next((c for c in contenders if c.is_go), None)
    summary: dict = {"go": go is not None, "target_go_ratio": GO_TARGET_RATIO, "servers": {}}
    for contender in contenders:
        endpoints = {}
        for endpoint in COMPARED:
            results = runs_of[contender.key][endpoint.key]
            if not results:  # not an endpoint of this server
                continue
            entry = _summary(endpoint, results)
            if contender.key in references:
                healthz = references[contender.key]
                entry["rps_ratio"] = _median([r.rps / h.rps for r, h in
                                              zip(results, healthz, strict=True)])
            if go is not None and not contender.is_go and endpoint.batch > 1:
                # Job updates per second over the Go service's (one job per request).
                go_runs = runs_of[go.key][GO_UPDATE]
                entry["go_update_ratio"] = _median([r.rps * endpoint.batch / g.rps for r, g in
                                                    zip(results, go_runs, strict=True)])
            elif go is not None and not contender.is_go:
                go_runs = runs_of[go.key][endpoint.key]
                entry["go_ratio"] = _median([r.rps / g.rps for r, g in
                                             zip(results, go_runs, strict=True)])
                # What the ratio would be were the machine's cores the only limit:
                # CPU per request of everything a request costs (server, Redis,
                # wrk), Go's over this server's. It moves far less with other
                # work on a shared machine than req/s does.
                entry["go_cpu_ratio"] = _median([_cpu(g) / _cpu(r) for r, g in
                                                 zip(results, go_runs, strict=True)])
            entry["target_go_ratio"] = (contender.target_go_ratio or {}).get(endpoint.key)
            endpoints[endpoint.key] = entry
        if contender.key in references:
            healthz = references[contender.key]
            endpoints[HEALTHZ.key] = {
                "label": HEALTHZ.label, "rps": _median([h.rps for h in healthz]),
                "p50_ms": _median([h.p50_us / 1000 for h in healthz]),
                "p99_ms": _median([h.p99_us / 1000 for h in healthz]),
                "service_cpu_us": _median([h.service_cpu_us for h in healthz]),
                "redis_cpu_us": _median([h.redis_cpu_us for h in healthz]),
                "rps_ratio": 1.0, "errors": 0}
        summary["servers"][contender.key] = {"label": contender.label, "is_go": contender.is_go,
                                             "endpoints": endpoints}
    return summary


def _cpu(result: WrkResult) -> float:
    return result.service_cpu_us + result.redis_cpu_us + result.wrk_cpu_us


def _summary(endpoint: Endpoint, results: list[WrkResult]) -> dict:
    return {
        "label": endpoint.label,
        "rps": _median([r.rps for r in results]),
        "p50_ms": _median([r.p50_us / 1000 for r in results]),
        "p99_ms": _median([r.p99_us / 1000 for r in results]),
        "service_cpu_us": _median([r.service_cpu_us for r in results]),
        "redis_cpu_us": _median([r.redis_cpu_us for r in results]),
        "wrk_cpu_us": _median([r.wrk_cpu_us for r in results]),
        "errors": sum(r.error_count for r in results),
        "runs": [asdict(r) | {"rps": r.rps} for r in results],
    }
