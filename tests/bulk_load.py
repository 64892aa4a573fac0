"""Many jobs at once, for tests and benchmarks: one pipeline of registerJob
calls, each as ``JobStore.register`` would make it."""

from __future__ import annotations

from app.store import JobStore
from app.store.connection import unavailable_on_redis_errors


def register_many(store: JobStore, job_type: str, count: int, *, name: str = "",
                  labels: dict[str, str] | None = None,
                  heartbeat_timeout: int = 0) -> list[str]:
    """Register ``count`` jobs alike; returns their ids."""
    made = [store.register_call(job_type, name, labels or {}, heartbeat_timeout, "", None, "", "")
            for _ in range(count)]
    with unavailable_on_redis_errors(write=True):
        replies = store.bindings.run_pipeline([call for _, call in made])
    for reply in replies:
        store.bindings.register_job.decode(reply)
    return [job_id for job_id, _ in made]
