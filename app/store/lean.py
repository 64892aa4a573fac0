"""A leaner way through redis-py for the standalone client: same connections,
same timeouts, same one retry, less bookkeeping per command.

redis-py records OpenTelemetry-style figures on every command and on every
pool checkout and return (operation durations, connection counts by state,
wait times), and takes the maintenance-notification branches, whether or not
anything reads them. Karmchari exports none of those figures and does not
enable maintenance notifications, and on the hot path that bookkeeping cost
more than the command itself: an ``HMGET`` from one thread took about 67 µs of
CPU through ``redis.Redis`` with a ``BlockingConnectionPool``, and about 35 µs
through these two classes (redis 8.1, hiredis, loopback TCP).
"""

from __future__ import annotations

from queue import Empty, Full

import redis
from redis.maint_notifications import MaintNotificationsConfig

# What ``LeanRedis.execute_command`` leaves to redis-py: options it does not
# handle itself (client-side caching keys are dropped by parse_response).
_DELEGATED_COMMANDS = frozenset({"HIMPORT", "HIMPORT SET"})


class LeanBlockingConnectionPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool without the per-checkout telemetry: a LIFO
    queue of connections, at most ``max_connections``, waiting at most
    ``timeout`` for a free one (then ``ConnectionError``, a 503)."""

    def __init__(self, *args, **kwargs) -> None:
        # Maintenance notifications are a managed-Redis feature (RESP3 push
        # messages before a planned failover) that redis-py turns on in "auto"
        # mode; this pool does not take their locks, so it runs without them.
        kwargs.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
        super().__init__(*args, **kwargs)
        if self.cache is not None or self.maint_notifications_enabled():
            raise ValueError("LeanBlockingConnectionPool supports neither client-side caching "
                             "nor maintenance notifications")

    def get_connection(self, *args, **kwargs) -> redis.Connection:
        self._checkpid()  # fork safety (--workers), as redis-py does
        try:
            connection = self.pool.get(block=True, timeout=self.timeout)
        except Empty:
            raise redis.exceptions.ConnectionError("No connection available.") from None
        if connection is None:
            connection = self.make_connection()
        try:
            connection.connect()
            # As redis-py: a connection with something to read was returned in
            # the middle of a reply, or closed by the server; start it afresh.
            try:
                if connection.can_read():
                    raise redis.exceptions.ConnectionError("Connection has data")
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                connection.disconnect()
                connection.connect()
                if connection.can_read():
                    raise redis.exceptions.ConnectionError("Connection not ready") from None
        except BaseException:
            self.release(connection)
            raise
        return connection

    # The pool only ever hands out (and so takes back) Connections.
    def release(self, connection: redis.Connection) -> None:  # type: ignore[override]
        self._checkpid()
        kept: redis.Connection | None = connection
        if not self.owns_connection(connection):
            # Made before a fork: never reuse it, let a new one take its place.
            connection.disconnect()
            kept = None
        try:
            self.pool.put_nowait(kept)
        except Full:
            pass


class LeanRedis(redis.Redis):
    """``redis.Redis`` whose commands take a pooled connection, send, read and
    give it back, retrying with the connection's ``Retry`` as redis-py does
    (the failed connection is closed before the retry), without redis-py's
    per-command telemetry."""

    def execute_command(self, *args, **options):
        if self.connection is not None or args[0] in _DELEGATED_COMMANDS:
            return super().execute_command(*args, **options)
        pool = self.connection_pool
        conn = pool.get_connection()
        try:
            return conn.retry.call_with_retry(
                lambda: self._send_and_parse(conn, args, options),
                lambda error: conn.disconnect())
        finally:
            pool.release(conn)

    def _send_and_parse(self, conn: redis.Connection, args: tuple, options: dict):
        conn.send_command(*args, **options)
        return self.parse_response(conn, args[0], **options)
