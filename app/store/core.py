"""What every room of the store shares: the client, the settings, the key
schema, the scripts and their bindings; and the reads of single jobs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from app.errors import JobNotFound
from app.model import Job
from app.store.bindings import Bindings
from app.store.connection import StoreClient, unavailable_on_redis_errors
from app.store.keys import KeySchema
from app.store.scripts import Scripts


def decoded(values: Sequence[object]) -> list[str | None]:
    """HMGET's answer as it is: the client decodes replies (decode_responses),
    which redis-py's types do not know."""
    return cast("list[str | None]", values)


@dataclass
class StoreCore:
    client: StoreClient
    history_cap: int = 100
    retention_seconds: int = 7 * 24 * 3600
    idempotency_ttl: int = 24 * 3600
    keys: KeySchema = field(default_factory=KeySchema)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.client)
        self.bindings = Bindings(self.scripts, self.keys)

    def server_time_ms(self) -> int:
        with unavailable_on_redis_errors():
            seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- reads of single jobs -------------------------------------------------

    def get(self, job_id: str) -> Job:
        job, _ = self.get_with_time(job_id)
        return job

    def state(self, job_id: str) -> str:
        """Just the job's state, with one HMGET: the old API's GET /jobState
        answers nothing else, so it skips the script, the server time and
        the decoding of the whole job."""
        with unavailable_on_redis_errors():
            (state,) = decoded(self.client.hmget(self.keys.for_job(job_id).job(job_id), "state"))
        if state is None:
            raise JobNotFound()
        return state

    def get_with_time(self, job_id: str) -> tuple[Job, int]:
        """The job and the Redis server time, in one round trip."""
        read = self.bindings.read_job
        with unavailable_on_redis_errors():
            job, now_ms = read.decode(read.call(job_id).run())
        if job is None:
            raise JobNotFound()
        return job, now_ms

    def versions(self, job_ids: Sequence[str]) -> list[int | None]:
        """Each job's version (None for a job that does not exist), one
        pipeline: how a watch tells which of many jobs changed."""
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                # HMGET, not HGET: one command less for a restricted ACL user.
                pipe.hmget(self.keys.for_job(job_id).job(job_id), "version")
            replies = pipe.execute()
        return [None if v is None else int(v) for (v,) in replies]

    def get_many_with_time(self, job_ids: Sequence[str]) -> tuple[list[Job | None], int]:
        """Jobs (None where there is none) and the Redis server time, in one
        pipeline of readJob calls."""
        read = self.bindings.read_job
        calls = [read.call(job_id) for job_id in job_ids]
        if not calls:
            return [], self.server_time_ms()
        with unavailable_on_redis_errors():
            replies = self.bindings.run_pipeline(calls)
        answers = [read.decode(reply) for reply in replies]
        return [job for job, _ in answers], max(now_ms for _, now_ms in answers)

    def history(self, job_id: str) -> list[dict[str, Any]]:
        shard = self.keys.for_job(job_id)
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(shard.job(job_id))
            pipe.lrange(shard.history(job_id), 0, -1)
            exists, entries = pipe.execute()
        if not exists:
            raise JobNotFound()
        return [json.loads(e) for e in entries]
