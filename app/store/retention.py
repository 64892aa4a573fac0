"""The retention sweep: finished jobs whose retention has run out are deleted
(deleteJob), after clearOrphans has cleared the entries nothing can delete."""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import JobNotFound, NotDue
from app.store.connection import unavailable_on_redis_errors
from app.store.scripts import ClearOrphansCode
from app.store.workers import WorkersStore
from app.store.writes import WritesStore


class RetentionStore(WritesStore, WorkersStore):
    def sweep_expired(self, batch: int = 200, job_types: Sequence[str] = ()) -> int:
        """Delete terminal jobs whose retention has run out, up to ``batch`` per
        shard; returns how many due entries were dealt with (0: none left).

        First ``clearOrphans`` removes the entries of jobs that are gone (and of
        ``job_types``' indexes) and stale entries of unfinished jobs, in one
        pipeline of one call per shard: an entry that cannot be deleted is
        never read again, so it cannot hold up the jobs due after it."""
        now_ms = self.server_time_ms()
        # Workers silent for the retention period leave GET /v1/workers.
        self.drop_silent_workers(now_ms)
        shards = list(self.keys.shards.values())
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.zrangebyscore(shard.expiries, "-inf", now_ms, start=0, num=batch)
            due_by_shard = pipe.execute()
        clear = self.bindings.clear_orphans
        calls = [clear.call(shard, ids, job_types)
                 for shard, ids in zip(shards, due_by_shard, strict=True) if ids]
        if not calls:
            return 0
        with unavailable_on_redis_errors():
            replies = self.bindings.run_pipeline(calls)
        present = [job_id for ids, reply in zip([i for i in due_by_shard if i], replies,
                                                strict=True)
                   for job_id, code in zip(ids, clear.decode(reply), strict=True)
                   if code == ClearOrphansCode.PRESENT]
        handled = sum(len(ids) for ids in due_by_shard) - len(present)
        for job_id in present:
            try:
                self.delete(job_id, sweep=True)
            except (JobNotFound, NotDue):
                pass  # deleted meanwhile, or its retention was renewed
            handled += 1
        return handled
