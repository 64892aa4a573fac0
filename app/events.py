"""Wakes long-poll requests when a job changes.

The scripts announce each change on their shard's channel (sharded pub/sub,
``SPUBLISH``). The state in Redis stays the truth: a waiter re-reads the job
when woken and at least every ``poll_interval`` seconds, so a lost message (a
reconnect, a failover) costs latency, never a missed change.

The listeners subscribe at the first long-poll, not before: every message
wakes a listener thread of every service process, which costs each write a
noticeable share of its throughput (docs/benchmarks.md), worth paying only once
some client waits for changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.cluster

from app.model import Job
from app.store import JobStore
from app.store.connection import left_behind

log = logging.getLogger(__name__)

# Says whether the client of a waiting request went away (from the server).
Gone = Callable[[], bool]


class TooManyWaiters(Exception):
    pass


# How often a waiting request asks whether its client is still there: a slot is
# freed at most this long after the client went away.
GONE_CHECK_INTERVAL = 0.5


class _Waiter:
    """One waiting request: the jobs named in change messages since it last
    looked, and an event that wakes it."""

    __slots__ = ("event", "dirty")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.dirty: set[str] = set()

    def take(self, lock: threading.Lock) -> set[str]:
        with lock:
            dirty, self.dirty = self.dirty, set()
            self.event.clear()
        return dirty


@dataclass
class WatchResult:
    changed: list[Job]
    missing: list[str]
    now_ms: int


class ChangeNotifier:
    """Counts waiting requests, not jobs: a watch of many jobs holds one
    request thread, so it takes one of the ``max_waiters`` slots."""

    def __init__(self, store: JobStore, max_waiters: int, poll_interval: float = 1.0,
                 per_holder: int = 0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._slots = threading.BoundedSemaphore(max_waiters)
        # Slots one client (token name, or peer address) may hold: one client
        # alone must not take them all. 0: no cap of its own.
        self._per_holder = per_holder
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._waiting = 0
        self._stopping = threading.Event()
        self._wanted = threading.Event()  # set by the first long-poll
        self._threads: list[threading.Thread] = []
        self._subscribed: list[threading.Event] = []  # one per listener

    def start(self) -> None:
        """Start the listeners; they subscribe when the first long-poll comes."""
        if not self._threads:
            for channels in self._channel_groups():
                subscribed = threading.Event()
                thread = threading.Thread(target=self._listen, args=(channels, subscribed),
                                          name="karmchari-events", daemon=True)
                thread.start()
                self._threads.append(thread)
                self._subscribed.append(subscribed)

    def _channel_groups(self) -> list[list[str]]:
        """The shard channels, one group per Redis Cluster master: redis-py's
        cluster pub/sub waits on one node at a time, so a single listener would
        hear the other masters up to a second late. The groups are a matter of
        latency only: each listener follows its channels if they move."""
        channels = [shard.channel for shard in self._store.keys.shards.values()]
        client = self._store.client
        if not isinstance(client, redis.cluster.RedisCluster):
            return [channels]
        by_node: dict[str, list[str]] = {}
        for channel in channels:
            node = client.get_node_from_key(channel)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
            by_node.setdefault(node.name, []).append(channel)
        return list(by_node.values())

    def stop(self) -> None:
        """Answer every waiting request now, with the job as it is: a service
        shutting down must not wait for long-polls to run out."""
        self._stopping.set()
        self._wanted.set()  # a listener still waiting for it ends
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter.event.set()

    @contextmanager
    def _waiting_on(self, job_ids: Iterable[str], holder: str = "") -> Iterator[_Waiter]:
        """A slot (one of ``holder``'s too), and a waiter that change messages of
        ``job_ids`` wake."""
        if holder and self._per_holder:
            with self._lock:
                if self._held.get(holder, 0) >= self._per_holder:
                    raise TooManyWaiters()
                self._held[holder] = self._held.get(holder, 0) + 1
        if not self._slots.acquire(blocking=False):
            self._release_holder(holder)
            raise TooManyWaiters()
        waiter = _Waiter()
        with self._lock:
            self._waiting += 1
            for job_id in job_ids:
                self._waiters.setdefault(job_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                self._waiting -= 1
                for job_id in job_ids:
                    waiters = self._waiters.get(job_id)
                    if waiters is not None:
                        waiters.discard(waiter)
                        if not waiters:
                            del self._waiters[job_id]
            self._slots.release()
            self._release_holder(holder)

    def _release_holder(self, holder: str) -> None:
        if holder and self._per_holder:
            with self._lock:
                left = self._held.pop(holder) - 1
                if left:
                    self._held[holder] = left

    def _wait(self, waiter: _Waiter, seconds: float, gone: Gone | None) -> bool:
        """Wait for a wake-up at most ``seconds``; False once the client is gone
        (``gone``, from the server, says so)."""
        if gone is None:
            waiter.event.wait(seconds)
            return True
        end = time.monotonic() + seconds
        while True:
            if gone():
                return False
            left = end - time.monotonic()
            if left <= 0 or waiter.event.wait(min(left, GONE_CHECK_INTERVAL)):
                return True

    def wait_for_change(self, job_id: str, version: int | None, timeout: float,
                        holder: str = "", gone: Gone | None = None) -> tuple[Job, int]:
        """The job once its version differs from ``version`` (or its current
        version when None), or after ``timeout`` seconds, or once ``gone()``
        says the client went away; with server time."""
        with self._waiting_on((job_id,), holder) as waiter:
            deadline = time.monotonic() + timeout
            self._await_subscriptions(min(timeout, self._poll_interval))
            job, now_ms = self._store.get_with_time(job_id)
            if version is None:
                version = job.version
            while job.version == version:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                if not self._wait(waiter, min(remaining, self._poll_interval), gone):
                    break
                waiter.take(self._lock)
                job, now_ms = self._store.get_with_time(job_id)
            return job, now_ms

    def watch(self, versions: dict[str, int], timeout: float, holder: str = "",
              gone: Gone | None = None) -> WatchResult:
        """Wait until a job's version differs from the one given (or the job
        is gone), at most ``timeout`` seconds. Only the jobs named in change
        messages are read again, and every job at least every
        ``poll_interval`` (by version alone: one HMGET each)."""
        with self._waiting_on(versions, holder) as waiter:
            deadline = time.monotonic() + timeout
            self._await_subscriptions(min(timeout, self._poll_interval))
            last_full = time.monotonic()
            result = self._changes(versions, versions)
            while not (result.changed or result.missing):
                now = time.monotonic()
                if now >= deadline or self._stopping.is_set():
                    break
                if not self._wait(waiter, max(0.0, min(deadline, last_full + self._poll_interval)
                                              - now), gone):
                    break
                dirty = waiter.take(self._lock)
                # By time, not by wake-ups: a stream of messages about other
                # jobs must not put off the re-read that covers a lost one.
                if time.monotonic() - last_full >= self._poll_interval:
                    last_full = time.monotonic()
                    result = self._changes(versions, versions)
                else:
                    result = self._named(versions, [i for i in dirty if i in versions])
            return result

    def _changes(self, versions: dict[str, int], suspects: Iterable[str]) -> WatchResult:
        ids = list(suspects)
        current = self._store.versions(ids) if ids else []
        missing = [i for i, v in zip(ids, current, strict=True) if v is None]
        changed_ids = [i for i, v in zip(ids, current, strict=True)
                       if v is not None and v != versions[i]]
        if not changed_ids:
            return WatchResult([], missing, 0)
        jobs, now_ms = self._store.get_many_with_time(changed_ids)
        # A job deleted between the two reads is missing too.
        missing += [i for i, job in zip(changed_ids, jobs, strict=True) if job is None]
        return WatchResult([job for job in jobs if job is not None], missing, now_ms)

    def _named(self, versions: dict[str, int], ids: list[str]) -> WatchResult:
        """The jobs named in change messages, read whole at once: a message
        means a change, so first comparing versions would cost a round trip
        for nothing."""
        if not ids:
            return WatchResult([], [], 0)
        jobs, now_ms = self._store.get_many_with_time(ids)
        return WatchResult([j for j in jobs if j is not None and j.version != versions[j.id]],
                           [i for i, j in zip(ids, jobs, strict=True) if j is None], now_ms)

    def _await_subscriptions(self, timeout: float) -> None:
        """Have the listeners subscribe, and wait (at most ``timeout``) until
        they are, so that a change right after the first read still wakes
        this request. Immediate once they have subscribed."""
        self._wanted.set()
        deadline = time.monotonic() + timeout
        for subscribed in self._subscribed:
            if not subscribed.wait(max(0.0, deadline - time.monotonic())):
                return

    def waiting(self) -> int:
        """How many requests are in a long-poll or a watch now."""
        with self._lock:
            return self._waiting

    def watched(self) -> int:
        """How many distinct jobs the waiting requests wait on."""
        with self._lock:
            return len(self._waiters)

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for waiter in self._waiters.get(job_id, ()):
                waiter.dirty.add(job_id)
                waiter.event.set()

    def _listen(self, channels: list[str], subscribed: threading.Event) -> None:
        self._wanted.wait()
        backoff = 0.1
        while not self._stopping.is_set():
            pubsub = None
            try:
                pubsub = self._store.client.pubsub()
                pubsub.ssubscribe(*channels)
                backoff = 0.1
                confirmed = 0
                # After a Sentinel failover, resubscribe on the new master.
                while not self._stopping.is_set() and not left_behind(pubsub):
                    message = pubsub.get_sharded_message(timeout=1.0) \
                        if hasattr(pubsub, "get_sharded_message") \
                        else pubsub.get_message(timeout=1.0)
                    kind = message and message.get("type")
                    if kind == "smessage":
                        self._wake(message["data"].split(" ", 1)[0])
                    elif kind == "ssubscribe":
                        confirmed += 1
                        if confirmed == len(channels):
                            subscribed.set()
            except Exception as error:  # noqa: BLE001 - keep listening whatever happens
                log.debug("event listener: %s; reconnecting", error)
                self._stopping.wait(backoff)
                # No longer than the re-read interval: after an outage, messages
                # should wake waiters again as soon as Redis is back.
                backoff = min(backoff * 2, self._poll_interval)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
