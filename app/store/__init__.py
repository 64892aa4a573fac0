"""The only part of Karmchari that talks to Redis.

Every change of data is one Lua script from ``lua/`` (validate first, then
write); Python only reads, and builds the key names that go into ``KEYS``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import itertools
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from app.errors import (
    JobNotFound,
    NotDue,
    NotOwner,
    OutcomeUnknown,
    StaleRead,
    StoreUnavailable,
    not_owner_detail,
    raise_for_code,
)
from app.model import STATES, Job, is_job_id, new_job_id, shard_of
from app.store import bulk_delete as _bulk_delete
from app.store import lexical
from app.store import rerun as _rerun
from app.store import run_times as _run_times
from app.store import workers as _workers
from app.store.bulk import (
    BATCH,
    MAX_EXAMINED,
    ROUND,
    BulkInterrupted,
    BulkResult,
    decode_cursor,
    encode_cursor,
    next_entries,
    script_call,
    take_entries,
)
from app.store.connection import (
    StoreClient,
    connect,
    is_transient,
    unavailable_on_redis_errors,
)
from app.store.keys import KeySchema, ShardKeys
from app.store.scripts import (
    ApplyCommandCode,
    ClearOrphansCode,
    LuaScript,
    RecordHeartbeatsCode,
    RegisterJobCode,
    Scripts,
)

__all__ = ["JobStore", "JobFilter", "HeartbeatReport", "Page", "BulkResult", "BulkInterrupted",
           "connect", "heartbeat_args", "is_transient", "StoreUnavailable"]


def _decoded(values: Sequence[object]) -> list[str | None]:
    """HMGET's answer as it is: the client decodes replies (decode_responses),
    which redis-py's types do not know."""
    return cast("list[str | None]", values)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


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
    def from_reply(cls, job_id: str, entry: list) -> HeartbeatAnswer:
        if entry[0] == RecordHeartbeatsCode.JOB_NOT_FOUND:
            return cls(job_id, False)
        if entry[0] == RecordHeartbeatsCode.NOT_OWNER:
            return cls(job_id, True, not_owner=True)
        return cls(job_id, True, entry[0], int(entry[1]), entry[2])


@dataclass(frozen=True)
class JobFilter:
    state: str | None = None
    type: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    stalled: bool | None = None
    worker: str | None = None        # the worker of the job's last heartbeat
    name_prefix: str | None = None

    def matches(self, job: Job, now_ms: int) -> bool:
        return ((self.state is None or job.state == self.state)
                and (self.type is None or job.type == self.type)
                and all(job.labels.get(k) == v for k, v in self.labels)
                and (self.stalled is None or job.stalled(now_ms) == self.stalled)
                and (self.worker is None or job.worker == self.worker)
                and (self.name_prefix is None or job.name.startswith(self.name_prefix)))


@dataclass
class Stats:
    now_ms: int
    total: int = 0
    states: dict[str, int] = field(default_factory=dict)
    stalled: int = 0
    types: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)     # "key:value": jobs, largest first
    changes_per_minute: list[tuple[int, int]] = field(default_factory=list)  # (ms, count)
    run_times: dict[str, _run_times.RunTimes] = field(default_factory=dict)  # by type


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


def _label_index_of(key: str, value: str) -> IndexOf:
    return lambda shard: shard.label_index(key, value)


@dataclass
class JobStore:
    client: StoreClient
    history_cap: int = 100
    retention_seconds: int = 7 * 24 * 3600
    idempotency_ttl: int = 24 * 3600
    keys: KeySchema = field(default_factory=KeySchema)

    def __post_init__(self) -> None:
        self.scripts = Scripts(self.client)

    # -- changes: one script each -------------------------------------------

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
        job_id, keys, args = self._register_call(job_type, name, labels or {},
                                                 heartbeat_timeout, actor, idempotency_key,
                                                 fingerprint, owner)
        with unavailable_on_redis_errors(write=True):
            reply = self.scripts.register_job(keys, args)
        raise_for_code(reply)
        if reply[0] == RegisterJobCode.CREATED:
            # As Job.from_hash would read the hash the script wrote from args.
            now_ms = int(reply[1])
            job = Job(id=job_id, type=job_type, state="start", version=1, created_at=now_ms,
                      updated_at=now_ms, name=name, labels=json.loads(args[3]),
                      heartbeat_timeout=int(heartbeat_timeout), owner=owner)
            return job, True, now_ms
        # EXISTS: this very call, retried by redis-py after its reply was lost.
        # REPLAY: the job of an earlier request, or of this very call likewise
        # (then the id is the one made here).
        existing = reply[1] if reply[0] == RegisterJobCode.REPLAY else job_id
        job, now_ms = self.get_with_time(existing)
        return job, existing == job_id, now_ms

    def register_many(self, job_type: str, count: int, *, name: str = "",
                      labels: dict[str, str] | None = None,
                      heartbeat_timeout: int = 0) -> list[str]:
        """Register ``count`` jobs alike with one pipeline of registerJob calls
        (bulk loading, as the listing benchmark does); returns their ids."""
        calls = [self._register_call(job_type, name, labels or {}, heartbeat_timeout, "", None,
                                     "", "") for _ in range(count)]
        with unavailable_on_redis_errors(write=True):
            replies = self.scripts.run_pipeline(
                [(self.scripts.register_job, keys, args) for _, keys, args in calls])
        for reply in replies:
            raise_for_code(reply)
        return [job_id for job_id, _, _ in calls]

    def _register_call(self, job_type: str, name: str, labels: dict[str, str],
                       heartbeat_timeout: int, actor: str, idempotency_key: str | None,
                       fingerprint: str, owner: str) -> tuple[str, list[str], list]:
        """A new id, and the KEYS and ARGV of the registerJob call for it."""
        if idempotency_key is not None:
            shard = self.keys.idempotency_shard(actor, idempotency_key)
            job_id = new_job_id(shard.shard)
            idem_key, idem_ttl = shard.idempotency(actor, idempotency_key), self.idempotency_ttl
        else:
            job_id = new_job_id()
            shard = self.keys.for_job(job_id)
            idem_key, idem_ttl = f"{shard.tag}:idem:-", 0
        keys = [shard.job(job_id), shard.history(job_id), shard.all_jobs,
                shard.state_index("start"), shard.type_index(job_type), shard.deadlines, idem_key,
                shard.label_counts, shard.changes, shard.name_index,
                *(shard.label_index(k, v) for k, v in sorted(labels.items()))]
        args = [job_id, job_type, name, json.dumps(labels, sort_keys=True, separators=(",", ":")),
                heartbeat_timeout, actor, self.history_cap, idem_ttl, fingerprint, shard.channel,
                owner]
        return job_id, keys, args

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
        shard = self.keys.for_job(job_id)
        keys = [shard.job(job_id), shard.history(job_id), *shard.state_indexes(),
                shard.deadlines, shard.expiries, shard.changes, shard.worker_jobs,
                shard.run_times]
        # The operation id lets the script recognise a retry of this very command
        # after a lost reply (redis-py's, or the client's with the same key), and
        # not apply it twice.
        if idempotency_key is None:
            operation = secrets.token_hex(6)
        else:
            operation = hashlib.sha256(
                f"{actor}\n{command}\n{idempotency_key}".encode()).hexdigest()[:16]
        args = [command, actor, reason, "" if expected_version is None else expected_version,
                self.history_cap, self.retention_seconds, shard.channel, operation, owner]
        with unavailable_on_redis_errors(write=True):
            reply = self.scripts.apply_command(keys, args)
        if reply[0] == ApplyCommandCode.NOT_OWNER:
            raise NotOwner(not_owner_detail(owner))
        raise_for_code(reply)
        return (Job.from_hash(_pairs(reply[1])), reply[0] == ApplyCommandCode.CHANGED,
                int(reply[2]))

    def bulk_command(self, command: str, *, actor: str = "", reason: str = "",
                     ids: Sequence[str] | None = None, where: JobFilter | None = None,
                     cursor: str | None = None, max_examined: int = MAX_EXAMINED,
                     stop: Callable[[], bool] = lambda: False) -> BulkResult:
        """Apply ``command`` to the jobs named by ``ids``, or to every job that
        matches ``where``: batches of one applyCommands call per shard, each
        round of them in one pipeline. A filter walks the index ``list_jobs``
        would read, newest first, at most ``max_examined`` entries; past that
        the result has a ``next_cursor`` to continue from (ValueError for a
        cursor this service did not give).

        Between rounds, ``stop()`` (the service is draining) ends the walk with
        the same answer as the limit does; the ids form then lists the ids not
        done in ``remaining_ids``. Redis gone mid-way raises BulkInterrupted
        with the counts so far and where to resume."""
        result = BulkResult()
        if ids is not None:
            chunks: list[tuple[str, list[str]]] = []
            by_shard: dict[str, list[str]] = {}
            for job_id in dict.fromkeys(ids):
                by_shard.setdefault(self.keys.for_job(job_id).shard, []).append(job_id)
            for shard, shard_ids in by_shard.items():
                chunks += [(shard, shard_ids[i:i + BATCH])
                           for i in range(0, len(shard_ids), BATCH)]
            for first in range(0, len(chunks), ROUND):
                if stop():
                    result.remaining_ids = [i for _, chunk in chunks[first:] for i in chunk]
                    break
                calls = [self._bulk_call(self.keys.shards[shard], chunk, command, actor, reason)
                         for shard, chunk in chunks[first:first + ROUND]]
                try:
                    self._bulk_round(result, calls)
                except StoreUnavailable as error:
                    result.remaining_ids = [i for _, chunk in chunks[first:] for i in chunk]
                    if isinstance(error, OutcomeUnknown):
                        result.in_doubt = sum(len(c) for _, c in chunks[first:first + ROUND])
                    raise BulkInterrupted(result, error) from error
            return result

        where = where or JobFilter()
        positions = decode_cursor(cursor) if cursor else dict.fromkeys(self.keys.shards)
        index = self._index_for(where)
        upper = self.server_time_ms() if where.stalled else None
        while positions and result.examined < max_examined and not stop():
            # Where this round starts: the cursor to resume from if it fails.
            resume = dict(positions)
            shards = list(positions)
            sent = 0
            try:
                with unavailable_on_redis_errors():
                    pipe = self.client.pipeline(transaction=False)
                    for shard in shards:
                        next_entries(pipe, index(self.keys.shards[shard]), positions[shard],
                                     upper)
                    replies = pipe.execute()
                calls = []
                for shard in shards:
                    reads = 1 if positions[shard] is None else 2
                    rows, exhausted = take_entries(replies[:reads], positions[shard])
                    del replies[:reads]
                    if rows:
                        calls.append(self._bulk_call(
                            self.keys.shards[shard], [job_id for _, job_id in rows], command,
                            actor, reason, where))
                        positions[shard] = rows[-1]
                        sent += len(rows)
                    if exhausted:
                        del positions[shard]
                self._bulk_round(result, calls, filtered=True)
            except StoreUnavailable as error:
                result.next_cursor = encode_cursor(resume)
                if isinstance(error, OutcomeUnknown):
                    result.in_doubt = sent
                raise BulkInterrupted(result, error) from error
            result.examined += sent
        result.next_cursor = encode_cursor(positions) if positions else None
        return result

    def _bulk_call(self, shard: ShardKeys, job_ids: list[str], command: str, actor: str,
                   reason: str, where: JobFilter | None = None
                   ) -> tuple[LuaScript, list[str], list[Any]]:
        where = where or JobFilter()
        keys, args = script_call(shard, job_ids, command, actor, reason, self.history_cap,
                                 self.retention_seconds, state=where.state, job_type=where.type,
                                 labels=where.labels, stalled=where.stalled)
        return self.scripts.apply_commands, keys, args

    def _bulk_round(self, result: BulkResult, calls: list, filtered: bool = False) -> None:
        if not calls:
            return
        with unavailable_on_redis_errors(write=True):
            replies = self.scripts.run_pipeline(calls)
        for reply in replies:
            if len(reply) == 1:
                raise_for_code(reply)
            if filtered:
                # Listed a moment ago, deleted since: it no longer matches.
                reply = [*reply[:3], 0, reply[4] + reply[3]]
            result.add(reply)

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
                          owner: str = "") -> list[list]:
        """``heartbeats`` without an object per job (the batch's hot path):
        ``job_args`` are each job's ``heartbeat_args``; the answer is the
        script's entry for each job, in order (see lua/recordHeartbeats-4.lua)."""
        by_shard: dict[str, list[int]] = {}
        for index, job_id in enumerate(job_ids):
            name = shard_of(job_id)
            indexes = by_shard.get(name)
            if indexes is None:
                by_shard[name] = [index]
            else:
                indexes.append(index)
        calls = []
        for name, indexes in by_shard.items():
            shard = self.keys.shards[name]
            keys = [*shard.heartbeat_keys(), *(shard.job(job_ids[i]) for i in indexes)]
            args = [owner]
            for i in indexes:
                args += job_args[i]
            calls.append((self.scripts.record_heartbeats, keys, args))
        with unavailable_on_redis_errors(write=True):
            replies = self.scripts.run_pipeline(calls)
        entries: list = [None] * len(job_ids)
        for indexes, reply in zip(by_shard.values(), replies, strict=True):
            for i, entry in zip(indexes, reply, strict=True):
                entries[i] = entry
        return entries

    def heartbeat(self, report: HeartbeatReport, *, owner: str = "") -> HeartbeatAnswer:
        shard = self.keys.for_job(report.job_id)
        with unavailable_on_redis_errors(write=True):
            reply = self.scripts.record_heartbeats(
                [*shard.heartbeat_keys(), shard.job(report.job_id)],
                [owner, *report.script_args()])
        answer = HeartbeatAnswer.from_reply(report.job_id, reply[0])
        if not answer.found:
            raise JobNotFound()
        if answer.not_owner:
            raise NotOwner(not_owner_detail(owner))
        return answer

    def delete(self, job_id: str, *, sweep: bool = False) -> None:
        """Delete a terminal job, its history and its index entries. The index
        keys depend on the job's (immutable) type and labels, so they are read
        first; the script checks them again."""
        shard = self.keys.for_job(job_id)
        for _ in range(3):
            with unavailable_on_redis_errors():
                job_type, labels = _decoded(self.client.hmget(shard.job(job_id), "type",
                                                              "labels"))
            if job_type is None or labels is None:
                raise JobNotFound()
            script, keys, args = self.delete_call(job_id, job_type, labels, sweep=sweep)
            with unavailable_on_redis_errors(write=True):
                reply = script(keys, args)
            try:
                raise_for_code(reply)
                return
            except StaleRead:
                continue
            except JobNotFound:
                # It existed a moment ago: deleted since by another request, or by
                # this very call, retried by redis-py after its reply was lost.
                return
        raise StaleRead("the job changed while it was being deleted")

    def delete_call(self, job_id: str, job_type: str, labels: str, *, sweep: bool = False
                    ) -> tuple[LuaScript, list[str], list[Any]]:
        """The deleteJob call for a job of this type and labels (as read)."""
        shard = self.keys.for_job(job_id)
        keys = [shard.job(job_id), shard.history(job_id), shard.all_jobs,
                *(shard.state_index(s) for s in ("kill", "done", "failed")),
                shard.deadlines, shard.expiries, shard.type_index(job_type),
                shard.state_index("start"), shard.state_index("pause"), shard.label_counts,
                shard.name_index, shard.worker_index, shard.worker_jobs,
                *(shard.label_index(k, v) for k, v in sorted(json.loads(labels).items()))]
        args = [job_id, job_type, labels, "sweep" if sweep else "api", shard.channel]
        return self.scripts.delete_job, keys, args

    # -- issue 20: thin calls into their own modules ---------------------------

    def rerun(self, job_id: str, *, actor: str = "", owner: str = "",
              idempotency_key: str | None = None) -> tuple[Job, bool, int]:
        """A new job like an ended one (app/store/rerun.py)."""
        return _rerun.rerun(self, job_id, actor=actor, owner=owner,
                           idempotency_key=idempotency_key)

    def workers(self, *, limit: int = 50, cursor: str | None = None
                ) -> tuple[list[_workers.WorkerInfo], str | None, int]:
        """A page of the workers seen in heartbeats (app/store/workers.py)."""
        return _workers.list_workers(self, limit=limit, cursor=cursor)

    def bulk_delete(self, *, ids: Sequence[str] | None = None, where: JobFilter | None = None,
                    cursor: str | None = None) -> _bulk_delete.DeleteResult:
        """Delete ended jobs by ids or by a filter (app/store/bulk_delete.py)."""
        if ids is not None:
            return _bulk_delete.delete_ids(self, ids)
        return _bulk_delete.delete_where(self, where or JobFilter(), cursor=cursor)

    def index_for(self, where: JobFilter) -> IndexOf:
        return self._index_for(where)

    def sweep_expired(self, batch: int = 200, job_types: Sequence[str] = ()) -> int:
        """Delete terminal jobs whose retention has run out, up to ``batch`` per
        shard; returns how many due entries were dealt with (0: none left).

        First ``clearOrphans`` removes the entries of jobs that are gone (and of
        ``job_types``' indexes) and stale entries of unfinished jobs, in one
        pipeline of one call per shard: an entry that cannot be deleted is
        never read again, so it cannot hold up the jobs due after it."""
        now_ms = self.server_time_ms()
        # Workers silent for the retention period leave GET /v1/workers.
        _workers.drop_silent(self, now_ms)
        shards = list(self.keys.shards.values())
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.zrangebyscore(shard.expiries, "-inf", now_ms, start=0, num=batch)
            due_by_shard = pipe.execute()
        calls = []
        for shard, ids in zip(shards, due_by_shard, strict=True):
            if ids:
                keys = [shard.expiries, shard.all_jobs, *shard.state_indexes(), shard.deadlines,
                        *(shard.type_index(t) for t in job_types),
                        *(key for job_id in ids
                          for key in (shard.job(job_id), shard.history(job_id)))]
                calls.append((self.scripts.clear_orphans, keys, [len(job_types), *ids]))
        if not calls:
            return 0
        with unavailable_on_redis_errors():
            replies = self.scripts.run_pipeline(calls)
        present = [job_id for ids, codes in zip([i for i in due_by_shard if i], replies,
                                                strict=True)
                   for job_id, code in zip(ids, codes, strict=True)
                   if code == ClearOrphansCode.PRESENT]
        handled = sum(len(ids) for ids in due_by_shard) - len(present)
        for job_id in present:
            try:
                self.delete(job_id, sweep=True)
            except (JobNotFound, NotDue):
                pass  # deleted meanwhile, or its retention was renewed
            handled += 1
        return handled

    # -- reads --------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job, _ = self.get_with_time(job_id)
        return job

    def state(self, job_id: str) -> str:
        """Just the job's state, with one HMGET: the old API's GET /jobState
        answers nothing else, so it skips the script, the server time and
        the decoding of the whole job."""
        with unavailable_on_redis_errors():
            (state,) = _decoded(self.client.hmget(self.keys.for_job(job_id).job(job_id), "state"))
        if state is None:
            raise JobNotFound()
        return state

    def get_with_time(self, job_id: str) -> tuple[Job, int]:
        """The job and the Redis server time, in one round trip."""
        with unavailable_on_redis_errors():
            now_ms, flat = self.scripts.read_job([self.keys.for_job(job_id).job(job_id)], [])
        if not flat:
            raise JobNotFound()
        return Job.from_hash(_pairs(flat)), int(now_ms)

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
        calls: list[tuple[LuaScript, list[str], list[Any]]] = [
            (self.scripts.read_job, [self.keys.for_job(i).job(i)], []) for i in job_ids]
        if not calls:
            return [], self.server_time_ms()
        with unavailable_on_redis_errors():
            replies = self.scripts.run_pipeline(calls)
        jobs = [Job.from_hash(_pairs(flat)) if flat else None for _, flat in replies]
        return jobs, max(int(now_ms) for now_ms, _ in replies)

    def history(self, job_id: str) -> list[dict]:
        shard = self.keys.for_job(job_id)
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(shard.job(job_id))
            pipe.lrange(shard.history(job_id), 0, -1)
            exists, entries = pipe.execute()
        if not exists:
            raise JobNotFound()
        return [json.loads(e) for e in entries]

    def server_time_ms(self) -> int:
        with unavailable_on_redis_errors():
            seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000

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

    def _entry_source(self, where: JobFilter, now_ms: int
                      ) -> Callable[[_Position | None, int], list[tuple[int, str]]]:
        """Where a listing takes its entries from, newest first: the worker's
        lexical index, the name index for a prefix with few enough entries,
        else the smallest time-ordered index the filter names."""
        shards = list(self.keys.shards.values())
        if where.worker is not None:
            worker = where.worker

            def by_worker(position: _Position | None, count: int) -> list[tuple[int, str]]:
                at = None if position is None else (position.score, position.job_id)
                with unavailable_on_redis_errors():
                    return lexical.text_entries(self.client, shards, lambda s: s.worker_index,
                                                worker, at, count)
            return by_worker
        if where.name_prefix is not None:
            with unavailable_on_redis_errors():
                named = lexical.prefix_entries(self.client, shards, lambda s: s.name_index,
                                               where.name_prefix)
            if named is not None:
                def by_name(position: _Position | None, count: int) -> list[tuple[int, str]]:
                    rows = named if position is None else \
                        [e for e in named if e < (position.score, position.job_id)]
                    return rows[:count]
                return by_name
        index = self._index_for(where)
        upper = now_ms if where.stalled else None
        return lambda position, count: self._merged_entries(index, position, upper, count)

    def _index_for(self, where: JobFilter) -> IndexOf:
        """The deadlines for stalled jobs; else the smallest index the filter
        names, so a selective condition is not checked on a page's worth of
        jobs that fail it. Those indexes share one score (the time of
        registration): a cursor stays valid whichever of them is read."""
        if where.stalled:
            return lambda shard: shard.deadlines
        candidates: list[IndexOf] = [_label_index_of(k, v) for k, v in where.labels]
        job_type, state = where.type, where.state
        if job_type:
            candidates.append(lambda shard: shard.type_index(job_type))
        if state:
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

        Entries tied with the cursor's score are read in full, then at most
        ``count`` below it per shard: any number of ties pages correctly."""
        tied = position if position is not None and (upper is None or position.score <= upper) \
            else None
        if tied is not None:
            below: int | str = f"({tied.score}"
        elif upper is not None:
            below = upper
        else:
            below = "+inf"
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in self.keys.shards.values():
                if tied is not None:
                    pipe.zrevrangebyscore(index(shard), tied.score, tied.score, withscores=True)
                pipe.zrevrangebyscore(index(shard), below, "-inf", start=0, num=count,
                                      withscores=True)
            replies = pipe.execute()
        if tied is not None:
            replies = [replies[i] + replies[i + 1] for i in range(0, len(replies), 2)]
        streams = []
        for entries in replies:
            rows = [(int(score), job_id) for job_id, score in entries]
            if tied is not None:
                rows = [r for r in rows if r < (tied.score, tied.job_id)]
            streams.append(sorted(rows, reverse=True))
        merged = heapq.merge(*streams, reverse=True)
        return list(itertools.islice(merged, count))

    def _read_jobs(self, job_ids: list[str]) -> list[Job | None]:
        if not job_ids:
            return []
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hgetall(self.keys.for_job(job_id).job(job_id))
            hashes = pipe.execute()
        return [Job.from_hash(h) if h else None for h in hashes]

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
            for job_type in job_types:
                result.types[job_type] += next(replies)
            for minute, count in next(replies).items():
                minutes[int(minute)] = minutes.get(int(minute), 0) + int(count)
        this_minute = now_ms // 60_000
        result.changes_per_minute = [(m * 60_000, minutes.get(m, 0))
                                     for m in range(this_minute - 59, this_minute + 1)]
        result.labels = self._largest_labels(shards, top_labels)
        with unavailable_on_redis_errors():
            result.run_times = _run_times.read(self.client, shards, now_ms)
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

    # -- health -------------------------------------------------------------

    def ready(self) -> bool:
        """Redis answers and every script is in its cache (loading them if not)."""
        with unavailable_on_redis_errors():
            if not self.scripts.all_loaded():
                self.scripts.load_all()
            return self.scripts.all_loaded()

    def server_info(self) -> dict:
        """Flavor, version and eviction policy, from INFO alone: CONFIG may be
        refused to a restricted ACL user, or renamed by a managed service."""
        with unavailable_on_redis_errors():
            info = self.client.info("server")
            memory = self.client.info("memory")
        flavor = "valkey" if "valkey_version" in info or info.get("server_name") == "valkey" \
            else "redis"
        return {"flavor": flavor,
                "version": info.get(f"{flavor}_version") or info.get("redis_version"),
                "maxmemory_policy": memory.get("maxmemory_policy")}
