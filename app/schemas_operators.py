"""The response schemas of what issue 20 added beside the jobs: the workers
(GET /v1/workers) and the run times of GET /v1/stats; ``app.schemas`` puts
them with the others."""

from __future__ import annotations

from typing import Any

RUN_TIMES_SCHEMA: dict[str, Any] = {
    "type": "object", "description": (
        "Per type: the jobs finished in the last hour, and the median and 95th "
        "percentile of their run times (finished_at - started_at, or - created_at "
        "without a heartbeat), from a histogram: within about 10 %"),
    "additionalProperties": {
        "type": "object", "required": ["count", "median_seconds", "p95_seconds"],
        "properties": {"count": {"type": "integer", "minimum": 1},
                       "median_seconds": {"type": "number", "minimum": 0},
                       "p95_seconds": {"type": "number", "minimum": 0}}}}

WORKER_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["workers", "next_cursor", "stalled_exact"],
    "properties": {
        "workers": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "last_heartbeat_at", "jobs", "stalled", "jobs_url"],
            "properties": {
                "name": {"type": "string"},
                "last_heartbeat_at": {"type": "string", "format": "date-time"},
                "jobs": {"type": "object", "description": "The worker's jobs by state: "
                         "running, paused, killed, done, failed",
                         "additionalProperties": {"type": "integer", "minimum": 0}},
                "stalled": {"type": "integer", "minimum": 0,
                            "description": "Of its running jobs, those stalled"},
                "jobs_url": {"type": "string"}}}},
        "next_cursor": {"type": ["string", "null"]},
        "stalled_exact": {"type": "boolean", "description": "false: a shard holds more "
                          "than 1,000 stalled jobs, and each worker's stalled count is a "
                          "lower bound (the count reads at most 1,000 per shard)"},
    },
}
