"""The job model: states, commands, the transition table and identifiers.
Pure functions only.

This is the one definition of the state machine in Python; every other module
imports it, and the Lua scripts get it as the ``stateMachine`` include, which
app/store/scripts.py generates from it: tests/test_scripts.py drives every
(state, command) pair through the scripts and compares with ``outcome()``. The
standard-library client keeps its own copy of the state names
(client/karmchari_client/worker.py), checked against this one by tests/test_transitions.py.
"""

from __future__ import annotations

import datetime
import enum
import json
import re
import secrets
from dataclasses import dataclass, field


class State(str, enum.Enum):
    START = "start"
    PAUSE = "pause"
    KILL = "kill"
    DONE = "done"
    FAILED = "failed"


class Command(str, enum.Enum):
    START = "start"
    PAUSE = "pause"
    KILL = "kill"
    DONE = "done"
    FAIL = "fail"


STATES: tuple[str, ...] = tuple(s.value for s in State)
COMMANDS: tuple[str, ...] = tuple(c.value for c in Command)
# States no command leaves; a job in one of them may be deleted.
TERMINAL_STATES = frozenset({State.KILL.value, State.DONE.value, State.FAILED.value})
# The state each command leads to.
TARGET_STATE: dict[str, str] = {c.value: (State.FAILED.value if c is Command.FAIL else c.value)
                                for c in Command}
# Commands a worker may send about its own job (the "finish" permission); the
# others need the "command" permission.
FINISH_COMMANDS = frozenset({Command.DONE.value, Command.FAIL.value})


class Outcome(str, enum.Enum):
    CHANGED = "changed"        # the job moves to TARGET_STATE[command]
    UNCHANGED = "unchanged"    # already in that state: nothing is written
    REFUSED = "refused"        # a terminal state is left by no command


def outcome(state: str, command: str) -> Outcome:
    """What ``command`` does to a job in ``state`` (both valid names)."""
    target = TARGET_STATE[command]
    if state == target:
        return Outcome.UNCHANGED
    if state in TERMINAL_STATES:
        return Outcome.REFUSED
    return Outcome.CHANGED

DEFAULT_JOB_TYPES = ("upload", "export", "teams")

JOB_ID_RE = re.compile(r"[0-9a-f]{32}\Z")
# Label keys: no ":" (the list filter is label=key:value), nothing exotic.
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}\Z")
# Ids are sharded by their first hex digit: 16 shards, fixed for the life of a
# deployment, because a job's shard is derived from its id alone.
SHARDS = "0123456789abcdef"


def is_job_id(value: str) -> bool:
    return bool(JOB_ID_RE.match(value))


def new_job_id(shard: str | None = None) -> str:
    """A fresh id from the OS's cryptographic random source.

    ``shard`` pins the first hex digit (used for Idempotency-Key requests, whose
    shard must be known before the id is); 124 random bits remain.
    """
    token = secrets.token_hex(16)
    return token if shard is None else shard + token[1:]


def shard_of(job_id: str) -> str:
    return job_id[0]


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclass(frozen=True)
class Job:
    """A job as stored in its Redis hash (times in ms since the epoch)."""

    id: str
    type: str
    state: str
    version: int
    created_at: int
    updated_at: int
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    heartbeat_timeout: int = 0
    worker: str = ""
    progress: float | None = None
    message: str = ""
    heartbeat_at: int | None = None
    observed_state: str = ""
    ended_at: int | None = None
    # The worker token that registered the job; "" when none (registered without
    # auth, or by an operator or admin): then only operators and admins end it.
    owner: str = ""
    # The first heartbeat's time (None: none yet); the job this one runs again
    # (POST /v1/jobs/{id}/rerun) and the jobs that run this one again, oldest first.
    started_at: int | None = None
    retry_of: str = ""
    reruns: tuple[str, ...] = ()

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Job:
        return cls(
            id=h["id"], type=h["type"], state=h["state"], version=int(h["version"]),
            created_at=int(h["created_at"]), updated_at=int(h["updated_at"]),
            name=h.get("name", ""), labels=json.loads(h.get("labels") or "{}"),
            heartbeat_timeout=int(h.get("heartbeat_timeout") or 0),
            worker=h.get("worker", ""),
            progress=float(h["progress"]) if h.get("progress") else None,
            message=h.get("message", ""),
            heartbeat_at=_int_or_none(h.get("heartbeat_at")),
            observed_state=h.get("observed_state", ""),
            ended_at=_int_or_none(h.get("ended_at")),
            owner=h.get("owner", ""),
            started_at=_int_or_none(h.get("started_at")),
            retry_of=h.get("retry_of", ""),
            reruns=tuple(h["reruns"].split()) if h.get("reruns") else (),
        )

    def stalled(self, now_ms: int) -> bool:
        """In ``start`` with no heartbeat for ``heartbeat_timeout`` seconds.

        While the job is in ``start``, ``updated_at`` is when it entered that
        state (heartbeats do not touch it), so this matches the deadline the
        scripts keep in the ``deadline`` index.
        """
        if self.state != State.START.value or self.heartbeat_timeout <= 0:
            return False
        last_sign = max(self.heartbeat_at or 0, self.updated_at)
        return now_ms > last_sign + self.heartbeat_timeout * 1000


def format_time(ms: int | None) -> str | None:
    """RFC 3339 in UTC with milliseconds."""
    if ms is None:
        return None
    stamp = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
