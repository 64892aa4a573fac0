"""Upgrades of data written by earlier releases, run by each process at
start-up before it serves (check_store, app/serving/common.py; also before
import-legacy): each shard records the upgrades done in ``{P:<s>}:migrations``,
so a later start reads one set per shard and writes nothing.

- ``waiting-index``: the jobs waiting for a worker (state start, no heartbeat
  yet) registered before ``idx:waiting`` existed are put into it, in batches
  read with ZSCAN from the index of state start (a job there for the whole
  scan is read at least once; one that arrives meanwhile is indexed by the
  script that registers or resumes it), each checked again by
  lua/indexWaiting-4.lua.
"""

from __future__ import annotations

from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore
from app.store.keys import ShardKeys

WAITING_INDEX = "waiting-index"


class MigrationsStore(StoreCore):
    def upgrade(self, batch: int = 500) -> int:
        """Run the upgrades not yet done; returns how many jobs they changed."""
        shards = list(self.keys.shards.values())
        with unavailable_on_redis_errors():   # one round trip when all is done
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.sismember(shard.migrations, WAITING_INDEX)
            done = pipe.execute()
        return sum(self._index_waiting(shard, batch)
                   for shard, finished in zip(shards, done, strict=True) if not finished)

    def _index_waiting(self, shard: ShardKeys, batch: int) -> int:
        index = self.bindings.index_waiting
        added = 0
        cursor = 0
        while True:
            with unavailable_on_redis_errors():
                cursor, entries = self.client.zscan(shard.state_index("start"), cursor,
                                                    count=batch)
                reply = index.call(shard, [str(job_id) for job_id, _ in entries],
                                   last=cursor == 0)
                added += index.decode(self.bindings.run_pipeline([reply])[0])
            if cursor == 0:
                return added
