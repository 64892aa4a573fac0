"""Deleting ended jobs in bulk (POST /v1/jobs/commands with "delete"; admin).

Each job is deleted by its own deleteJob call, as DELETE /v1/jobs/{id} does
(the script refuses a job that has not ended): a round reads the type and
labels of up to ``BATCH`` jobs in one pipeline, then sends their deleteJob
calls in another. A filter must name a final state, so it matches only jobs
that can never change again; its walk goes newest first through the index
the listing would read, ``MAX_EXAMINED`` entries a request at most, and
answers a cursor to continue from, as the other bulk commands do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.errors import FilterNotFinal, JobNotFound, StaleRead
from app.model import TERMINAL_STATES, Job
from app.store.bulk import decode_cursor, encode_cursor, next_entries, take_entries
from app.store.connection import unavailable_on_redis_errors
from app.store.scripts import DeleteJobCode

if TYPE_CHECKING:
    from app.store import JobFilter, JobStore

BATCH = 100
MAX_EXAMINED = 10_000


@dataclass
class DeleteResult:
    deleted: int = 0
    not_found: int = 0
    refused_ids: list[str] = field(default_factory=list)   # not ended, or not found
    examined: int = 0
    next_cursor: str | None = None

    def as_dict(self) -> dict[str, object]:
        refused = len(self.refused_ids) - self.not_found
        return {"matched": self.deleted + refused, "changed": self.deleted, "unchanged": 0,
                "refused": refused, "not_found": self.not_found, "deleted": self.deleted,
                "refused_ids": self.refused_ids, "next_cursor": self.next_cursor}


def _delete_batch(store: JobStore, job_ids: Sequence[str], result: DeleteResult,
                  keep: Callable[[dict[str, str]], bool] | None = None) -> None:
    """Delete the ended ones of ``job_ids`` (with ``keep``: those whose hash it
    accepts); the others go to ``refused_ids`` (ids form only)."""
    with unavailable_on_redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(store.keys.for_job(job_id).job(job_id))
        hashes = pipe.execute()
    calls, called = [], []
    for job_id, job in zip(job_ids, hashes, strict=True):
        if keep is not None:
            if job and keep(job):
                calls.append(store.delete_call(job_id, job["type"], job["labels"]))
                called.append(job_id)
            continue
        if not job:
            result.not_found += 1
            result.refused_ids.append(job_id)
        elif job["state"] not in TERMINAL_STATES:
            result.refused_ids.append(job_id)
        else:
            calls.append(store.delete_call(job_id, job["type"], job["labels"]))
            called.append(job_id)
    if not calls:
        return
    with unavailable_on_redis_errors(write=True):
        replies = store.scripts.run_pipeline(calls)
    for job_id, reply in zip(called, replies, strict=True):
        code = int(reply[0])
        if code == DeleteJobCode.DELETED:
            result.deleted += 1
        elif code == DeleteJobCode.STALE_READ:
            try:   # replaced meanwhile: the one-job path reads it again
                store.delete(job_id)
                result.deleted += 1
            except (JobNotFound, StaleRead):
                pass
        elif keep is None:
            if code == DeleteJobCode.JOB_NOT_FOUND:
                result.not_found += 1
            result.refused_ids.append(job_id)


def delete_ids(store: JobStore, ids: Sequence[str]) -> DeleteResult:
    result = DeleteResult()
    unique = list(dict.fromkeys(ids))
    for first in range(0, len(unique), BATCH):
        _delete_batch(store, unique[first:first + BATCH], result)
    return result


def delete_where(store: JobStore, where: JobFilter, *, cursor: str | None = None,
                 max_examined: int = MAX_EXAMINED) -> DeleteResult:
    """Delete the jobs that match ``where``, which must name a final state
    (FilterNotFinal otherwise); ValueError for a cursor not given here."""
    if where.state not in TERMINAL_STATES:
        raise FilterNotFinal("a delete by filter needs state kill, done or failed, "
                             "so that it matches only ended jobs")
    result = DeleteResult()
    positions = decode_cursor(cursor) if cursor else dict.fromkeys(store.keys.shards)
    index = store.index_for(where)
    now_ms = store.server_time_ms()

    def keep(job: dict[str, str]) -> bool:
        return where.matches(Job.from_hash(job), now_ms)

    while positions and result.examined < max_examined:
        shards = list(positions)
        with unavailable_on_redis_errors():
            pipe = store.client.pipeline(transaction=False)
            for shard in shards:
                next_entries(pipe, index(store.keys.shards[shard]), positions[shard], None)
            replies = pipe.execute()
        batch: list[str] = []
        for shard in shards:
            reads = 1 if positions[shard] is None else 2
            rows, exhausted = take_entries(replies[:reads], positions[shard])
            del replies[:reads]
            if rows:
                batch += [job_id for _, job_id in rows]
                positions[shard] = rows[-1]
            if exhausted:
                del positions[shard]
        for first in range(0, len(batch), BATCH):
            _delete_batch(store, batch[first:first + BATCH], result, keep)
        result.examined += len(batch)
    result.next_cursor = encode_cursor(positions) if positions else None
    return result
