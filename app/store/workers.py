"""The workers seen in heartbeats (GET /v1/workers), and forgetting silent ones.

recordHeartbeats keeps, per shard, ``{P:<s>}:workers`` (each worker's last
heartbeat in that shard) and ``{P:<s>}:workers:jobs`` (field
``"<state> <worker>"``: how many of the shard's jobs whose last heartbeat
named the worker are in that state); applyCommand(s) move a job between the
state counts of its worker, deleteJob takes it off. A worker's last heartbeat
is the latest over the shards.

The list is newest heartbeat first. Each shard's set is read from the
cursor down and merged; a worker appears in several shards, and is listed at
the place of its latest heartbeat only (ZMSCORE over every shard tells which
that is), so paging never repeats nor skips one. Stalled jobs are counted
from the ``deadline`` index: the most recently due ``STALLED_READ`` per shard,
whose ``worker`` field is read: an exact count while no shard has more
stalled jobs than that (16,000 in all), else a lower bound, which
``stalled_exact`` says (it keeps a page's cost bounded at any number of jobs).
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.model import STATES
from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore
from app.store.keys import ShardKeys
from app.store.paging import entries_below

# The words of the dashboard's vocabulary, per state.
STATE_WORDS = {"start": "running", "pause": "paused", "kill": "killed", "done": "done",
               "failed": "failed"}
STALLED_READ = 1000
# Workers forgotten per shard and sweep (the sweep runs once a minute).
DROP_BATCH = 1000
_MAX_ROUNDS = 8

Position = tuple[int, str]   # (last heartbeat ms, name), the list goes from the largest down


@dataclass
class WorkerInfo:
    name: str
    last_heartbeat_at: int
    jobs: dict[str, int] = field(default_factory=dict)
    stalled: int = 0
    stalled_exact: bool = True   # False: ``stalled`` is a lower bound (see above)


def encode_cursor(position: Position) -> str:
    raw = f"{position[0]}.{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ms, _, name = raw.partition(".")
        if ms.isdigit() and len(ms) < 16 and name:
            return int(ms), name
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise ValueError("invalid cursor")


def list_workers(store: StoreCore, *, limit: int = 50, cursor: str | None = None
                 ) -> tuple[list[WorkerInfo], str | None, int]:
    """A page of workers, newest heartbeat first; the next cursor (None at the
    end) and the Redis server time. ValueError for a cursor not given here."""
    position = decode_cursor(cursor) if cursor else None
    now_ms = store.server_time_ms()
    shards = list(store.keys.shards.values())
    page: list[Position] = []
    exhausted = False
    for _ in range(_MAX_ROUNDS):
        heads = entries_below(store.client, [shard.workers for shard in shards], position,
                              limit)
        merged = list(heapq.merge(*heads, reverse=True))
        # A shard whose head is full may hold more entries just below its last
        # one: the merge is complete only down to the largest such last entry.
        full = [head[-1] for head in heads if len(head) == limit]
        safe = max(full) if full else None
        if merged:
            names = sorted({name for _, name in merged})
            with unavailable_on_redis_errors():
                pipe = store.client.pipeline(transaction=False)
                for shard in shards:
                    pipe.zmscore(shard.workers, names)
                latest = {name: max(int(s or 0) for s in scores)
                          for name, scores in zip(names, zip(*pipe.execute(), strict=True),
                                                  strict=True)}
            listed = {name for _, name in page}
            for ms, name in merged:
                if safe is not None and (ms, name) < safe:
                    break
                # Listed at its latest heartbeat only, once.
                if latest[name] == ms and name not in listed:
                    page.append((ms, name))
                    listed.add(name)
                position = (ms, name)
                if len(page) == limit:
                    break
        if not full and (not merged or position == merged[-1]):
            exhausted = True
            break
        if len(page) == limit:
            break
    workers = [WorkerInfo(name, ms) for ms, name in page]
    _count_jobs(store, shards, workers, now_ms)
    next_cursor = None if exhausted or position is None else encode_cursor(position)
    return workers, next_cursor, now_ms


def _count_jobs(store: StoreCore, shards: Sequence[ShardKeys], workers: list[WorkerInfo],
                now_ms: int) -> None:
    if not workers:
        return
    fields = [f"{state} {w.name}" for w in workers for state in STATES]
    with unavailable_on_redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for shard in shards:
            pipe.hmget(shard.worker_jobs, fields)
        for shard in shards:
            pipe.zrevrangebyscore(shard.deadlines, f"({now_ms}", "-inf", start=0,
                                  num=STALLED_READ)
        replies = pipe.execute()
    counts, stalled_ids = replies[:len(shards)], replies[len(shards):]
    if any(len(ids) == STALLED_READ for ids in stalled_ids):
        for worker in workers:
            worker.stalled_exact = False
    for i, worker in enumerate(workers):
        for j, state in enumerate(STATES):
            total = sum(int(shard_counts[i * len(STATES) + j] or 0) for shard_counts in counts)
            worker.jobs[STATE_WORDS[state]] = total
    by_name = {w.name: w for w in workers}
    ids = [(shard, job_id) for shard, shard_ids in zip(shards, stalled_ids, strict=True)
           for job_id in shard_ids]
    if not ids:
        return
    with unavailable_on_redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for shard, job_id in ids:
            pipe.hmget(shard.job(job_id), "worker")
        for (name,) in pipe.execute():
            if name in by_name:
                by_name[name].stalled += 1


class WorkersStore(StoreCore):
    def workers(self, *, limit: int = 50, cursor: str | None = None
                ) -> tuple[list[WorkerInfo], str | None, int]:
        """A page of the workers seen in heartbeats, newest heartbeat first;
        the next cursor (None at the end) and the Redis server time."""
        return list_workers(self, limit=limit, cursor=cursor)

    def drop_silent_workers(self, now_ms: int) -> int:
        """Forget the workers silent for the retention period (one dropWorkers
        call per shard, one pipeline); returns how many."""
        drop = self.bindings.drop_workers
        cutoff = now_ms - self.retention_seconds * 1000
        calls = [drop.call(shard, cutoff, DROP_BATCH) for shard in self.keys.shards.values()]
        with unavailable_on_redis_errors(write=True):
            replies = self.bindings.run_pipeline(calls)
        return sum(drop.decode(reply) for reply in replies)
