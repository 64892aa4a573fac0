"""The lexical indexes: jobs by name (``?name_prefix=``) and by worker (``?worker=``).

Each shard keeps two sorted sets whose members all have score 0, so Redis
orders them by their bytes (ZRANGEBYLEX): ``<text>\\0<score><id>``, the text
being the job's name (``idx:name``, written by registerJob and rerunJob) or
the worker of its last heartbeat (``idx:worker``, recordHeartbeats), the
score the job's registration time in µs, zero-padded to 20 digits. deleteJob
removes both. A job's entries of one text are thus in registration order,
and a listing reads them newest first from any position, as it reads the
score-ordered indexes.

A prefix of names spans many texts, whose entries are not in time order
across texts: the listing reads every entry of the prefix (at most
``MAX_PREFIX_ENTRIES`` over all shards, counted first with ZLEXCOUNT) and
sorts them; a prefix with more entries is listed by walking the time-ordered
indexes and checking the name of each job read, as other filters are.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from app.store.keys import ShardKeys

if TYPE_CHECKING:
    from app.store.connection import StoreClient

SCORE_DIGITS = 20
# A prefix with more entries than this over all shards is not read whole.
MAX_PREFIX_ENTRIES = 2000

Entry = tuple[int, str]   # (score, job id), listings go from the largest down


def member(text: str, score: int, job_id: str) -> bytes:
    return f"{text}\0{score:0{SCORE_DIGITS}d}{job_id}".encode()


def entry_of(raw: str | bytes) -> Entry:
    """(score, id) of a member; the text is everything before the last NUL."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    tail = text[text.rindex("\0") + 1:]
    return int(tail[:SCORE_DIGITS]), tail[SCORE_DIGITS:]


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    # UTF-8 never holds the byte 0xff: "[prefix" .. "[prefix\xff" is every
    # member that starts with the prefix.
    raw = prefix.encode()
    return b"[" + raw, b"[" + raw + b"\xff"


def text_entries(client: StoreClient, shards: Sequence[ShardKeys],
                 key_of: Callable[[ShardKeys], str], text: str, position: Entry | None,
                 count: int) -> list[Entry]:
    """The next ``count`` entries of exactly ``text`` after ``position``, newest
    first, over all shards: one ZREVRANGEBYLEX per shard, in one pipeline.

    Every member read starts with the same ``<text>\\0`` and then the
    zero-padded score and the id, so the members sort as their entries do:
    the shards' replies are merged as they come and only the ``count`` kept
    are parsed (up to 16 × ``count`` are read)."""
    raw = text.encode()
    lowest = b"[" + raw + b"\0"
    highest = (b"(" + member(text, *position)) if position else b"(" + raw + b"\x01"
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.zrevrangebylex(key_of(shard), highest, lowest, start=0, num=count)
    merged = heapq.merge(*pipe.execute(), reverse=True)
    return [entry_of(m) for m in itertools.islice(merged, count)]


def prefix_entries(client: StoreClient, shards: Sequence[ShardKeys],
                   key_of: Callable[[ShardKeys], str], prefix: str,
                   limit: int | None = None) -> list[Entry] | None:
    """Every entry whose text starts with ``prefix``, newest first; None when
    there are more than ``limit`` (MAX_PREFIX_ENTRIES), counted first in
    O(log N) per shard."""
    limit = MAX_PREFIX_ENTRIES if limit is None else limit
    low, high = _prefix_range(prefix)
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.zlexcount(key_of(shard), low, high)
    if sum(pipe.execute()) > limit:
        return None
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.zrangebylex(key_of(shard), low, high, start=0, num=limit)
    entries = [entry_of(m) for reply in pipe.execute() for m in reply]
    entries.sort(reverse=True)
    return entries
