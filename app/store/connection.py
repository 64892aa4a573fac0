"""Builds the Redis client and turns Redis trouble into ``StoreUnavailable``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import redis
import redis.cluster
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Error replies that mean "not now" rather than "wrong request".
_TRANSIENT_REPLIES = ("BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                      "TRYAGAIN", "NOREPLICAS", "MISCONF", "UNBLOCKED")


def connect(url: str, *, cluster: bool = False, max_connections: int = 32,
            socket_timeout: float = 2.0) -> redis.Redis:
    """A client with explicit timeouts, so a dead or frozen Redis costs at most
    ``socket_timeout`` per request, never a hang.

    One retry after a dropped connection (a restarted Redis): every script is
    safe to replay, as a repeated command is a no-op."""
    retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1,
                  supported_errors=(redis.exceptions.ConnectionError,))
    options = dict(
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=retry,
        decode_responses=True,
        health_check_interval=0,
        client_name="karmchari",
    )
    if cluster:
        return redis.cluster.RedisCluster.from_url(
            url, max_connections=max_connections, **options
        )
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=socket_timeout, **options
    )
    return redis.Redis(connection_pool=pool)


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


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as error:
        if is_transient(error):
            log.warning("redis unavailable: %s: %s", type(error).__name__, error)
            raise StoreUnavailable(str(error) or type(error).__name__) from error
        raise
