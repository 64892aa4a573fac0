"""One command applied to many jobs (POST /v1/jobs/commands).

Python only chooses the jobs: ids given by the caller, or entries read from
the indexes, newest first, shard by shard. Every batch is one call of
``lua/applyCommands-12.lua`` per shard, which checks each job against the
filter again and changes it as ``applyCommand`` would, atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from app.errors import OutcomeUnknown, StoreUnavailable
from app.limits import MAX_EXAMINED
from app.model import SHARDS, is_job_id
from app.store.bindings import Call
from app.store.connection import unavailable_on_redis_errors
from app.store.keys import ShardKeys
from app.store.listing import JobFilter, ListingStore

# Jobs per script call: one call writes about ten commands per job, so a batch
# keeps Redis busy for a few milliseconds at most.
BATCH = 100
# Script calls sent in one pipeline (a round): a drain or a lost Redis is noticed
# between rounds, so an answer is never more than one round late.
ROUND = 4

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

    def as_dict(self) -> dict[str, Any]:
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


def next_entries(pipe: Any, index: str, position: Position, upper: int | None) -> None:
    """Queue the reads of the next BATCH entries of one shard's index below
    ``position``: entries tied with its score in full, then BATCH below it."""
    if position is not None:
        pipe.zrevrangebyscore(index, position[0], position[0], withscores=True)
        pipe.zrevrangebyscore(index, f"({position[0]}", "-inf", start=0, num=BATCH,
                              withscores=True)
    else:
        pipe.zrevrangebyscore(index, "+inf" if upper is None else upper, "-inf", start=0,
                              num=BATCH, withscores=True)


def take_entries(replies: list[Any], position: Position) -> tuple[list[tuple[int, str]], bool]:
    """The next BATCH entries from the replies of ``next_entries``, and whether
    the shard's index has nothing after them."""
    rows = [(int(score), job_id) for reply in replies for job_id, score in reply]
    if position is not None:
        rows = [row for row in rows if row < position]
    rows.sort(reverse=True)
    return rows[:BATCH], len(rows) <= BATCH and len(replies[-1]) < BATCH


# -- the walk ---------------------------------------------------------------------


class BulkStore(ListingStore):
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
        if ids is not None:
            return self._bulk_by_ids(command, actor, reason, ids, stop)
        return self._bulk_by_filter(command, actor, reason, where or JobFilter(), cursor,
                                    max_examined, stop)

    def _bulk_by_ids(self, command: str, actor: str, reason: str, ids: Sequence[str],
                     stop: Callable[[], bool]) -> BulkResult:
        result = BulkResult()
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

    def _bulk_by_filter(self, command: str, actor: str, reason: str, where: JobFilter,
                        cursor: str | None, max_examined: int,
                        stop: Callable[[], bool]) -> BulkResult:
        result = BulkResult()
        positions: dict[str, Position] = (decode_cursor(cursor) if cursor
                                          else dict.fromkeys(self.keys.shards))
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
                   reason: str, where: JobFilter | None = None) -> Call:
        where = where or JobFilter()
        return self.bindings.apply_commands.call(
            shard, job_ids, command, actor=actor, reason=reason, history_cap=self.history_cap,
            retention_seconds=self.retention_seconds, operation=secrets.token_hex(6),
            state=where.state, job_type=where.type, labels=where.labels, stalled=where.stalled,
            started=where.started)

    def _bulk_round(self, result: BulkResult, calls: list[Call], filtered: bool = False) -> None:
        if not calls:
            return
        with unavailable_on_redis_errors(write=True):
            replies = self.bindings.run_pipeline(calls)
        for reply in replies:
            counts = self.bindings.apply_commands.decode(reply)
            if filtered:
                # Listed a moment ago, deleted since: it no longer matches.
                counts = [*counts[:3], 0, counts[4] + counts[3]]
            result.add(counts)
