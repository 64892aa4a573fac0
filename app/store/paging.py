"""Paging down sorted sets kept one per shard: the next entries of each below
a (score, member) position, newest first.

Listings (job ids) and the workers' list (worker names) page this way: a
position's score may be shared by any number of members, so the entries tied
with it are read in full and those below it at most ``count`` per shard, two
ZREVRANGEBYSCOREs per shard in one pipeline."""

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
    tied = position if position is not None and (upper is None or position[0] <= upper) \
        else None
    if tied is not None:
        below: int | str = f"({tied[0]}"
    elif upper is not None:
        below = upper
    else:
        below = "+inf"
    with unavailable_on_redis_errors():
        pipe = client.pipeline(transaction=False)
        for key in keys:
            if tied is not None:
                pipe.zrevrangebyscore(key, tied[0], tied[0], withscores=True)
            pipe.zrevrangebyscore(key, below, "-inf", start=0, num=count, withscores=True)
        replies = pipe.execute()
    if tied is not None:
        replies = [replies[i] + replies[i + 1] for i in range(0, len(replies), 2)]
    heads = []
    for reply in replies:
        rows = sorted(((int(score), member) for member, score in reply), reverse=True)
        heads.append([row for row in rows if tied is None or row < tied][:count])
    return heads
