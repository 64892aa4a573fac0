"""The ASGI prototype without Falcon (measurement only): the same endpoints
and answers as ``asgi.py`` in a bare ASGI callable, to tell what Falcon's
ASGI layer costs from what Granian's ASGI interface and asyncio cost.

    granian --interface asgi --factory bench.async_proto.raw:create_app
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from bench.async_proto import common
from bench.async_proto.common import Refused
from bench.async_proto.resp import AsyncRedis, RedisReplyError, RedisUnavailable, Script

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]
TEXT_HEADERS = [(b"content-type", common.TEXT.encode())]


async def _body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit or not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, status: str, text: str) -> None:
    headers = TEXT_HEADERS
    if status.startswith("503"):
        headers = [*headers, (b"retry-after", str(common.CONFIG.retry_after_seconds).encode())]
    await send({"type": "http.response.start", "status": int(status[:3]), "headers": headers})
    await send({"type": "http.response.body", "body": text.encode()})


def create_app() -> Callable[..., Awaitable[None]]:
    redis = AsyncRedis(common.redis_url(),
                       connections=int(os.environ.get("KARMCHARI_PROTO_CONNECTIONS", "1")),
                       timeout=common.CONFIG.redis_socket_timeout)
    script = Script(common.register_source())

    async def form(scope: dict, receive: Receive, headers: dict[bytes, bytes]) -> dict:
        body = b""
        length = headers.get(b"content-length")
        content_type = headers.get(b"content-type")
        if scope["method"] == "POST" and (length not in (None, b"0") or content_type):
            limit = common.check_body(content_type.decode("latin-1") if content_type else None,
                                      None if length is None else int(length))
            body = await _body(receive, limit)
            if len(body) >= limit:
                raise common.too_large()
        return common.read_form(scope["query_string"].decode("latin-1"), body)

    async def job_state(scope: dict, receive: Receive, headers: dict) -> str:
        job_id, key = common.job_state_key(await form(scope, receive, headers))
        try:
            (state,) = await redis.execute("HMGET", key, "state")
        except (RedisUnavailable, RedisReplyError):
            raise Refused("503 Service Unavailable", common.UNAVAILABLE) from None
        return common.job_state_answer(job_id, state)

    async def register_job(scope: dict, receive: Receive, headers: dict) -> str:
        key = headers.get(b"idempotency-key")
        job_id, keys, args = common.register_call(await form(scope, receive, headers),
                                                  None if key is None else key.decode("latin-1"))
        try:
            reply = await redis.evalsha(script, keys, args)
            registered = common.registered_id(job_id, reply)
            if registered != job_id:
                (found,) = await redis.execute("HMGET", common.replay_key(registered), "id")
                if found is None:
                    raise Refused("404 Not Found", "Job not available")
        except (RedisUnavailable, RedisReplyError):
            raise Refused("503 Service Unavailable", common.OUTCOME_UNKNOWN) from None
        return common.register_answer(registered)

    async def healthz(scope: dict, receive: Receive, headers: dict) -> str:
        return "ok"

    routes: dict[tuple[str, str], Any] = {
        ("GET", "/jobState"): job_state, ("POST", "/registerJob"): register_job,
        ("GET", "/healthz"): healthz}

    async def app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        handler = routes.get((scope["method"], scope["path"]))
        if handler is None:
            return await _answer(send, "404 Not Found", "Not found")
        try:
            text = await handler(scope, receive, dict(scope["headers"]))
        except Refused as refused:
            return await _answer(send, refused.status, refused.text)
        await _answer(send, "200 OK", text)

    return app
