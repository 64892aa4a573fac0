"""The prototype as a ``falcon.asgi`` application (measurement only; see the
package docstring). Run by Granian:

    KARMCHARI_PROTO_REDIS_URL=unix:///path/redis.sock \\
    granian --interface asgi --factory --workers 2 bench.async_proto.asgi:create_app

``KARMCHARI_PROTO_CLIENT=redis-py`` uses ``redis.asyncio`` instead of
``resp.AsyncRedis``; ``KARMCHARI_PROTO_CONNECTIONS`` (default 1) is how
many Redis connections each process opens.
"""

from __future__ import annotations

import os
from typing import Any

import falcon
import falcon.asgi

from bench.async_proto import common
from bench.async_proto.common import Refused
from bench.async_proto.resp import AsyncRedis, RedisReplyError, RedisUnavailable, Script


class RedisPyClient:
    """``redis.asyncio`` behind the interface of ``AsyncRedis``, for comparison."""

    def __init__(self, url: str, connections: int) -> None:
        import redis.asyncio

        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._no_script = redis.exceptions.NoScriptError
        self._client = redis.asyncio.Redis.from_url(
            url, decode_responses=True, socket_timeout=5,
            max_connections=max(connections, 16))

    async def execute(self, *args: Any) -> Any:
        try:
            return await self._client.execute_command(*args)
        except self._errors as error:
            raise RedisUnavailable(str(error)) from None

    async def evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._no_script:
            return await self.execute("EVAL", script.source, len(keys), *keys, *args)


def _answer(resp: falcon.asgi.Response, status: str, text: str) -> None:
    resp.status = status
    resp.content_type = common.TEXT
    resp.text = text


async def _form(req: falcon.asgi.Request) -> dict[str, str]:
    body = b""
    if req.method == "POST" and (req.content_length or req.content_type):
        limit = common.check_body(req.content_type, req.content_length)
        body = await req.stream.read(limit)
        if len(body) >= limit:
            raise common.too_large()
    return common.read_form(req.query_string, body)


class JobState:
    def __init__(self, redis: AsyncRedis | RedisPyClient) -> None:
        self._redis = redis

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            job_id, key = common.job_state_key(await _form(req))
            try:
                (state,) = await self._redis.execute("HMGET", key, "state")
            except (RedisUnavailable, RedisReplyError):
                raise Refused("503 Service Unavailable", common.UNAVAILABLE) from None
            _answer(resp, "200 OK", common.job_state_answer(job_id, state))
        except Refused as refused:
            _refuse(resp, refused)


class RegisterJob:
    def __init__(self, redis: AsyncRedis | RedisPyClient) -> None:
        self._redis = redis
        self._script = Script(common.register_source())

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        try:
            job_id, keys, args = common.register_call(
                await _form(req), req.get_header("Idempotency-Key"))
            try:
                reply = await self._redis.evalsha(self._script, keys, args)
                registered = common.registered_id(job_id, reply)
                if registered != job_id:  # a replay: the first request's job, if still there
                    (found,) = await self._redis.execute(
                        "HMGET", common.replay_key(registered), "id")
                    if found is None:
                        raise Refused("404 Not Found", "Job not available")
            except (RedisUnavailable, RedisReplyError):
                raise Refused("503 Service Unavailable", common.OUTCOME_UNKNOWN) from None
            _answer(resp, "200 OK", common.register_answer(registered))
        except Refused as refused:
            _refuse(resp, refused)


class Healthz:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        _answer(resp, "200 OK", "ok")


def _refuse(resp: falcon.asgi.Response, refused: Refused) -> None:
    _answer(resp, refused.status, refused.text)
    if refused.status.startswith("503"):
        resp.set_header("Retry-After", str(common.CONFIG.retry_after_seconds))


def create_app() -> falcon.asgi.App:
    connections = int(os.environ.get("KARMCHARI_PROTO_CONNECTIONS", "1"))
    redis: AsyncRedis | RedisPyClient
    if os.environ.get("KARMCHARI_PROTO_CLIENT") == "redis-py":
        redis = RedisPyClient(common.redis_url(), connections)
    else:
        redis = AsyncRedis(common.redis_url(), connections=connections,
                           timeout=common.CONFIG.redis_socket_timeout)
    app = falcon.asgi.App()
    app.add_route("/jobState", JobState(redis))
    app.add_route("/registerJob", RegisterJob(redis))
    app.add_route("/healthz", Healthz())
    return app
