"""Run an ended job again (POST /v1/jobs/{id}/rerun): one rerunJob call.

The new job takes the old one's shard (its id starts with the same hex
digit), so the old job, the new one and every index entry are in one slot and
one script checks the old job and writes both. An Idempotency-Key is scoped
to the caller and the old job: the same key on another job is another rerun.
"""

from __future__ import annotations

import json

from app.errors import JobNotFound, StaleRead
from app.model import Job, new_job_id
from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore, decoded
from app.store.scripts import RerunJobCode

# The old job names its newest reruns, at most this many.
KEPT_RERUNS = 100


class RerunStore(StoreCore):
    def rerun(self, old_id: str, *, actor: str = "", owner: str = "",
              idempotency_key: str | None = None) -> tuple[Job, bool, int]:
        """The new job, whether it was created now (False: an Idempotency-Key
        replay) and the Redis server time. JobNotFound, NotEnded."""
        shard = self.keys.for_job(old_id)
        binding = self.bindings.rerun_job
        for _ in range(3):
            # The index keys follow from the type and labels, which never change;
            # the script checks them again (STALE_READ if the job was replaced).
            with unavailable_on_redis_errors():
                job_type, labels = decoded(self.client.hmget(shard.job(old_id), "type",
                                                             "labels"))
            if job_type is None or labels is None:
                raise JobNotFound()
            new_id = new_job_id(shard.shard)
            call = binding.call(old_id, new_id, job_type, labels, actor=actor, owner=owner,
                                history_cap=self.history_cap, idempotency_key=idempotency_key,
                                idempotency_ttl=self.idempotency_ttl, kept_reruns=KEPT_RERUNS)
            with unavailable_on_redis_errors(write=True):
                raw = call.run()
            reply = binding.decode(raw)
            code = int(reply[0])
            if code == RerunJobCode.STALE_READ:
                continue
            if code == RerunJobCode.CREATED:
                now_ms = int(reply[1])
                job = Job(id=new_id, type=job_type, state="start", version=1,
                          created_at=now_ms, updated_at=now_ms, name=reply[2],
                          labels=json.loads(labels), heartbeat_timeout=int(reply[3]),
                          owner=owner, retry_of=old_id)
                return job, True, now_ms
            # EXISTS: this very call, retried after a lost reply; REPLAY: the
            # job of the first request with this key.
            existing = reply[1] if code == RerunJobCode.REPLAY else new_id
            job, now_ms = self.get_with_time(existing)
            return job, existing == new_id, now_ms
        raise StaleRead("the job changed while it was being read")
