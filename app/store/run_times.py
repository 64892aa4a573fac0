"""Run times of the jobs finished in the last hour, by type (GET /v1/stats).

applyCommand and applyCommands keep ``{P:<s>}:runtimes``, a histogram per
shard: field ``"<minute> <bucket> <type>"`` counts the jobs of that type that
finished in that minute with a run time in that bucket, bucket
``floor(4 * log2(ms))`` (four per doubling, each about 19 % wide; run time:
from the first heartbeat, or from registration without one). The fields older
than an hour are deleted by the first finish of each minute, so the reads
here are bounded by 61 minutes x types x buckets, never by the number of jobs.
The median and the 95th percentile are the geometric middle of the bucket that
holds them: within about 9 % of the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.store.keys import ShardKeys

if TYPE_CHECKING:
    from app.store.connection import StoreClient

BUCKETS_PER_DOUBLING = 4


@dataclass(frozen=True)
class RunTimes:
    count: int
    median_seconds: float
    p95_seconds: float

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "median_seconds": self.median_seconds,
                "p95_seconds": self.p95_seconds}


def _bucket_seconds(bucket: int) -> float:
    return round(2 ** ((bucket + 0.5) / BUCKETS_PER_DOUBLING) / 1000, 3)


def _quantile(buckets: dict[int, int], total: int, q: float) -> float:
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= rank:
            return _bucket_seconds(bucket)
    raise AssertionError("rank beyond the total")


def read_run_times(client: StoreClient, shards: Sequence[ShardKeys],
                   now_ms: int) -> dict[str, RunTimes]:
    """Per type: the jobs finished in the last 60 minutes (this one included)."""
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.hgetall(shard.run_times)
    oldest = now_ms // 60_000 - 59
    by_type: dict[str, dict[int, int]] = {}
    for fields in pipe.execute():
        for name, count in fields.items():
            parts = name.split(" ", 2)
            if len(parts) < 3 or int(parts[0]) < oldest:
                continue
            buckets = by_type.setdefault(parts[2], {})
            buckets[int(parts[1])] = buckets.get(int(parts[1]), 0) + int(count)
    answer = {}
    for job_type, buckets in sorted(by_type.items()):
        total = sum(buckets.values())
        answer[job_type] = RunTimes(total, _quantile(buckets, total, 0.5),
                                    _quantile(buckets, total, 0.95))
    return answer
