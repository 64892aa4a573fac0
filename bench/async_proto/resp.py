"""A minimal asyncio Redis client on hiredis, with auto-pipelining.

``hiredis.pack_command`` packs, ``hiredis.Reader`` parses. Every command
issued during one turn of the event loop is queued and written with one
``transport.write`` at the start of the next turn, so under load one write
and one read carry the commands of many requests; Redis answers in order,
so replies are matched to waiting futures first in, first out.

Failures end as ``RedisUnavailable`` (the caller's 503), never a hang: a
connection whose oldest command has waited longer than ``timeout`` is
closed, which fails every command on it; the next command reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import time
from typing import Any

import hiredis


class RedisUnavailable(Exception):
    """Redis could not be reached, or did not answer in time."""


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``)."""


class RedisProtocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8")
        # (future, monotonic time its command was queued), oldest first.
        self._waiting: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._queued: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timeout = timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._watchdog = self._loop.call_later(self._timeout / 2, self._check_timeout)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        gets, waiting = self._reader.gets, self._waiting
        while (reply := gets()) is not False:
            future = waiting.popleft()[0]
            if future.done():  # its request was cancelled (client went away)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection lost: {exc or 'closed'}"))

    # -- commands ---------------------------------------------------------------

    def execute(self, args: tuple) -> asyncio.Future:
        """Queue one command; the future gets its reply."""
        future = self._loop.create_future()
        if self.closed:
            future.set_exception(RedisUnavailable("connection closed"))
            return future
        if not self._queued:
            self._loop.call_soon(self._flush)
        self._queued.append(hiredis.pack_command(args))
        self._waiting.append((future, time.monotonic()))
        return future

    def _flush(self) -> None:
        if self._queued and not self.closed and self._transport is not None:
            self._transport.write(b"".join(self._queued))
        self._queued.clear()

    def _check_timeout(self) -> None:
        if self.closed:
            return
        if self._waiting and time.monotonic() - self._waiting[0][1] > self._timeout:
            self._fail(RedisUnavailable(f"no answer from Redis within {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout / 2, self._check_timeout)

    def _fail(self, error: Exception) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        self._queued.clear()


class AsyncRedis:
    """A few auto-pipelined connections, used in turn, (re)connected on demand.

    ``url``: ``unix:///path`` or ``redis://host:port``."""

    def __init__(self, url: str, *, connections: int = 1, timeout: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout
        self._slots: list[RedisProtocol | None] = [None] * connections
        self._connecting: list[asyncio.Future | None] = [None] * connections
        self._turn = itertools.cycle(range(connections))

    async def execute(self, *args: Any) -> Any:
        slot = next(self._turn)
        protocol = self._slots[slot]
        if protocol is None or protocol.closed:
            protocol = await self._connect(slot)
        return await protocol.execute(args)

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and EVAL when Redis lost the script, as the product does."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def _connect(self, slot: int) -> RedisProtocol:
        # One connect per slot at a time; the requests meanwhile wait for it.
        pending = self._connecting[slot]
        if pending is None:
            pending = self._connecting[slot] = asyncio.ensure_future(self._open())
            pending.add_done_callback(lambda _: self._connecting.__setitem__(slot, None))
        protocol = await asyncio.shield(pending)
        self._slots[slot] = protocol
        return protocol

    async def _open(self) -> RedisProtocol:
        loop = asyncio.get_running_loop()
        if self._url.startswith("unix://"):
            opening = loop.create_unix_connection(
                lambda: RedisProtocol(self._timeout), self._url[len("unix://"):])
        else:
            host, _, port = self._url.removeprefix("redis://").split("/")[0].rpartition(":")
            opening = loop.create_connection(lambda: RedisProtocol(self._timeout), host,
                                             int(port))
        try:
            _, protocol = await asyncio.wait_for(opening, self._timeout)
        except (OSError, asyncio.TimeoutError) as error:
            raise RedisUnavailable(f"cannot connect to {self._url}: {error!r}") from None
        return protocol


class Script:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
