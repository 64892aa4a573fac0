"""Domain errors, and the one mapping from Lua return codes to them."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any


class ScriptCode(enum.IntEnum):
    """Negative return codes shared by every script in ``lua/``."""

    JOB_NOT_FOUND = -1
    INVALID_COMMAND = -2
    VERSION_MISMATCH = -3
    ILLEGAL_TRANSITION = -4
    STALE_READ = -5
    IDEMPOTENCY_KEY_REUSED = -6
    NOT_DUE = -7
    NOT_OWNER = -8
    INVALID_ARGUMENTS = -9   # arguments the service never sends (importLegacyJobs)


class KarmchariError(Exception):
    """Base of the domain errors; ``code`` is the stable machine code of the API."""

    code = "error"

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class JobNotFound(KarmchariError):
    code = "job_not_found"


class InvalidCommand(KarmchariError):
    code = "invalid_command"


class VersionMismatch(KarmchariError):
    code = "version_mismatch"


class IllegalTransition(KarmchariError):
    code = "illegal_transition"


class NotEnded(KarmchariError):
    """A rerun of a job that is not in a final state."""

    code = "not_ended"


class FilterNotFinal(KarmchariError):
    """A bulk delete whose filter could match jobs that have not ended."""

    code = "filter_not_final"


class IdempotencyKeyReused(KarmchariError):
    code = "idempotency_key_reused"


class StaleRead(KarmchariError):
    code = "stale_read"


class NotDue(KarmchariError):
    code = "not_due"


class NotOwner(KarmchariError):
    """A worker token touched a job it did not register."""

    code = "not_owner"


def not_owner_detail(owner: str) -> str:
    return (f"worker {owner!r} may heartbeat and finish only the jobs it registered; "
            "this job is not one of them")


class InvalidArguments(KarmchariError):
    """A script was called with KEYS or ARGV that do not fit: a bug, not a request."""

    code = "invalid_arguments"


class StoreUnavailable(KarmchariError):
    """Redis cannot answer now (down, loading, busy, out of memory, read-only)."""

    code = "store_unavailable"


class OutcomeUnknown(StoreUnavailable):
    """A write was sent to Redis but no reply came (a timeout, a lost connection):
    it may or may not have been applied."""

    code = "outcome_unknown"


_BY_CODE: dict[ScriptCode, type[KarmchariError]] = {
    ScriptCode.JOB_NOT_FOUND: JobNotFound,
    ScriptCode.INVALID_COMMAND: InvalidCommand,
    ScriptCode.VERSION_MISMATCH: VersionMismatch,
    ScriptCode.ILLEGAL_TRANSITION: IllegalTransition,
    ScriptCode.STALE_READ: StaleRead,
    ScriptCode.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReused,
    ScriptCode.NOT_DUE: NotDue,
    ScriptCode.NOT_OWNER: NotOwner,
    ScriptCode.INVALID_ARGUMENTS: InvalidArguments,
}


def raise_for_code(reply: Sequence[Any], *, owner: str = "") -> None:
    """Raise the domain error for a script reply whose first element is negative.
    ``owner``: the caller's worker name, which NOT_OWNER's detail names."""
    code = int(reply[0])
    if code >= 0:
        return
    error = _BY_CODE[ScriptCode(code)]
    if error is NotOwner:
        raise error(not_owner_detail(owner))
    if len(reply) >= 3:
        raise error(f"the job is in state {reply[1]}", current_state=reply[1],
                    version=int(reply[2]))
    raise error()
