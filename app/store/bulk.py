"""One command applied to many jobs (POST /v1/jobs/commands).

Python only chooses the jobs: ids given by the caller, or entries read from
the indexes, newest first, shard by shard. Every batch is one call of
``lua/applyCommands-10.lua`` per shard, which checks each job against the
filter again and changes it as ``applyCommand`` would, atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass, fields

from app.model import SHARDS, is_job_id
from app.store.keys import ShardKeys

# Jobs per script call: one call writes about ten commands per job, so a batch
# keeps Redis busy for a few milliseconds at most.
BATCH = 100
# Script calls sent in one pipeline (a round): a drain or a lost Redis is noticed
# between rounds, so an answer is never more than one round late.
ROUND = 4
# Index entries one request walks at most; past it the answer carries a
# cursor to continue from (about 4 s of work on a small machine).
MAX_EXAMINED = 100_000

# What the script answers, in its order.
_COUNTS = ("changed", "unchanged", "refused", "not_found", "unmatched")


@dataclass
class BulkResult:
    changed: int = 0
    unchanged: int = 0
    refused: int = 0
    not_found: int = 0
    unmatched: int = 0     # listed, but changed since so that it fails the filter
    examined: int = 0
    next_cursor: str | None = None
    # Cut short (a drain, or Redis gone): the ids of the ids form not done yet.
    remaining_ids: list[str] | None = None
    # Redis gone after a batch was sent: jobs of that batch that may have changed.
    in_doubt: int = 0

    @property
    def matched(self) -> int:
        return self.changed + self.unchanged + self.refused

    def add(self, reply: list[int]) -> None:
        for name, count in zip(_COUNTS, reply, strict=True):
            setattr(self, name, getattr(self, name) + int(count))

    def as_dict(self) -> dict:
        counts = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name in ("changed", "unchanged", "refused", "not_found")}
        answer = {"matched": self.matched, **counts, "next_cursor": self.next_cursor}
        if self.remaining_ids is not None:
            answer["remaining_ids"] = self.remaining_ids
        return answer


class BulkInterrupted(Exception):
    """Redis stopped answering between or during batches: ``result`` holds the
    counts of the batches answered, and where to resume (``next_cursor`` or
    ``remaining_ids``), which includes the batch in doubt (``in_doubt`` jobs):
    sending the same command again to a job it changed leaves it unchanged."""

    def __init__(self, result: BulkResult, cause: Exception) -> None:
        super().__init__(str(cause))
        self.result = result


# -- where a walk stopped, per shard --------------------------------------------

Position = tuple[int, str] | None   # (score, id) of the last entry read; None: from the top


def encode_cursor(positions: dict[str, Position]) -> str:
    """The shards not walked to the end, with where each stopped."""
    raw = json.dumps({s: [p[0], p[1]] if p else None for s, p in positions.items()},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Position]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        data = json.loads(raw)
        positions: dict[str, Position] = {}
        for shard, position in data.items():
            if shard not in SHARDS:
                raise ValueError(shard)
            if position is None:
                positions[shard] = None
                continue
            score, job_id = position
            if type(score) is not int or not 0 <= score < 10**19 or not is_job_id(job_id):
                raise ValueError(position)
            positions[shard] = (score, job_id)
        return positions
    # RecursionError: JSON nested deeper than the parser goes ("[[[[…" fits in 2000 characters).
    except (ValueError, TypeError, AttributeError, binascii.Error, UnicodeDecodeError,
            RecursionError):
        raise ValueError("invalid cursor") from None


# -- the calls -------------------------------------------------------------------


def script_call(shard: ShardKeys, job_ids: list[str], command: str, actor: str, reason: str,
                history_cap: int, retention_seconds: int, *, state: str | None = None,
                job_type: str | None = None, labels: tuple[tuple[str, str], ...] = (),
                stalled: bool | None = None) -> tuple[list[str], list]:
    """KEYS and ARGV of one applyCommands call (ids of one shard, distinct)."""
    keys = [*shard.state_indexes(), shard.deadlines, shard.expiries, shard.changes,
            shard.worker_jobs, shard.run_times, *(shard.label_index(k, v) for k, v in labels)]
    for job_id in job_ids:
        keys += [shard.job(job_id), shard.history(job_id)]
    args = [command, actor, reason, history_cap, retention_seconds, shard.channel,
            secrets.token_hex(6), state or "", job_type or "",
            "" if stalled is None else "1" if stalled else "0", len(labels)]
    return keys, args


def next_entries(pipe, index: str, position: Position, upper: int | None) -> None:
    """Queue the reads of the next BATCH entries of one shard's index below
    ``position``: entries tied with its score in full, then BATCH below it."""
    if position is not None:
        pipe.zrevrangebyscore(index, position[0], position[0], withscores=True)
        pipe.zrevrangebyscore(index, f"({position[0]}", "-inf", start=0, num=BATCH,
                              withscores=True)
    else:
        pipe.zrevrangebyscore(index, "+inf" if upper is None else upper, "-inf", start=0,
                              num=BATCH, withscores=True)


def take_entries(replies: list, position: Position) -> tuple[list[tuple[int, str]], bool]:
    """The next BATCH entries from the replies of ``next_entries``, and whether
    the shard's index has nothing after them."""
    rows = [(int(score), job_id) for reply in replies for job_id, score in reply]
    if position is not None:
        rows = [row for row in rows if row < position]
    rows.sort(reverse=True)
    return rows[:BATCH], len(rows) <= BATCH and len(replies[-1]) < BATCH

