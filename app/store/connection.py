"""Builds the Redis client and turns Redis trouble into ``StoreUnavailable``."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.cluster
import redis.sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from app.errors import OutcomeUnknown, StoreUnavailable
from app.store.lean import LeanBlockingConnectionPool, LeanRedis

# What connect() gives: one server (or a Sentinel's master), or a cluster.
StoreClient = redis.Redis | redis.cluster.RedisCluster

log = logging.getLogger(__name__)

# Error replies that mean "not now" rather than "wrong request".
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                      "TRYAGAIN", "NOREPLICAS", "MISCONF", "UNBLOCKED")


def connect(url: str, *, cluster: bool = False, sentinels: Sequence[tuple[str, int]] = (),
            sentinel_master: str = "mymaster", max_connections: int = 32,
            socket_timeout: float = 2.0, decode_responses: bool = True) -> StoreClient:
    """A client with explicit timeouts, so a dead or frozen Redis costs at most
    ``socket_timeout`` per request, never a hang.

    One retry after a dropped connection (a restarted Redis, a failover): every
    script is safe to replay, as a repeated command is a no-op.

    With ``sentinels``, the master they name ``sentinel_master``; ``url`` then
    brings only its credentials, database and TLS options."""
    retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1,
                  supported_errors=(redis.exceptions.ConnectionError,))
    options = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=retry,
        decode_responses=decode_responses,
        health_check_interval=0,
        client_name="karmchari",
    )
    if cluster:
        tls = url.startswith("rediss:")
        return redis.cluster.RedisCluster.from_url(
            url, max_connections=max_connections, **options,
            connection_class=counting_sends(redis.SSLConnection if tls else redis.Connection))
    if sentinels:
        client = _sentinel_master(url, sentinels, sentinel_master, max_connections, options)
    else:
        pool = LeanBlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=socket_timeout, **options
        )
        client = LeanRedis(connection_pool=pool)
    used = client.connection_pool
    used.connection_class = counting_sends(used.connection_class)
    return client


def _is_script(packed: Any) -> bool:
    """Whether a packed command (or a pipeline's, whose commands here are all
    alike) is EVAL or EVALSHA: "*<n>\r\n$<len>\r\nEVALSHA\r\n..." opens its first chunk."""
    first = packed.encode() if isinstance(packed, str) else (
        packed if isinstance(packed, bytes | bytearray | memoryview) else next(iter(packed), b""))
    parts = bytes(first[:48]).split(b"\r\n", 3)
    return len(parts) > 2 and parts[2].upper() in (b"EVAL", b"EVALSHA")


class _Sent(threading.local):
    scripts = 0


_SENT = _Sent()


def counting_sends(connection_class: type) -> type:
    """``connection_class`` that counts, per thread, the scripts (EVAL, EVALSHA)
    it has sent in full. Once a script is sent, a missing reply leaves its
    outcome unknown; before, the failure proves it did not run."""
    if getattr(connection_class, "counts_sends", False):
        return connection_class

    # A class made at run time from the one the pool was given: its type is
    # only known as "a type", so the subclass is of Any.
    class Counting(connection_class):  # type: ignore[misc]
        counts_sends = True

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            super().send_packed_command(command, check_health)
            if _is_script(command):
                _SENT.scripts += 1

    Counting.__name__ = Counting.__qualname__ = "Counting" + connection_class.__name__
    return Counting


class _MasterFollowingPool(redis.sentinel.SentinelConnectionPool):
    """redis-py's Sentinel pool, which also asks the Sentinels for the master at
    most once a second as connections are taken, and drops the idle connections
    to a former master. Alone it moves only when a connection breaks or meets
    READONLY, but after ``SENTINEL FAILOVER`` the old master stays a writable
    master until Sentinel reconfigures it some ten seconds later, and discards
    what it accepted meanwhile. Connections in use are dropped when released.

    Like redis-py's pool it does not wait for a free connection: once
    ``max_connections`` are in use it raises MaxConnectionsError at once (a 503)."""

    check_interval = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        self._next_check = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_interval
            # No Sentinel answering: keep the connections there are.
            with contextlib.suppress(redis.exceptions.ConnectionError):
                self.get_master_address()  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        return super().get_connection(*args, **kwargs)


def left_behind(pubsub: redis.client.PubSub) -> bool:
    """Whether this subscription is on a master the Sentinels no longer name: a
    subscribed connection is never released, so the pool cannot drop it."""
    pool = pubsub.connection_pool
    return (isinstance(pool, redis.sentinel.SentinelConnectionPool)
            and pubsub.connection is not None and not pool.owns_connection(pubsub.connection))


def _sentinel_master(url: str, sentinels: Sequence[tuple[str, int]], name: str,
                     max_connections: int, options: dict[str, Any]) -> redis.Redis:
    """Each new connection asks the Sentinels where the master is, so a failover
    costs the requests in flight a retry or a 503, never a restart.

    The Sentinels are asked once each, without a retry of their own: a request
    must not wait out redis-py's default backoff when none of them answers. They
    are reached without credentials or TLS."""
    master = parse_url(url)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
    for address_part in ("host", "port"):
        master.pop(address_part, None)
    if master.pop("connection_class", None) is redis.SSLConnection:
        master["ssl"] = True  # SentinelConnectionPool picks its own TLS connection class
    sentinel = redis.sentinel.Sentinel(
        sentinels, sentinel_kwargs=dict(
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["socket_connect_timeout"],
            retry=Retry(NoBackoff(), retries=0), health_check_interval=0))
    client: redis.Redis = sentinel.master_for(
        name, connection_pool_class=_MasterFollowingPool, max_connections=max_connections,
        **options, **master)
    return client


def is_transient(error: Exception) -> bool:
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                          redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError,
                          redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                          redis.exceptions.MasterDownError, redis.exceptions.OutOfMemoryError,
                          redis.exceptions.MaxConnectionsError)):
        return True
    # In a pipeline, redis-py puts "Command # n (...) of pipeline caused error: "
    # before the reply.
    reply = str(error).rpartition(" of pipeline caused error: ")[2]
    return isinstance(error, redis.exceptions.ResponseError) and reply.startswith(
        _TRANSIENT_REPLIES
    )


# Connection errors that come with a reply or before any command: the command
# did not run.
_REFUSED = (redis.exceptions.BusyLoadingError, redis.exceptions.AuthenticationError,
            redis.exceptions.MaxConnectionsError)


def _reply_lost(error: Exception) -> bool:
    return isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)) \
        and not isinstance(error, _REFUSED)


@contextlib.contextmanager
def unavailable_on_redis_errors(*, write: bool = False) -> Iterator[None]:
    """Redis trouble as ``StoreUnavailable`` (503, the change did not happen), or,
    for a ``write`` whose script was sent but whose reply never came (a timeout
    after sending, a connection lost while waiting, even if redis-py's retry then
    failed to reconnect), as ``OutcomeUnknown``: it may have been applied."""
    sent_before = _SENT.scripts
    try:
        yield
    except redis.exceptions.RedisError as error:
        if write and _SENT.scripts > sent_before and _reply_lost(error):
            log.warning("redis reply lost after a write was sent: %s: %s",
                        type(error).__name__, error)
            raise OutcomeUnknown(str(error) or type(error).__name__) from error
        if is_transient(error):
            log.warning("redis unavailable: %s: %s", type(error).__name__, error)
            raise StoreUnavailable(str(error) or type(error).__name__) from error
        raise
