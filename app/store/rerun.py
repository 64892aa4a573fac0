"""Run an ended job again (POST /v1/jobs/{id}/rerun): one rerunJob call.

The new job takes the old one's shard (its id starts with the same hex
digit), so the old job, the new one and every index entry are in one slot and
one script checks the old job and writes both. An Idempotency-Key is scoped
to the caller and the old job: the same key on another job is another rerun.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from app.errors import JobNotFound, NotEnded, StaleRead, raise_for_code
from app.model import Job, new_job_id
from app.store.connection import unavailable_on_redis_errors
from app.store.scripts import RerunJobCode

if TYPE_CHECKING:
    from app.store import JobStore

# The old job names its newest reruns, at most this many.
KEPT_RERUNS = 100


def rerun(store: JobStore, old_id: str, *, actor: str = "", owner: str = "",
          idempotency_key: str | None = None) -> tuple[Job, bool, int]:
    """The new job, whether it was created now (False: an Idempotency-Key
    replay) and the Redis server time. JobNotFound, NotEnded."""
    shard = store.keys.for_job(old_id)
    for _ in range(3):
        # The index keys follow from the type and labels, which never change;
        # the script checks them again (STALE_READ if the job was replaced).
        with unavailable_on_redis_errors():
            job_type, labels = cast("list[str | None]",
                                    store.client.hmget(shard.job(old_id), "type", "labels"))
        if job_type is None or labels is None:
            raise JobNotFound()
        new_id = new_job_id(shard.shard)
        if idempotency_key is None:
            idem_key, idem_ttl = f"{shard.tag}:idem:-", 0
        else:
            idem_key = shard.rerun_idempotency(actor, old_id, idempotency_key)
            idem_ttl = store.idempotency_ttl
        parsed = json.loads(labels)
        keys = [shard.job(old_id), shard.job(new_id), shard.history(new_id), shard.all_jobs,
                shard.state_index("start"), shard.type_index(job_type), shard.deadlines,
                idem_key, shard.label_counts, shard.changes, shard.name_index,
                *(shard.label_index(k, v) for k, v in sorted(parsed.items()))]
        args = [new_id, job_type, labels, actor, store.history_cap, idem_ttl, "rerun",
                shard.channel, owner, KEPT_RERUNS]
        with unavailable_on_redis_errors(write=True):
            reply = store.scripts.rerun_job(keys, args)
        code = reply[0]
        if code == RerunJobCode.STALE_READ:
            continue
        if code == RerunJobCode.ILLEGAL_TRANSITION:
            raise NotEnded(f"the job is in state {reply[1]}; only an ended job runs again",
                           current_state=reply[1], version=int(reply[2]))
        raise_for_code(reply)
        if code == RerunJobCode.CREATED:
            now_ms = int(reply[1])
            job = Job(id=new_id, type=job_type, state="start", version=1, created_at=now_ms,
                      updated_at=now_ms, name=reply[2], labels=parsed,
                      heartbeat_timeout=int(reply[3]), owner=owner, retry_of=old_id)
            return job, True, now_ms
        existing = reply[1] if code == RerunJobCode.REPLAY else new_id
        job, now_ms = store.get_with_time(existing)
        return job, existing == new_id, now_ms
    raise StaleRead("the job changed while it was being read")
