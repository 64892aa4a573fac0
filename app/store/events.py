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

import redis.cluster

from app.store import JobStore
from app.store.connection import left_behind

log = logging.getLogger(__name__)


class TooManyWaiters(Exception):
    pass


class ChangeNotifier:
    def __init__(self, store: JobStore, max_waiters: int, poll_interval: float = 1.0) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._slots = threading.BoundedSemaphore(max_waiters)
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = {}
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
            by_node.setdefault(client.get_node_from_key(channel).name, []).append(channel)
        return list(by_node.values())

    def stop(self) -> None:
        """Answer every waiting request now, with the job as it is: a service
        shutting down must not wait for long-polls to run out."""
        self._stopping.set()
        self._wanted.set()  # a listener still waiting for it ends
        with self._lock:
            for events in self._events.values():
                for event in events:
                    event.set()

    def wait_for_change(self, job_id: str, version: int | None, timeout: float):
        """The job once its version differs from ``version`` (or its current
        version when None), or after ``timeout`` seconds; with server time."""
        if not self._slots.acquire(blocking=False):
            raise TooManyWaiters()
        event = threading.Event()
        with self._lock:
            self._events.setdefault(job_id, set()).add(event)
        try:
            deadline = time.monotonic() + timeout
            self._await_subscriptions(min(timeout, self._poll_interval))
            job, now_ms = self._store.get_with_time(job_id)
            if version is None:
                version = job.version
            while job.version == version:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                event.wait(min(remaining, self._poll_interval))
                event.clear()
                job, now_ms = self._store.get_with_time(job_id)
            return job, now_ms
        finally:
            with self._lock:
                waiting = self._events.get(job_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._events[job_id]
            self._slots.release()

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
        """How many requests are in a long-poll now."""
        with self._lock:
            return sum(len(events) for events in self._events.values())

    def _wake(self, job_id: str) -> None:
        with self._lock:
            for event in self._events.get(job_id, ()):
                event.set()

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
