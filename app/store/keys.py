"""The Redis key schema (see docs/redis-keys.md).

Every key of one job and every index entry it owns carry the hash tag of the
job's shard, ``{<prefix>:<hex digit>}``, so each script call touches one
cluster slot, and the listing indexes are spread over 16 slots.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.model import SHARDS, STATES, shard_of


def _digest(text: str) -> str:
    # Client-supplied text (labels, Idempotency-Key) never appears in a key
    # name as such: only its SHA-1.
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ShardKeys:
    prefix: str
    shard: str

    @property
    def tag(self) -> str:
        return f"{{{self.prefix}:{self.shard}}}"

    def job(self, job_id: str) -> str:
        return f"{self.tag}:job:{job_id}"

    def history(self, job_id: str) -> str:
        return f"{self.tag}:hist:{job_id}"

    @property
    def all_jobs(self) -> str:
        return f"{self.tag}:idx:all"

    def state_index(self, state: str) -> str:
        return f"{self.tag}:idx:state:{state}"

    def state_indexes(self) -> list[str]:
        return [self.state_index(s) for s in STATES]

    def type_index(self, job_type: str) -> str:
        return f"{self.tag}:idx:type:{job_type}"

    def label_index(self, key: str, value: str) -> str:
        return f"{self.tag}:idx:label:{_digest(key + '=' + value)}"

    @property
    def deadlines(self) -> str:
        return f"{self.tag}:deadline"

    @property
    def expiries(self) -> str:
        return f"{self.tag}:expiry"

    @property
    def label_counts(self) -> str:
        return f"{self.tag}:labels"

    @property
    def changes(self) -> str:
        return f"{self.tag}:changes"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.tag}:idem:{_digest(scope + chr(0) + key)}"

    @property
    def name_index(self) -> str:
        """Lexical: members "<name>\\0<score, 20 digits><id>" (app/store/lexical.py)."""
        return f"{self.tag}:idx:name"

    @property
    def worker_index(self) -> str:
        """Lexical: members "<worker>\\0<score, 20 digits><id>" (app/store/lexical.py)."""
        return f"{self.tag}:idx:worker"

    @property
    def workers(self) -> str:
        """Member: a worker's name; score: its last heartbeat (ms)."""
        return f"{self.tag}:workers"

    @property
    def worker_jobs(self) -> str:
        """Field "<state> <worker>": that worker's jobs in that state."""
        return f"{self.tag}:workers:jobs"

    @property
    def waiting(self) -> str:
        """Jobs in state start with no heartbeat yet ("waiting for a worker"),
        scored like idx:all."""
        return f"{self.tag}:idx:waiting"

    @property
    def waiting_deadlines(self) -> str:
        """The heartbeat deadlines of the jobs of idx:waiting that have a timeout:
        how many of them are stalled."""
        return f"{self.tag}:deadline:waiting"

    @property
    def migrations(self) -> str:
        """Set: the upgrades done in this shard (app/store/migrations.py)."""
        return f"{self.tag}:migrations"

    @property
    def run_times(self) -> str:
        """Histogram of run times per minute and type (app/store/run_times.py)."""
        return f"{self.tag}:runtimes"

    def heartbeat_keys(self) -> list[str]:
        """The fixed KEYS of recordHeartbeats-6, before the job hashes."""
        return [self.deadlines, self.worker_index, self.workers, self.worker_jobs,
                self.waiting, self.waiting_deadlines]

    def rerun_idempotency(self, scope: str, job_id: str, key: str) -> str:
        """An Idempotency-Key of a rerun: scoped to the caller and the old job."""
        return f"{self.tag}:idem:{_digest(scope + chr(0) + job_id + chr(0) + key)}"

    @property
    def channel(self) -> str:
        return f"{self.tag}:events"


def legacy_job_key(job_id: str) -> str:
    """The Go service's hash of a job (import-legacy's source)."""
    return f"job:{job_id}"


class KeySchema:
    def __init__(self, prefix: str = "kc") -> None:
        self.prefix = prefix
        self.shards = {s: ShardKeys(prefix, s) for s in SHARDS}

    def for_job(self, job_id: str) -> ShardKeys:
        return self.shards[shard_of(job_id)]

    def idempotency_shard(self, scope: str, key: str) -> ShardKeys:
        return self.shards[_digest(scope + chr(0) + key)[0]]
