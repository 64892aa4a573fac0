"""The control for the ASGI prototype (measurement only): the same two
endpoints, the same answers and as few features, as a threaded WSGI
application under Granian's blocking threads, each thread with its own
blocking Redis socket (kernel timeouts, hiredis packing and parsing). What
the ASGI prototype gains over this is due to async itself; what it gains over
the product is partly the features it leaves out.

    KARMCHARI_PROTO_REDIS_URL=unix:///path/redis.sock \\
    granian --interface wsgi --factory --blocking-threads 16 bench.async_proto.wsgi:create_app
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import falcon
import hiredis

from bench.async_proto import common
from bench.async_proto.common import Refused
from bench.async_proto.resp import RedisReplyError, RedisUnavailable, Script


class BlockingRedis:
    """One connection per request thread; a timeout or a lost connection
    closes it (the next command reconnects) and is ``RedisUnavailable``."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._local = threading.local()

    def _socket(self) -> tuple[socket.socket, hiredis.Reader]:
        held = getattr(self._local, "held", None)
        if held is not None:
            return held
        if self._url.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self._url[len("unix://"):]
        else:
            host, _, port = self._url.removeprefix("redis://").split("/")[0].rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            address = (host, int(port))
        # Kernel timeouts: no Python-level poll() per read.
        seconds = int(self._timeout)
        timeval = struct.pack("ll", seconds, int((self._timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        try:
            sock.connect(address)
        except OSError as error:
            sock.close()
            raise RedisUnavailable(f"cannot connect to {self._url}: {error}") from None
        held = self._local.held = (sock, hiredis.Reader(encoding="utf-8"))
        return held

    def execute(self, *args: Any) -> Any:
        sock, reader = self._socket()
        try:
            sock.sendall(hiredis.pack_command(args))
            while (reply := reader.gets()) is False:
                data = sock.recv(65536)
                if not data:
                    raise OSError("connection closed by Redis")
                reader.feed(data)
        except OSError as error:
            sock.close()
            self._local.held = None
            raise RedisUnavailable(str(error)) from None
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(str(reply))
        return reply

    def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return self.execute("EVAL", script.source, len(keys), *keys, *args)


def _answer(resp: falcon.Response, status: str, text: str) -> None:
    resp.status = status
    resp.content_type = common.TEXT
    resp.text = text


def _form(req: falcon.Request) -> dict[str, str]:
    body = b""
    if req.method == "POST" and (req.content_length or req.content_type):
        limit = common.check_body(req.content_type, req.content_length)
        body = req.bounded_stream.read(limit)
        if len(body) >= limit:
            raise common.too_large()
    return common.read_form(req.query_string, body)


def _refuse(resp: falcon.Response, refused: Refused) -> None:
    _answer(resp, refused.status, refused.text)
    if refused.status.startswith("503"):
        resp.set_header("Retry-After", str(common.CONFIG.retry_after_seconds))


class JobState:
    def __init__(self, redis: BlockingRedis) -> None:
        self._redis = redis

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            job_id, key = common.job_state_key(_form(req))
            try:
                (state,) = self._redis.execute("HMGET", key, "state")
            except (RedisUnavailable, RedisReplyError):
                raise Refused("503 Service Unavailable", common.UNAVAILABLE) from None
            _answer(resp, "200 OK", common.job_state_answer(job_id, state))
        except Refused as refused:
            _refuse(resp, refused)


class RegisterJob:
    def __init__(self, redis: BlockingRedis) -> None:
        self._redis = redis
        self._script = Script(common.register_source())

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            job_id, keys, args = common.register_call(_form(req),
                                                      req.get_header("Idempotency-Key"))
            try:
                reply = self._redis.evalsha(self._script, keys, args)
                registered = common.registered_id(job_id, reply)
                if registered != job_id:
                    (found,) = self._redis.execute("HMGET", common.replay_key(registered), "id")
                    if found is None:
                        raise Refused("404 Not Found", "Job not available")
            except (RedisUnavailable, RedisReplyError):
                raise Refused("503 Service Unavailable", common.OUTCOME_UNKNOWN) from None
            _answer(resp, "200 OK", common.register_answer(registered))
        except Refused as refused:
            _refuse(resp, refused)


class Healthz:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, "200 OK", "ok")


def create_app() -> falcon.App:
    redis = BlockingRedis(common.redis_url(), common.CONFIG.redis_socket_timeout)
    app = falcon.App()
    app.add_route("/jobState", JobState(redis))
    app.add_route("/registerJob", RegisterJob(redis))
    app.add_route("/healthz", Healthz())
    return app
