"""Counts for an overview (GET /v1/stats, the dashboard), from the indexes and
the counters the scripts keep."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.model import STATES
from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore
from app.store.keys import ShardKeys
from app.store.run_times import RunTimes, read_run_times


@dataclass
class Stats:
    now_ms: int
    total: int = 0
    states: dict[str, int] = field(default_factory=dict)
    stalled: int = 0
    waiting: int = 0      # state start, no heartbeat yet, not stalled
    types: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)     # "key:value": jobs, largest first
    changes_per_minute: list[tuple[int, int]] = field(default_factory=list)  # (ms, count)
    run_times: dict[str, RunTimes] = field(default_factory=dict)  # by type



class StatsStore(StoreCore):
    def count_by_state(self) -> dict[str, int]:
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in self.keys.shards.values():
                for state in STATES:
                    pipe.zcard(shard.state_index(state))
            counts = pipe.execute()
        totals = dict.fromkeys(STATES, 0)
        for i, count in enumerate(counts):
            totals[STATES[i % len(STATES)]] += count
        return totals

    def stats(self, job_types: Sequence[str], top_labels: int = 50) -> Stats:
        """Counts for an overview, from the indexes and the counters the
        scripts keep: a few pipelines, whatever the number of jobs."""
        now_ms = self.server_time_ms()
        shards = list(self.keys.shards.values())
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.zcard(shard.all_jobs)
                for state in STATES:
                    pipe.zcard(shard.state_index(state))
                pipe.zcount(shard.deadlines, "-inf", f"({now_ms}")
                pipe.zcard(shard.waiting)
                pipe.zcount(shard.waiting_deadlines, "-inf", f"({now_ms}")
                for job_type in job_types:
                    pipe.zcard(shard.type_index(job_type))
                pipe.hgetall(shard.changes)
            replies = iter(pipe.execute())
        result = Stats(now_ms, states=dict.fromkeys(STATES, 0),
                       types=dict.fromkeys(job_types, 0))
        minutes: dict[int, int] = {}
        for _ in shards:
            result.total += next(replies)
            for state in STATES:
                result.states[state] += next(replies)
            result.stalled += next(replies)
            result.waiting += next(replies) - next(replies)
            for job_type in job_types:
                result.types[job_type] += next(replies)
            for minute, count in next(replies).items():
                minutes[int(minute)] = minutes.get(int(minute), 0) + int(count)
        this_minute = now_ms // 60_000
        result.changes_per_minute = [(m * 60_000, minutes.get(m, 0))
                                     for m in range(this_minute - 59, this_minute + 1)]
        result.labels = self._largest_labels(shards, top_labels)
        with unavailable_on_redis_errors():
            result.run_times = read_run_times(self.client, shards, now_ms)
        return result

    def _largest_labels(self, shards: list[ShardKeys], top: int,
                        max_depth: int = 800) -> dict[str, int]:
        """The ``top`` labels with the most jobs over all shards, exactly: the
        largest of each shard are the candidates, and their totals over every
        shard are read (ZMSCORE). A label that is no candidate has, in each
        shard, at most the count of that shard's last one read; while that
        bound could beat the last of the top, each shard is read deeper (up to
        ``max_depth`` labels a shard, past which the top is the candidates')."""
        depth = top
        while True:
            with unavailable_on_redis_errors():
                pipe = self.client.pipeline(transaction=False)
                for shard in shards:
                    pipe.zrevrange(shard.label_counts, 0, depth - 1, withscores=True)
                heads = pipe.execute()
            candidates = sorted({label for head in heads for label, _ in head})
            if not candidates:
                return {}
            with unavailable_on_redis_errors():
                pipe = self.client.pipeline(transaction=False)
                for shard in shards:
                    pipe.zmscore(shard.label_counts, candidates)
                totals = [sum(int(c or 0) for c in counts)
                          for counts in zip(*pipe.execute(), strict=True)]
            ranked = sorted(zip(candidates, totals, strict=True), key=lambda p: (-p[1], p[0]))
            bound = sum(int(head[-1][1]) for head in heads if len(head) == depth)
            if bound == 0 or ranked[min(top, len(ranked)) - 1][1] >= bound \
                    or depth >= max_depth:
                return dict(ranked[:top])
            depth *= 4
