"""How many Redis commands each request sends, seen by Redis itself (MONITOR).

Commands that scripts run inside Redis are reported by MONITOR as coming
from "lua" and are not counted: what is counted is what crosses the socket.
A batch request sends its commands in one pipeline, one round trip.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.servers import BenchRedis, BenchService

BEGIN, END = "karmchari-bench-begin", "karmchari-bench-end"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Case:
    label: str
    request: Callable[[int], tuple[str, str, str | None, dict]]  # method, path, body, headers
    expected: int  # commands per request by design
    note: str = ""


class _Http:
    def __init__(self, service: BenchService) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)

    def __call__(self, method: str, path: str, body: str | None = None,
                 headers: dict | None = None) -> tuple[int, bytes]:
        self._conn.request(method, path, body=body, headers=headers or {})
        answer = self._conn.getresponse()
        return answer.status, answer.read()

    def new_job(self, **fields) -> str:
        status, body = self("POST", "/v1/jobs", json.dumps({"type": "teams", **fields}), JSON)
        assert status == 201, body
        return json.loads(body)["id"]


def cases(http: _Http, requests: int, batch: int) -> list[Case]:
    """The single-job endpoints, and a batch; request ``n`` of each case is
    ``case.request(n)`` for n in 0..requests (one more for a warm-up)."""
    job = http.new_job(heartbeat_timeout=300)
    v1_job = http.new_job()
    batch_ids = [http.new_job(heartbeat_timeout=300) for _ in range(batch)]
    batch_body = json.dumps({"heartbeats": [{"id": i, "progress": 1} for i in batch_ids]})
    to_delete = [http.new_job() for _ in range(requests + 1)]
    for job_id in to_delete:
        http("POST", f"/v1/jobs/{job_id}/commands", '{"command": "kill"}', JSON)

    def toggle(n: int) -> str:
        return "pause" if n % 2 == 0 else "start"

    return [
        Case("GET /jobState (old)", lambda n: ("GET", f"/jobState?id={job}", None, {}), 1),
        Case("POST /jobState (old)",
             lambda n: ("POST", "/jobState", f"id={job}&command={toggle(n)}", FORM), 1),
        Case("POST /registerJob (old)",
             lambda n: ("POST", "/registerJob", "type=teams", FORM), 1),
        Case("GET /v1/jobs/{id}", lambda n: ("GET", f"/v1/jobs/{job}", None, {}), 1),
        Case("POST /v1/jobs/{id}/commands",
             lambda n: ("POST", f"/v1/jobs/{v1_job}/commands",
                        json.dumps({"command": toggle(n)}), JSON), 1),
        Case("POST /v1/jobs", lambda n: ("POST", "/v1/jobs", '{"type": "teams"}', JSON), 1),
        Case("POST /v1/jobs/{id}/heartbeat",
             lambda n: ("POST", f"/v1/jobs/{job}/heartbeat", '{"progress": 5}', JSON), 1),
        Case("GET /v1/jobs/{id}/history",
             lambda n: ("GET", f"/v1/jobs/{job}/history", None, {}), 2,
             "EXISTS and LRANGE in one pipeline: one round trip"),
        Case("DELETE /v1/jobs/{id}",
             lambda n: ("DELETE", f"/v1/jobs/{to_delete[n]}", None, {}), 2,
             "reads the job's type and labels (they name the index keys the "
             "script must be given), then the script: two round trips"),
        Case(f"POST /v1/heartbeats ({batch} jobs)",
             lambda n: ("POST", "/v1/heartbeats", batch_body, JSON),
             len({job_id[0] for job_id in batch_ids}),
             "one script call per shard touched (ids are sharded by their first hex "
             "digit), all in one pipeline: one round trip"),
    ]


def _commands_between_markers(monitor) -> Counter:
    """Commands sent over the socket between the two ECHO markers."""
    seen: Counter = Counter()
    started = False
    while True:
        entry = monitor.next_command()
        command = entry["command"]
        if command.startswith("ECHO"):
            if BEGIN in command:
                started = True
            elif END in command:
                return seen
            continue
        if started and entry["client_type"] != "lua":
            seen[command.split(" ", 1)[0].upper()] += 1


def count_round_trips(service: BenchService, redis_server: BenchRedis, *,
                      requests: int = 40, batch: int = 100) -> list[dict]:
    http = _Http(service)
    client = redis_server.client()
    results = []
    for case in cases(http, requests, batch):
        # A first request outside the window: connections, script cache.
        http(*case.request(requests))
        with client.monitor() as monitor:
            client.echo(BEGIN)
            statuses = Counter(http(*case.request(n))[0] for n in range(requests))
            client.echo(END)
            seen = _commands_between_markers(monitor)
        total = sum(seen.values())
        results.append({"label": case.label, "requests": requests,
                        "commands_per_request": total / requests,
                        "expected": case.expected, "by_command": dict(seen),
                        "statuses": {str(k): v for k, v in statuses.items()},
                        "note": case.note})
    client.close()
    return results


def shown(results: list[dict]) -> str:
    return "\n".join(f"  {r['label']}: {r['commands_per_request']:g} commands per request "
                     f"{r['by_command']}" for r in results)

