"""Listings: the jobs of one index per shard, merged newest first, with the
filter's other conditions checked on the jobs read."""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from app.model import Job, is_job_id
from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore
from app.store.keys import ShardKeys
from app.store.lexical import prefix_entries, text_entries
from app.store.paging import entries_below_each


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    type: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    stalled: bool | None = None
    started: bool | None = None      # has had a heartbeat
    worker: str | None = None        # the worker of the job's last heartbeat
    name_prefix: str | None = None

    def matches(self, job: Job, now_ms: int) -> bool:
        return ((self.state is None or job.state == self.state)
                and (self.type is None or job.type == self.type)
                and all(job.labels.get(k) == v for k, v in self.labels)
                and (self.stalled is None or job.stalled(now_ms) == self.stalled)
                and (self.started is None or (job.heartbeat_at is not None) == self.started)
                and (self.worker is None or job.worker == self.worker)
                and (self.name_prefix is None or job.name.startswith(self.name_prefix)))


@dataclass
class Page:
    jobs: list[Job]
    next_cursor: str | None
    now_ms: int
    scanned: int = 0


@dataclass(frozen=True)
class _Position:
    """Where a listing stopped: entries sort by (score, id), newest first."""

    score: int
    job_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.score}.{self.job_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> _Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
            score, job_id = raw.split(".")
            if is_job_id(job_id) and score.isdigit() and len(score) < 20:
                return cls(int(score), job_id)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        raise ValueError("invalid cursor")


# The key of one index in a shard: listings read the same index of every shard.
IndexOf = Callable[[ShardKeys], str]
# The next entries after a position, newest first, at most that many.
EntrySource = Callable[[_Position | None, int], list[tuple[int, str]]]


# A shard's first read of a listing: its even share of the page plus a margin
# (a page of 50 over 16 shards: 10 entries; one page in about 70 then reads
# one shard again).
_HEAD_MARGIN = 6


def _head_size(count: int, shards: int) -> int:
    return min(count, -(-count // shards) + _HEAD_MARGIN)


def _label_index_of(key: str, value: str) -> IndexOf:
    return lambda shard: shard.label_index(key, value)



class ListingStore(StoreCore):
    def list_jobs(self, where: JobFilter, *, limit: int = 50, cursor: str | None = None,
                  max_scan: int = 1000) -> Page:
        """Newest first. Entries come from one index (per shard) chosen from
        the filter; other conditions are checked on the jobs read. Each call
        reads at most ``max_scan`` jobs, so a page may be short but still carry
        a cursor: its cost depends on the page, never on how many jobs exist."""
        position = _Position.decode(cursor) if cursor else None
        now_ms = self.server_time_ms()
        next_entries = self._entry_source(where, now_ms)
        found: list[Job] = []
        scanned = 0
        exhausted = False
        while len(found) < limit and scanned < max_scan:
            want = min(limit - len(found), max_scan - scanned)
            entries = next_entries(position, want)
            jobs = self._read_jobs([job_id for _, job_id in entries])
            for (score, job_id), job in zip(entries, jobs, strict=True):
                scanned += 1
                position = _Position(score, job_id)
                if job is not None and where.matches(job, now_ms):
                    found.append(job)
            if len(entries) < want:
                exhausted = True
                break
        next_cursor = None if exhausted or position is None else position.encode()
        return Page(found, next_cursor, now_ms, scanned)

    def _entry_source(self, where: JobFilter, now_ms: int) -> EntrySource:
        """Where a listing takes its entries from, newest first: the worker's
        lexical index, the name index for a prefix with few enough entries,
        else the smallest time-ordered index the filter names."""
        shards = list(self.keys.shards.values())
        if where.worker is not None:
            worker = where.worker

            def by_worker(position: _Position | None, count: int) -> list[tuple[int, str]]:
                at = None if position is None else (position.score, position.job_id)
                with unavailable_on_redis_errors():
                    return text_entries(self.client, shards, lambda s: s.worker_index,
                                                worker, at, count)
            return by_worker
        if where.name_prefix is not None:
            with unavailable_on_redis_errors():
                named = prefix_entries(self.client, shards, lambda s: s.name_index,
                                               where.name_prefix)
            if named is not None:
                rows = named

                def by_name(position: _Position | None, count: int) -> list[tuple[int, str]]:
                    after = rows if position is None else \
                        [e for e in rows if e < (position.score, position.job_id)]
                    return after[:count]
                return by_name
        index = self._index_for(where)
        upper = now_ms if where.stalled else None
        return lambda position, count: self._merged_entries(index, position, upper, count)

    def _index_for(self, where: JobFilter) -> IndexOf:
        """The deadlines for stalled jobs (of the waiting jobs for those with no
        heartbeat yet); else the smallest index the filter names (idx:waiting
        for state=start&started=false), so a selective condition is not
        checked on a page's worth of jobs that fail it. Those indexes share one score (the time of
        registration): a cursor stays valid whichever of them is read."""
        if where.stalled:
            if where.started is False:
                return lambda shard: shard.waiting_deadlines
            return lambda shard: shard.deadlines
        candidates: list[IndexOf] = [_label_index_of(k, v) for k, v in where.labels]
        job_type, state = where.type, where.state
        if job_type:
            candidates.append(lambda shard: shard.type_index(job_type))
        if state == "start" and where.started is False:
            candidates.append(lambda shard: shard.waiting)  # a part of state start's
        elif state:
            candidates.append(lambda shard: shard.state_index(state))
        if len(candidates) < 2:
            return candidates[0] if candidates else lambda shard: shard.all_jobs
        shards = list(self.keys.shards.values())
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for index in candidates:
                for shard in shards:
                    pipe.zcard(index(shard))
            counts = pipe.execute()
        sizes = [sum(counts[i:i + len(shards)]) for i in range(0, len(counts), len(shards))]
        return candidates[sizes.index(min(sizes))]

    def _merged_entries(self, index: IndexOf, position: _Position | None, upper: int | None,
                        count: int) -> list[tuple[int, str]]:
        """The next ``count`` entries after ``position`` over all shards.

        Entries tied with the cursor's score are read in full, then a head of
        about count/shards (``_head_size``) below it per shard, and merged. A
        shard that returned all it was asked for and whose last entry is
        above the merge's ``count``-th may hold more entries of the page: only
        those shards are read again, below their last entry, for as many as
        could still be in the page; then the page is complete (every shard is
        exhausted or its unread entries are below the page's last)."""
        if count <= 0:
            return []
        at = None if position is None else (position.score, position.job_id)
        keys = [index(shard) for shard in self.keys.shards.values()]
        streams: list[list[tuple[int, str]]] = [[] for _ in keys]
        reads = [(i, at, _head_size(count, len(keys))) for i in range(len(keys))]
        page: list[tuple[int, str]] = []
        while reads:
            answers = entries_below_each(
                self.client, [(keys[i], start, asked) for i, start, asked in reads], upper)
            more = []   # the shards that may hold entries below those read
            for (i, _, asked), answer in zip(reads, answers, strict=True):
                streams[i].extend(answer)
                if len(answer) == asked:
                    more.append(i)
            page = list(itertools.islice(heapq.merge(*streams, reverse=True), count))
            cut = page[-1] if len(page) == count else None
            reads = []
            for i in more:
                last = streams[i][-1]
                if cut is not None and last <= cut:
                    continue
                # The page's entries at or above ``last`` are known; the rest
                # of it may come from this shard, below ``last``.
                reads.append((i, last, count - sum(1 for entry in page if entry >= last)))
        return page

    def _read_jobs(self, job_ids: list[str]) -> list[Job | None]:
        if not job_ids:
            return []
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self.keys.for_job(job_id).job(job_id))
            hashes = pipe.execute()
        return [Job.from_hash(h) if h else None for h in hashes]
