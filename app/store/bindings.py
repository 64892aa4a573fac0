"""One Python object per script of ``lua/``: it alone builds the script's KEYS
(from ``KeySchema``) and ARGV in the order its header documents, and decodes
its reply, raising the domain error of a negative code (``raise_for_code``,
the one path for every code, NOT_OWNER included).

A binding's ``call(...)`` answers a ``Call``: run it alone (``run``) or many in
one pipeline (``Scripts.run_pipeline``); ``decode`` reads the reply either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import NotEnded, raise_for_code
from app.model import Job
from app.store.keys import KeySchema, ShardKeys, legacy_job_key
from app.store.scripts import (
    ApplyCommandCode,
    ClearOrphansCode,
    DeleteJobCode,
    DeleteLegacyJobCode,
    DropWorkersCode,
    ImportLegacyJobsCode,
    LuaScript,
    RecordHeartbeatsCode,
    RerunJobCode,
    Scripts,
)

Reply = Any   # a script's reply as redis-py decodes it (lists, ints and str)


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL's flat array as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def labels_json(labels: dict[str, str]) -> str:
    """Labels as the job hash keeps them (and deleteJob compares them)."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Call:
    """One script call: what ``Scripts.run_pipeline`` takes, as a tuple."""

    script: LuaScript
    keys: list[str]
    args: list[Any]

    def run(self) -> Reply:
        return self.script(self.keys, self.args)

    def as_tuple(self) -> tuple[LuaScript, list[str], list[Any]]:
        return self.script, self.keys, self.args


def run_pipeline(scripts: Scripts, calls: Sequence[Call]) -> list[Reply]:
    return scripts.run_pipeline([c.as_tuple() for c in calls])


def _flag(value: bool | None) -> str:
    """A filter's yes/no/any as a script argument: "1", "0" or ""."""
    return "" if value is None else "1" if value else "0"


class _Binding:
    def __init__(self, script: LuaScript, keys: KeySchema) -> None:
        self.script = script
        self.keys = keys


class RegisterJob(_Binding):
    """lua/registerJob-12.lua"""

    def call(self, shard: ShardKeys, job_id: str, job_type: str, *, name: str,
             labels: dict[str, str], heartbeat_timeout: int, actor: str, history_cap: int,
             idempotency_key: str | None, idempotency_ttl: int, fingerprint: str,
             owner: str) -> Call:
        if idempotency_key is None:
            idem_key, idem_ttl = f"{shard.tag}:idem:-", 0
        else:
            idem_key, idem_ttl = shard.idempotency(actor, idempotency_key), idempotency_ttl
        keys = [shard.job(job_id), shard.history(job_id), shard.all_jobs,
                shard.state_index("start"), shard.type_index(job_type), shard.deadlines, idem_key,
                shard.label_counts, shard.changes, shard.name_index, shard.waiting,
                shard.waiting_deadlines,
                *(shard.label_index(k, v) for k, v in sorted(labels.items()))]
        args: list[Any] = [job_id, job_type, name, labels_json(labels), heartbeat_timeout, actor,
                           history_cap, idem_ttl, fingerprint, shard.channel, owner]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply) -> Reply:
        """The reply once its code is not an error: CREATED, EXISTS or REPLAY."""
        raise_for_code(reply)
        return reply


class ApplyCommand(_Binding):
    """lua/applyCommand-14.lua"""

    def call(self, job_id: str, command: str, *, actor: str, reason: str,
             expected_version: int | None, history_cap: int, retention_seconds: int,
             operation: str, owner: str) -> Call:
        shard = self.keys.for_job(job_id)
        keys = [shard.job(job_id), shard.history(job_id), *shard.state_indexes(),
                shard.deadlines, shard.expiries, shard.changes, shard.worker_jobs,
                shard.run_times, shard.waiting, shard.waiting_deadlines]
        args: list[Any] = [command, actor, reason,
                           "" if expected_version is None else expected_version, history_cap,
                           retention_seconds, shard.channel, operation, owner]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply, owner: str = "") -> tuple[Job, bool, int]:
        """(the job after the call, whether its state changed, server time in ms)."""
        raise_for_code(reply, owner=owner)
        return (Job.from_hash(pairs(reply[1])), reply[0] == ApplyCommandCode.CHANGED,
                int(reply[2]))


class ApplyCommands(_Binding):
    """lua/applyCommands-12.lua: ids of one shard, distinct."""

    def call(self, shard: ShardKeys, job_ids: Sequence[str], command: str, *, actor: str,
             reason: str, history_cap: int, retention_seconds: int, operation: str,
             state: str | None = None, job_type: str | None = None,
             labels: tuple[tuple[str, str], ...] = (), stalled: bool | None = None,
             started: bool | None = None) -> Call:
        keys = [*shard.state_indexes(), shard.deadlines, shard.expiries, shard.changes,
                shard.worker_jobs, shard.run_times, shard.waiting, shard.waiting_deadlines,
                *(shard.label_index(k, v) for k, v in labels)]
        for job_id in job_ids:
            keys += [shard.job(job_id), shard.history(job_id)]
        args: list[Any] = [command, actor, reason, history_cap, retention_seconds,
                           shard.channel, operation, state or "", job_type or "",
                           _flag(stalled), len(labels), _flag(started)]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply) -> list[int]:
        """changed, unchanged, refused, not_found, unmatched."""
        if len(reply) == 1:
            raise_for_code(reply)
        return [int(count) for count in reply]


class DeleteJob(_Binding):
    """lua/deleteJob-15.lua: the index keys come from the type and labels the
    caller read; the script checks them again (STALE_READ)."""

    def call(self, job_id: str, job_type: str, labels: str, *, sweep: bool) -> Call:
        shard = self.keys.for_job(job_id)
        keys = [shard.job(job_id), shard.history(job_id), shard.all_jobs,
                *(shard.state_index(s) for s in ("kill", "done", "failed")),
                shard.deadlines, shard.expiries, shard.type_index(job_type),
                shard.state_index("start"), shard.state_index("pause"), shard.label_counts,
                shard.name_index, shard.worker_index, shard.worker_jobs,
                *(shard.label_index(k, v) for k, v in sorted(json.loads(labels).items()))]
        args: list[Any] = [job_id, job_type, labels, "sweep" if sweep else "api", shard.channel]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply) -> None:
        raise_for_code(reply)

    @staticmethod
    def code(reply: Reply) -> DeleteJobCode:
        """The reply's code, without raising (a batch tells its jobs apart)."""
        return DeleteJobCode(int(reply[0]))


class ReadJob(_Binding):
    """lua/readJob-1.lua"""

    def call(self, job_id: str) -> Call:
        return Call(self.script, [self.keys.for_job(job_id).job(job_id)], [])

    @staticmethod
    def decode(reply: Reply) -> tuple[Job | None, int]:
        now_ms, flat = reply
        return (Job.from_hash(pairs(flat)) if flat else None), int(now_ms)


class RecordHeartbeats(_Binding):
    """lua/recordHeartbeats-6.lua: jobs of one shard."""

    def call(self, shard: ShardKeys, job_ids: Sequence[str],
             job_args: Sequence[Sequence[str]], owner: str) -> Call:
        keys = [*shard.heartbeat_keys(), *(shard.job(job_id) for job_id in job_ids)]
        args: list[Any] = [owner]
        for one in job_args:
            args += one
        return Call(self.script, keys, args)

    @staticmethod
    def check(entry: Reply, owner: str = "") -> Reply:
        """One job's entry, or its error (JOB_NOT_FOUND, NOT_OWNER) raised."""
        if entry[0] in (RecordHeartbeatsCode.JOB_NOT_FOUND, RecordHeartbeatsCode.NOT_OWNER):
            raise_for_code(entry, owner=owner)
        return entry


class RerunJob(_Binding):
    """lua/rerunJob-13.lua: the new id is drawn in the old job's shard; the
    label index keys come from the type and labels the caller read, which the
    script checks again (STALE_READ)."""

    def call(self, old_id: str, new_id: str, job_type: str, labels: str, *, actor: str,
             owner: str, history_cap: int, idempotency_key: str | None, idempotency_ttl: int,
             kept_reruns: int) -> Call:
        shard = self.keys.for_job(old_id)
        if idempotency_key is None:
            idem_key, idem_ttl = f"{shard.tag}:idem:-", 0
        else:
            idem_key = shard.rerun_idempotency(actor, old_id, idempotency_key)
            idem_ttl = idempotency_ttl
        keys = [shard.job(old_id), shard.job(new_id), shard.history(new_id), shard.all_jobs,
                shard.state_index("start"), shard.type_index(job_type), shard.deadlines,
                idem_key, shard.label_counts, shard.changes, shard.name_index, shard.waiting,
                shard.waiting_deadlines,
                *(shard.label_index(k, v) for k, v in sorted(json.loads(labels).items()))]
        args: list[Any] = [new_id, job_type, labels, actor, history_cap, idem_ttl, "rerun",
                           shard.channel, owner, kept_reruns]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply) -> Reply:
        """CREATED, EXISTS, REPLAY or STALE_READ (the caller reads again);
        NotEnded for an old job that has not ended, else the code's error."""
        code = int(reply[0])
        if code == RerunJobCode.ILLEGAL_TRANSITION:
            raise NotEnded(f"the job is in state {reply[1]}; only an ended job runs again",
                           current_state=reply[1], version=int(reply[2]))
        if code != RerunJobCode.STALE_READ:
            raise_for_code(reply)
        return reply


class DropWorkers(_Binding):
    """lua/dropWorkers-2.lua: the workers of one shard silent since ``cutoff_ms``."""

    def call(self, shard: ShardKeys, cutoff_ms: int, batch: int) -> Call:
        return Call(self.script, [shard.workers, shard.worker_jobs], [cutoff_ms, batch])

    @staticmethod
    def decode(reply: Reply) -> int:
        """How many workers were dropped."""
        if int(reply[0]) != DropWorkersCode.DROPPED:
            raise_for_code(reply)
        return int(reply[1])


class ClearOrphans(_Binding):
    """lua/clearOrphans-10.lua: due expiry entries of one shard."""

    def call(self, shard: ShardKeys, job_ids: Sequence[str], job_types: Sequence[str]) -> Call:
        keys = [shard.expiries, shard.all_jobs, *shard.state_indexes(), shard.deadlines,
                shard.waiting, shard.waiting_deadlines, *(shard.type_index(t) for t in job_types),
                *(key for job_id in job_ids for key in (shard.job(job_id), shard.history(job_id)))]
        return Call(self.script, keys, [len(job_types), *job_ids])

    @staticmethod
    def decode(reply: Reply) -> list[ClearOrphansCode]:
        return [ClearOrphansCode(code) for code in reply]


class ImportLegacyJobs(_Binding):
    """lua/importLegacyJobs-9.lua: jobs of one shard, as (id, type, state here,
    state in the source)."""

    def call(self, shard: ShardKeys, jobs: Sequence[tuple[str, str, str, str]], *, actor: str,
             history_cap: int, retention_seconds: int) -> Call:
        keys = [shard.all_jobs, *shard.state_indexes(), shard.expiries, shard.changes,
                shard.waiting]
        args: list[Any] = [actor, history_cap, retention_seconds, shard.channel]
        for job_id, job_type, state, source_state in jobs:
            keys += [shard.job(job_id), shard.history(job_id), shard.type_index(job_type)]
            args += [job_id, job_type, state, source_state]
        return Call(self.script, keys, args)

    @staticmethod
    def decode(reply: Reply) -> list[ImportLegacyJobsCode]:
        raise_for_code(reply)
        return [ImportLegacyJobsCode(code) for code in reply]


class DeleteLegacyJob(_Binding):
    """lua/deleteLegacyJob-1.lua, on the Go service's Redis."""

    def call(self, job_id: str, job_type: str, state: str) -> Call:
        return Call(self.script, [legacy_job_key(job_id)], [job_type, state])

    @staticmethod
    def decode(reply: Reply) -> DeleteLegacyJobCode:
        return DeleteLegacyJobCode(int(reply))


class IndexWaiting(_Binding):
    """lua/indexWaiting-4.lua: jobs of one shard read from its index of state start."""

    def call(self, shard: ShardKeys, job_ids: Sequence[str], *, last: bool) -> Call:
        keys = [shard.deadlines, shard.waiting, shard.waiting_deadlines, shard.migrations,
                *(shard.job(job_id) for job_id in job_ids)]
        return Call(self.script, keys, ["1" if last else "0", *job_ids])

    @staticmethod
    def decode(reply: Reply) -> int:
        """How many jobs were put into the waiting index."""
        return int(reply[0])


class Bindings:
    """Every script's binding, for one client's ``Scripts``."""

    def __init__(self, scripts: Scripts, keys: KeySchema) -> None:
        self.scripts = scripts
        self.register_job = RegisterJob(scripts.register_job, keys)
        self.apply_command = ApplyCommand(scripts.apply_command, keys)
        self.apply_commands = ApplyCommands(scripts.apply_commands, keys)
        self.delete_job = DeleteJob(scripts.delete_job, keys)
        self.read_job = ReadJob(scripts.read_job, keys)
        self.record_heartbeats = RecordHeartbeats(scripts.record_heartbeats, keys)
        self.clear_orphans = ClearOrphans(scripts.clear_orphans, keys)
        self.import_legacy_jobs = ImportLegacyJobs(scripts.import_legacy_jobs, keys)
        self.delete_legacy_job = DeleteLegacyJob(scripts.delete_legacy_job, keys)
        self.rerun_job = RerunJob(scripts.rerun_job, keys)
        self.drop_workers = DropWorkers(scripts.drop_workers, keys)
        self.index_waiting = IndexWaiting(scripts.index_waiting, keys)

    def run_pipeline(self, calls: Sequence[Call]) -> list[Reply]:
        return run_pipeline(self.scripts, calls)

