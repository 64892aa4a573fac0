"""How jobs look in JSON."""

from __future__ import annotations

from typing import Any

from app.model import Job, format_time


def job_json(job: Job, now_ms: int) -> dict[str, Any]:
    return {
        "id": job.id,
        "type": job.type,
        "state": job.state,
        "version": job.version,
        "name": job.name,
        "owner": job.owner or None,
        "labels": job.labels,
        "created_at": format_time(job.created_at),
        "updated_at": format_time(job.updated_at),
        "ended_at": format_time(job.ended_at),
        "started_at": format_time(job.started_at),
        "finished_at": format_time(job.ended_at),
        "retry_of": job.retry_of or None,
        "reruns": list(job.reruns),
        "heartbeat_timeout": job.heartbeat_timeout,
        "heartbeat_at": format_time(job.heartbeat_at),
        "worker": job.worker,
        "progress": job.progress,
        "message": job.message,
        "observed_state": job.observed_state,
        "stalled": job.stalled(now_ms),
    }


def etag(job: Job) -> str:
    return str(job.version)
