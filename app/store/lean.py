"""A leaner way through redis-py for the standalone client: same commands,
same replies and errors, same one retry, less work per command.

redis-py records OpenTelemetry-style figures on every command and on every
pool checkout and return, and takes the maintenance-notification branches,
whether or not anything reads them; it encodes each argument in Python before
hiredis packs them; and its sockets carry Python-level timeouts, so every send
and every receive is preceded by a ``poll()``, and every checkout polls the
socket through a ``settimeout`` dance. Here:

- ``LeanRedis`` and ``LeanBlockingConnectionPool`` skip the telemetry;
- ``LeanConnection`` packs with ``hiredis.pack_command`` directly (a 22-argument
  EVALSHA: 1.8 µs instead of 13-17), and on Linux times its reads and writes
  with the kernel (``SO_RCVTIMEO`` / ``SO_SNDTIMEO`` on a blocking socket): a
  frozen Redis still costs at most the socket timeout, without a ``poll()``
  per call;
- the pool gives each thread back the connection it used last (one connection
  per request thread), still bounded by ``max_connections``, and checks it for
  a close by the server with one ``poll(0)`` on a poller made once.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import hiredis
import redis
from redis._parsers import _HiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import SENTINEL

# What ``LeanRedis.execute_command`` leaves to redis-py: options it does not
# handle itself (client-side caching keys are dropped by parse_response).
_DELEGATED_COMMANDS = frozenset({"HIMPORT", "HIMPORT SET"})

# The socket options take a struct timeval; its layout here is Linux's.
KERNEL_TIMEOUTS = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")


class _HiredisPacker:
    """``hiredis.pack_command`` on the arguments as they are: str (as UTF-8,
    strictly), bytes, int and float (formatted as ``repr``, as redis-py's
    encoder does) give the very bytes redis-py sends. Anything else (bool,
    None, an int subclass, a command name with a space such as "CLIENT
    SETNAME") goes to redis-py's packer, which encodes or refuses it as ever."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def pack(self, *args: Any) -> Any:
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._fallback.pack(*args)


class _KernelTimeoutParser(_HiredisParser):
    """redis-py's hiredis parser for a blocking socket that the kernel times:
    a receive that runs out of time fails with EAGAIN, which is turned into
    the ``socket.timeout`` of a Python-timed socket, so the connection reports
    (and disconnects on) a ``TimeoutError`` exactly as before."""

    def on_connect(self, connection: Any, **kwargs: Any) -> None:
        super().on_connect(connection, **kwargs)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        if getattr(connection, "kernel_timeouts", False):
            # A read with its own timeout (pub/sub) restores this afterwards:
            # blocking again, timed by the kernel.
            self._socket_timeout = None

    def read_from_socket(self, timeout: Any = SENTINEL, raise_on_timeout: bool = True) -> Any:
        sock, reader = self._sock, self._reader
        if timeout is not SENTINEL or sock is None or reader is None \
                or self._socket_timeout is not None:  # timed by Python: as redis-py
            return super().read_from_socket(timeout, raise_on_timeout)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        try:
            count = sock.recv_into(self._buffer)
        except BlockingIOError:
            raise TimeoutError("timed out") from None  # socket.timeout
        if count == 0:
            raise redis.exceptions.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        reader.feed(self._buffer, 0, count)  # type: ignore[arg-type]  # bytearray works
        return True


if TYPE_CHECKING:
    _ConnectionBase = redis.Connection
else:
    _ConnectionBase = object


class _Lean(_ConnectionBase):
    """What ``LeanConnection`` adds to a redis-py connection class (TCP or
    Unix socket)."""

    kernel_timeouts = False
    _poller: select.poll | None = None

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _KernelTimeoutParser)
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        encoder = self.encoder
        if encoder.encoding.lower().replace("-", "") == "utf8" \
                and encoder.encoding_errors == "strict":
            self._command_packer = _HiredisPacker(self._command_packer)

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        timeout = self.socket_timeout
        self.kernel_timeouts = bool(KERNEL_TIMEOUTS and timeout)
        if timeout and self.kernel_timeouts:
            seconds = int(timeout)
            timeval = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock.settimeout(None)
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        return sock

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._poller = None
        super().disconnect(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py internals are untyped

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        except redis.exceptions.ConnectionError as error:
            # SO_SNDTIMEO ran out (a full send buffer, Redis not reading): a
            # timeout, as a Python-timed socket reports it; not retried.
            if isinstance(error.__cause__, BlockingIOError):
                raise redis.exceptions.TimeoutError("Timeout writing to socket") from None
            raise

    def stale(self) -> bool:
        """Whether an idle connection must not be reused as it is: closed by
        the server (a restart, a kill, CLIENT KILL), or holding bytes that no
        command asked for. One ``poll(0)``, no timeout juggling."""
        reader = getattr(self._parser, "_reader", None)
        if self._poller is None or reader is None:
            return True
        return reader.has_data() or bool(self._poller.poll(0))


class LeanConnection(_Lean, redis.Connection):
    pass


class LeanUnixDomainSocketConnection(_Lean, redis.UnixDomainSocketConnection):
    pass


_LEAN_CLASSES: dict[type, type] = {redis.Connection: LeanConnection,
                                   redis.UnixDomainSocketConnection:
                                       LeanUnixDomainSocketConnection}


def _stale(connection: redis.Connection) -> bool:
    """``_Lean.stale``; for redis-py's own classes (TLS), its readiness check."""
    if isinstance(connection, _Lean):
        return connection.stale()
    try:
        return connection.can_read()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return True


class _ThreadConnection(threading.local):
    connection: redis.Connection | None = None


class LeanBlockingConnectionPool(redis.BlockingConnectionPool):
    """At most ``max_connections``; a thread gets back the connection it used
    last if it is idle, else any idle one (the most recently returned), else a
    new one while under the limit, else waits at most ``timeout`` for one
    (then ``ConnectionError``, a 503). TLS connections keep redis-py's class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Maintenance notifications are a managed-Redis feature (RESP3 push
        # messages before a planned failover) that redis-py turns on in "auto"
        # mode; this pool does not take their locks, so it runs without them.
        kwargs.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
        connection_class = kwargs.get("connection_class", redis.Connection)
        kwargs["connection_class"] = _LEAN_CLASSES.get(connection_class, connection_class)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        if self.cache is not None or self.maint_notifications_enabled():  # type: ignore[no-untyped-call]  # redis-py internals are untyped
            raise ValueError("LeanBlockingConnectionPool supports neither client-side caching "
                             "nor maintenance notifications")

    def reset(self) -> None:
        super().reset()  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        self._available = threading.Condition(threading.Lock())
        self._idle: dict[redis.Connection, None] = {}  # insertion-ordered: LIFO by popitem
        self._made = 0
        self._thread = _ThreadConnection()

    def _take(self) -> redis.Connection | None:
        """An idle connection, or None when one may be made; waits if neither."""
        mine = self._thread.connection
        with self._available:
            if mine is not None and mine in self._idle:
                del self._idle[mine]
                return mine
            deadline = None
            while True:
                if self._idle:
                    return self._idle.popitem()[0]
                if self._made < self.max_connections:
                    self._made += 1
                    return None
                if deadline is None:
                    deadline = time.monotonic() + (self.timeout or 0)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._available.wait(remaining) and not self._idle:
                    raise redis.exceptions.ConnectionError("No connection available.")

    def get_connection(self, *args: Any, **kwargs: Any) -> redis.Connection:
        self._checkpid()  # fork safety (--workers), as redis-py does
        connection = self._take()
        if connection is None:
            try:
                connection = self.make_connection()  # type: ignore[no-untyped-call]  # redis-py internals are untyped
            except BaseException:
                with self._available:
                    self._made -= 1
                    self._available.notify()
                raise
        self._thread.connection = connection
        try:
            if connection._sock is None:
                connection.connect()
            elif _stale(connection):
                # As redis-py: start afresh; still unready after that, refuse.
                connection.disconnect()
                connection.connect()
                if _stale(connection):
                    raise redis.exceptions.ConnectionError("Connection not ready")
        except BaseException:
            self.release(connection)
            raise
        return connection

    # The pool only ever hands out (and so takes back) Connections.
    def release(self, connection: redis.Connection) -> None:  # type: ignore[override]
        self._checkpid()
        if not self.owns_connection(connection):
            # Made before a fork: never reuse it; it was not counted here.
            connection.disconnect()  # type: ignore[no-untyped-call]  # redis-py internals are untyped
            return
        with self._available:
            self._idle[connection] = None
            self._available.notify()

    def disconnect(self, inuse_connections: bool = True) -> None:
        self._checkpid()
        with self._available:
            connections = list(self._connections if inuse_connections else self._idle)
        for connection in connections:
            connection.disconnect()


class LeanRedis(redis.Redis):
    """``redis.Redis`` whose commands take a pooled connection, send, read and
    give it back, retrying with the connection's ``Retry`` as redis-py does
    (the failed connection is closed before the retry), without redis-py's
    per-command telemetry."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.connection is not None or args[0] in _DELEGATED_COMMANDS:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        pool = self.connection_pool
        conn = pool.get_connection()
        try:
            return conn.retry.call_with_retry(
                lambda: self._send_and_parse(conn, args, options),
                lambda error: conn.disconnect())  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        finally:
            pool.release(conn)

    def _send_and_parse(self, conn: redis.Connection, args: tuple[Any, ...],
                        options: dict[str, Any]) -> Any:
        conn.send_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py internals are untyped
        return self.parse_response(conn, args[0], **options)  # type: ignore[no-untyped-call]  # redis-py internals are untyped

