"""Changes of single jobs: register, command, heartbeat, delete; one script
call each (heartbeats: one per shard touched)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import JobNotFound, StaleRead
from app.model import Job, new_job_id, shard_of
from app.store.bindings import Call, Reply, labels_json
from app.store.connection import unavailable_on_redis_errors
from app.store.core import StoreCore, decoded
from app.store.scripts import RecordHeartbeatsCode, RegisterJobCode


@dataclass(frozen=True)
class HeartbeatReport:
    """What a worker reports; ``None`` means "not sent, keep the old value"."""

    job_id: str
    worker: str | None = None
    progress: float | None = None
    message: str | None = None
    observed_state: str | None = None

    def script_args(self) -> list[str]:
        return heartbeat_args(self.worker, self.progress, self.message, self.observed_state)


def heartbeat_args(worker: str | None, progress: float | None, message: str | None,
                   observed_state: str | None) -> list[str]:
    """One job's ARGV of recordHeartbeats: the mask of the fields sent (1 worker,
    2 progress, 4 message, 8 observed_state), then the four, "" when not sent."""
    mask = ((worker is not None) | (progress is not None) << 1 | (message is not None) << 2
            | (observed_state is not None) << 3)
    return [str(mask), "" if worker is None else worker,
            "" if progress is None else repr(progress), "" if message is None else message,
            "" if observed_state is None else observed_state]


@dataclass(frozen=True)
class HeartbeatAnswer:
    job_id: str
    found: bool
    state: str = ""
    version: int = 0
    observed_state: str = ""
    not_owner: bool = False  # refused: the caller does not own the job; nothing recorded

    @classmethod
    def from_reply(cls, job_id: str, entry: Sequence[Any]) -> HeartbeatAnswer:
        if entry[0] == RecordHeartbeatsCode.JOB_NOT_FOUND:
            return cls(job_id, False)
        if entry[0] == RecordHeartbeatsCode.NOT_OWNER:
            return cls(job_id, True, not_owner=True)
        return cls(job_id, True, entry[0], int(entry[1]), entry[2])


class WritesStore(StoreCore):
    def register(self, job_type: str, *, name: str = "", labels: dict[str, str] | None = None,
                 heartbeat_timeout: int = 0, actor: str = "", idempotency_key: str | None = None,
                 fingerprint: str = "", owner: str = "") -> tuple[Job, bool]:
        """Register a job; returns it and whether it was created now (False for
        an Idempotency-Key replay). ``owner``: the worker token that alone may
        heartbeat and finish it ("" for none)."""
        job, created, _ = self.register_with_time(
            job_type, name=name, labels=labels, heartbeat_timeout=heartbeat_timeout,
            actor=actor, idempotency_key=idempotency_key, fingerprint=fingerprint, owner=owner)
        return job, created

    def register_with_time(self, job_type: str, *, name: str = "",
                           labels: dict[str, str] | None = None, heartbeat_timeout: int = 0,
                           actor: str = "", idempotency_key: str | None = None,
                           fingerprint: str = "", owner: str = "") -> tuple[Job, bool, int]:
        """``register``, and the Redis server time of the answer (a replayed
        job may be stalled by now)."""
        labels = labels or {}
        job_id, call = self.register_call(job_type, name, labels, heartbeat_timeout, actor,
                                          idempotency_key, fingerprint, owner)
        with unavailable_on_redis_errors(write=True):
            reply = call.run()
        reply = self.bindings.register_job.decode(reply)
        if reply[0] == RegisterJobCode.CREATED:
            # As Job.from_hash would read the hash the script wrote from args.
            now_ms = int(reply[1])
            job = Job(id=job_id, type=job_type, state="start", version=1, created_at=now_ms,
                      updated_at=now_ms, name=name, labels=json.loads(labels_json(labels)),
                      heartbeat_timeout=int(heartbeat_timeout), owner=owner)
            return job, True, now_ms
        # EXISTS: this very call, retried by redis-py after its reply was lost.
        # REPLAY: the job of an earlier request, or of this very call likewise
        # (then the id is the one made here).
        existing = reply[1] if reply[0] == RegisterJobCode.REPLAY else job_id
        job, now_ms = self.get_with_time(existing)
        return job, existing == job_id, now_ms

    def register_call(self, job_type: str, name: str, labels: dict[str, str],
                      heartbeat_timeout: int, actor: str, idempotency_key: str | None,
                      fingerprint: str, owner: str) -> tuple[str, Call]:
        """A new id, and the registerJob call for it."""
        if idempotency_key is not None:
            shard = self.keys.idempotency_shard(actor, idempotency_key)
            job_id = new_job_id(shard.shard)
        else:
            job_id = new_job_id()
            shard = self.keys.for_job(job_id)
        return job_id, self.bindings.register_job.call(
            shard, job_id, job_type, name=name, labels=labels,
            heartbeat_timeout=heartbeat_timeout, actor=actor, history_cap=self.history_cap,
            idempotency_key=idempotency_key, idempotency_ttl=self.idempotency_ttl,
            fingerprint=fingerprint, owner=owner)

    def apply_command(self, job_id: str, command: str, *, actor: str = "", reason: str = "",
                      expected_version: int | None = None, owner: str = "",
                      idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Apply a command; returns the job after it and whether the state changed.
        ``owner``: the caller must own the job (a worker token), "" for any job.
        ``idempotency_key``: the client's key for this command; a retry with the
        same key (same caller, same command) is not applied twice."""
        job, changed, _ = self.apply_command_with_time(
            job_id, command, actor=actor, reason=reason, expected_version=expected_version,
            owner=owner, idempotency_key=idempotency_key)
        return job, changed

    def apply_command_with_time(self, job_id: str, command: str, *, actor: str = "",
                                reason: str = "", expected_version: int | None = None,
                                owner: str = "", idempotency_key: str | None = None,
                                ) -> tuple[Job, bool, int]:
        """``apply_command``, and the Redis server time of the answer (a
        repeated ``start`` leaves a stalled job stalled)."""
        # The operation id lets the script recognise a retry of this very command
        # after a lost reply (redis-py's, or the client's with the same key), and
        # not apply it twice.
        if idempotency_key is None:
            operation = secrets.token_hex(6)
        else:
            operation = hashlib.sha256(
                f"{actor}\n{command}\n{idempotency_key}".encode()).hexdigest()[:16]
        binding = self.bindings.apply_command
        call = binding.call(job_id, command, actor=actor, reason=reason,
                            expected_version=expected_version, history_cap=self.history_cap,
                            retention_seconds=self.retention_seconds, operation=operation,
                            owner=owner)
        with unavailable_on_redis_errors(write=True):
            reply = call.run()
        return binding.decode(reply, owner=owner)

    def heartbeats(self, reports: Sequence[HeartbeatReport], *,
                   owner: str = "") -> list[HeartbeatAnswer]:
        """Record many heartbeats: one script call per shard touched, all of
        them in one pipeline. With ``owner``, a job the caller does not own is
        answered ``not_owner`` and not written; the others are recorded."""
        replies = self.record_heartbeats([r.job_id for r in reports],
                                         [r.script_args() for r in reports], owner=owner)
        return [HeartbeatAnswer.from_reply(report.job_id, entry)
                for report, entry in zip(reports, replies, strict=True)]

    def record_heartbeats(self, job_ids: Sequence[str], job_args: Sequence[Sequence[str]], *,
                          owner: str = "") -> list[Reply]:
        """``heartbeats`` without an object per job (the batch's hot path):
        ``job_args`` are each job's ``heartbeat_args``; the answer is the
        script's entry for each job, in order (see lua/recordHeartbeats-6.lua)."""
        by_shard: dict[str, list[int]] = {}
        for index, job_id in enumerate(job_ids):
            name = shard_of(job_id)
            indexes = by_shard.get(name)
            if indexes is None:
                by_shard[name] = [index]
            else:
                indexes.append(index)
        binding = self.bindings.record_heartbeats
        calls = [binding.call(self.keys.shards[name], [job_ids[i] for i in indexes],
                              [job_args[i] for i in indexes], owner)
                 for name, indexes in by_shard.items()]
        with unavailable_on_redis_errors(write=True):
            replies = self.bindings.run_pipeline(calls)
        entries: list[Reply] = [None] * len(job_ids)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            for i, entry in zip(indexes, reply, strict=True):
                entries[i] = entry
        return entries

    def heartbeat(self, report: HeartbeatReport, *, owner: str = "") -> HeartbeatAnswer:
        binding = self.bindings.record_heartbeats
        call = binding.call(self.keys.for_job(report.job_id), [report.job_id],
                            [report.script_args()], owner)
        with unavailable_on_redis_errors(write=True):
            reply = call.run()
        return HeartbeatAnswer.from_reply(report.job_id, binding.check(reply[0], owner=owner))

    def delete(self, job_id: str, *, sweep: bool = False) -> None:
        """Delete a terminal job, its history and its index entries. The index
        keys depend on the job's (immutable) type and labels, so they are read
        first; the script checks them again."""
        shard = self.keys.for_job(job_id)
        binding = self.bindings.delete_job
        for _ in range(3):
            with unavailable_on_redis_errors():
                job_type, labels = decoded(self.client.hmget(shard.job(job_id), "type",
                                                             "labels"))
            if job_type is None or labels is None:
                raise JobNotFound()
            call = binding.call(job_id, job_type, labels, sweep=sweep)
            with unavailable_on_redis_errors(write=True):
                reply = call.run()
            try:
                binding.decode(reply)
                return
            except StaleRead:
                continue
            except JobNotFound:
                # It existed a moment ago: deleted since by another request, or by
                # this very call, retried by redis-py after its reply was lost.
                return
        raise StaleRead("the job changed while it was being deleted")
