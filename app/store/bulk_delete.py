"""Deleting ended jobs in bulk (POST /v1/jobs/commands with "delete"; admin).

Each job is deleted by its own deleteJob call, as DELETE /v1/jobs/{id} does
(the script refuses a job that has not ended): a round reads the type and
labels of up to ``BATCH`` jobs in one pipeline, then sends their deleteJob
calls in another. A filter must name a final state, so it matches only jobs
that can never change again; its walk goes newest first through the index
the listing would read, ``MAX_DELETE_EXAMINED`` entries a request at most, and
answers a cursor to continue from, as the other bulk commands do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.errors import FilterNotFinal, JobNotFound, StaleRead
from app.limits import MAX_DELETE_EXAMINED
from app.model import TERMINAL_STATES, Job
from app.store.bindings import Call
from app.store.bulk import BulkStore, decode_cursor, encode_cursor, next_entries, take_entries
from app.store.connection import unavailable_on_redis_errors
from app.store.listing import JobFilter
from app.store.scripts import DeleteJobCode
from app.store.writes import WritesStore

BATCH = 100


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


class BulkDeleteStore(BulkStore, WritesStore):
    def bulk_delete(self, *, ids: Sequence[str] | None = None, where: JobFilter | None = None,
                    cursor: str | None = None, max_examined: int = MAX_DELETE_EXAMINED
                    ) -> DeleteResult:
        """Delete ended jobs by ids, or by a filter that names a final state
        (FilterNotFinal otherwise); ValueError for a cursor not given here."""
        if ids is not None:
            result = DeleteResult()
            unique = list(dict.fromkeys(ids))
            for first in range(0, len(unique), BATCH):
                self._delete_batch(unique[first:first + BATCH], result)
            return result
        return self._delete_where(where or JobFilter(), cursor, max_examined)

    def _delete_batch(self, job_ids: Sequence[str], result: DeleteResult,
                      keep: Callable[[dict[str, str]], bool] | None = None) -> None:
        """Delete the ended ones of ``job_ids`` (with ``keep``: those whose hash it
        accepts); the others go to ``refused_ids`` (ids form only)."""
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self.keys.for_job(job_id).job(job_id))
            hashes = pipe.execute()
        delete = self.bindings.delete_job
        calls: list[Call] = []
        called: list[str] = []
        for job_id, job in zip(job_ids, hashes, strict=True):
            if keep is not None:
                if job and keep(job):
                    calls.append(delete.call(job_id, job["type"], job["labels"], sweep=False))
                    called.append(job_id)
                continue
            if not job:
                result.not_found += 1
                result.refused_ids.append(job_id)
            elif job["state"] not in TERMINAL_STATES:
                result.refused_ids.append(job_id)
            else:
                calls.append(delete.call(job_id, job["type"], job["labels"], sweep=False))
                called.append(job_id)
        if not calls:
            return
        with unavailable_on_redis_errors(write=True):
            replies = self.bindings.run_pipeline(calls)
        for job_id, reply in zip(called, replies, strict=True):
            code = delete.code(reply)
            if code == DeleteJobCode.DELETED:
                result.deleted += 1
            elif code == DeleteJobCode.STALE_READ:
                try:   # replaced meanwhile: the one-job path reads it again
                    self.delete(job_id)
                    result.deleted += 1
                except (JobNotFound, StaleRead):
                    pass
            elif keep is None:
                if code == DeleteJobCode.JOB_NOT_FOUND:
                    result.not_found += 1
                result.refused_ids.append(job_id)

    def _delete_where(self, where: JobFilter, cursor: str | None, max_examined: int
                      ) -> DeleteResult:
        if where.state not in TERMINAL_STATES:
            raise FilterNotFinal("a delete by filter needs state kill, done or failed, "
                                 "so that it matches only ended jobs")
        result = DeleteResult()
        positions = decode_cursor(cursor) if cursor else dict.fromkeys(self.keys.shards)
        index = self._index_for(where)
        now_ms = self.server_time_ms()

        def keep(job: dict[str, str]) -> bool:
            return where.matches(Job.from_hash(job), now_ms)

        while positions and result.examined < max_examined:
            shards = list(positions)
            with unavailable_on_redis_errors():
                pipe = self.client.pipeline(transaction=False)
                for shard in shards:
                    next_entries(pipe, index(self.keys.shards[shard]), positions[shard], None)
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
                self._delete_batch(batch[first:first + BATCH], result, keep)
            result.examined += len(batch)
        result.next_cursor = encode_cursor(positions) if positions else None
        return result
