"""Paging down sorted sets kept one per shard: the next entries of each below
a (score, member) position, newest first.

Listings (job ids) and the workers' list (worker names) page this way: a
position's score may be shared by any number of members, so the entries tied
with it are read in full and those below it at most ``count`` per shard, two
ZREVRANGEBYSCOREs per shard in one pipeline. ``entries_below_each`` gives
each shard its own position and count (listings read a small head of every
shard, then more of only some)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.store.connection import unavailable_on_redis_errors

if TYPE_CHECKING:
    from app.store.connection import StoreClient

Entry = tuple[int, str]   # (score, member), a page goes from the largest down


def entries_below(client: StoreClient, keys: Sequence[str], position: Entry | None,
                  count: int, upper: int | None = None) -> list[list[Entry]]:
    """Per key (one sorted set per shard), its next ``count`` entries below
    ``position``, newest first; from the top when ``position`` is None.

    ``upper``: only scores up to it are read; a position above it reads from
    ``upper`` down, as if there were none."""
    return entries_below_each(client, [(key, position, count) for key in keys], upper)


def entries_below_each(client: StoreClient, reads: Sequence[tuple[str, Entry | None, int]],
                       upper: int | None = None) -> list[list[Entry]]:
    """As ``entries_below``, each key with its own position and count:
    ``reads`` is (key, position, count) per key. A key's answer is shorter
    than its count only if it holds no more entries below its position."""
    with unavailable_on_redis_errors():
        pipe = client.pipeline(transaction=False)
        tied_at: list[Entry | None] = []
        for key, position, count in reads:
            tied = position if position is not None and (upper is None or position[0] <= upper) \
                else None
            tied_at.append(tied)
            if tied is not None:
                below: int | str = f"({tied[0]}"
                pipe.zrevrangebyscore(key, tied[0], tied[0], withscores=True)
            elif upper is not None:
                below = upper
            else:
                below = "+inf"
            pipe.zrevrangebyscore(key, below, "-inf", start=0, num=count, withscores=True)
        replies = iter(pipe.execute())
    heads = []
    for (_, _, count), tied in zip(reads, tied_at, strict=True):
        reply = next(replies) + next(replies) if tied is not None else next(replies)
        rows = sorted(((int(score), member) for member, score in reply), reverse=True)
        heads.append([row for row in rows if tied is None or row < tied][:count])
    return heads
