"""The standalone client of app/store/lean.py keeps redis-py's contract where
it skips redis-py's bookkeeping: one retry after a dropped connection, a
bounded wait for a pooled connection, no reply left behind for the next
command, fresh connections after a fork. Against a real Redis."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import uuid

import pytest
import redis
from falcon import testing

from app.app import create_app
from app.config import Config
from app.store import JobStore, connect
from app.store.keys import KeySchema
from app.store.lean import LeanBlockingConnectionPool, LeanConnection, LeanRedis
from tests.servers import RedisProcess
from tests.waiting import eventually


@pytest.fixture
def lean(redis_url):
    client = connect(redis_url, max_connections=2, socket_timeout=0.5)
    yield client
    client.close()


@pytest.fixture
def key():
    return "lean-test-" + uuid.uuid4().hex


def test_connect_builds_the_lean_client(lean):
    assert isinstance(lean, LeanRedis)
    assert isinstance(lean.connection_pool, LeanBlockingConnectionPool)
    assert not lean.connection_pool.maint_notifications_enabled()


def test_commands_scripts_and_pipelines_answer_as_with_redis_py(lean, redis_client, key):
    try:
        lean.hset(key, mapping={"state": "start", "type": "teams"})
        assert lean.hmget(key, ["state", "missing"]) == ["start", None]
        script = lean.register_script("return redis.call('HGET', KEYS[1], ARGV[1])")
        assert script(keys=[key], args=["type"]) == "teams"  # EVALSHA, EVAL on NOSCRIPT
        pipe = lean.pipeline(transaction=False)
        pipe.hget(key, "state").exists(key)
        assert pipe.execute() == ["start", 1]
        assert redis_client.hgetall(key) == {"state": "start", "type": "teams"}
    finally:
        redis_client.delete(key)


def test_an_error_reply_leaves_the_connection_usable(lean, redis_client, key):
    try:
        redis_client.set(key, "a string")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            lean.hget(key, "state")
        with pytest.raises(redis.exceptions.NoScriptError):
            lean.evalsha("0" * 40, 0)
        assert lean.get(key) == "a string"
    finally:
        redis_client.delete(key)


def test_a_connection_killed_by_the_server_is_replaced(lean, redis_client):
    # One thread: the LIFO pool hands out the same connection every time.
    first = lean.client_id()
    assert lean.client_id() == first
    assert redis_client.client_kill_filter(_id=first) == 1
    assert lean.ping() is True  # reconnected (or retried once) without an error
    assert lean.client_id() != first


def test_a_timeout_closes_the_connection_so_no_late_reply_is_read(lean, key):
    with pytest.raises(redis.exceptions.TimeoutError):
        lean.blpop([key], timeout=2)  # longer than the 0.5 s socket timeout
    lean.rpush(key, "late")
    try:
        assert lean.lrange(key, 0, -1) == ["late"]
        assert lean.echo("next") == "next"
    finally:
        lean.delete(key)


def test_a_full_pool_waits_at_most_the_timeout(redis_url):
    client = connect(redis_url, max_connections=1, socket_timeout=0.3)
    pool = client.connection_pool
    held = pool.get_connection()
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError, match="No connection available"):
            client.ping()
        assert 0.2 < time.monotonic() - started < 10
    finally:
        pool.release(held)
    assert client.ping() is True
    client.close()


def test_threads_share_the_pool(lean, redis_client, key):
    errors = []

    def work() -> None:
        try:
            for _ in range(50):
                lean.incr(key)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert redis_client.get(key) == "300"
        assert len(lean.connection_pool._connections) <= 2
    finally:
        redis_client.delete(key)


def test_a_forked_child_makes_its_own_connections(lean, redis_client, key):
    assert lean.ping() is True  # the parent holds a pooled connection
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its command worked
        try:
            lean.set(key, str(os.getpid()))
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert redis_client.get(key) == str(pid)
        assert lean.ping() is True  # the parent's connection was not disturbed
    finally:
        redis_client.delete(key)


# -- hiredis packing and kernel socket timeouts ---------------------------------


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, 2, "{kc:0}:job:x", "{kc:0}:deadline", "", "é ü", 0, -7, 2**70),
    ("SET", "k", 1.5), ("SET", "k", 0.1), ("SET", "k", float("inf")), ("SET", b"k", b"\x00\xff"),
    ("CLIENT SETNAME", "karmchari"), ("SET", "k", memoryview(b"view")),
])
def test_hiredis_packing_sends_the_bytes_redis_py_sends(args):
    lean_bytes = b"".join(bytes(c) for c in LeanConnection().pack_command(*args))
    reference = b"".join(bytes(c) for c in redis.Connection().pack_command(*args))
    assert lean_bytes == reference


@pytest.mark.parametrize("value", [True, None, object()])
def test_values_redis_py_refuses_are_refused_alike(value):
    with pytest.raises(redis.exceptions.DataError):
        LeanConnection().pack_command("SET", "k", value)
    with pytest.raises(UnicodeEncodeError):
        LeanConnection().pack_command("SET", "k", "\ud800")


def test_the_kernel_times_the_socket_not_python(lean):
    assert lean.ping() is True
    connection = lean.connection_pool.get_connection()
    try:
        sock = connection._sock
        assert sock.gettimeout() is None  # blocking: no poll() before each call
        expected = struct.pack("ll", 0, 500_000)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, len(expected)) == expected
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, len(expected)) == expected
    finally:
        lean.connection_pool.release(connection)


def test_a_thread_gets_back_its_own_connection(lean):
    first = lean.client_id()
    seen: list[int] = []
    other = threading.Thread(target=lambda: seen.extend(lean.client_id() for _ in range(3)))
    other.start()
    other.join(30)
    assert lean.client_id() == first
    assert len(set(seen)) == 1


@pytest.fixture
def own_redis():
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def own_store(own_redis):
    client = connect(own_redis.url, max_connections=4, socket_timeout=0.5)
    store = JobStore(client, keys=KeySchema("fault"))
    app = testing.TestClient(create_app(Config(redis_url=own_redis.url, key_prefix="fault"),
                                        store))
    yield store, app
    client.close()


def assert_503(reply, code: str | None = None) -> None:
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"].isdigit()
    if code is not None:
        assert reply.json["code"] == code, reply.text


def test_frozen_redis_answers_503_within_the_socket_timeout(own_redis, own_store):
    """SIGSTOP: connections stay open, nothing answers. A read is
    store_unavailable, a write sent on an open connection outcome_unknown (it
    may run once Redis wakes); each within the socket timeout."""
    store, app = own_store
    job = store.register("teams")[0]
    for method, path, arguments, code in (
            ("GET", "/jobState", {"params": {"id": job.id}}, None),
            ("GET", f"/v1/jobs/{job.id}", {}, "store_unavailable"),
            ("POST", "/registerJob", {"body": "type=teams", "headers": {
                "Content-Type": "application/x-www-form-urlencoded"}}, None),
            ("POST", "/v1/jobs", {"json": {"type": "teams"}}, "outcome_unknown"),
            ("POST", f"/v1/jobs/{job.id}/commands", {"json": {"command": "pause"}},
             "outcome_unknown"),
            ("POST", "/v1/heartbeats", {"json": {"heartbeats": [{"id": job.id}]}},
             "outcome_unknown")):
        assert store.state(job.id)  # this thread's connection is open
        own_redis.freeze()
        try:
            started = time.monotonic()
            reply = app.simulate_request(method, path, **arguments)
            assert time.monotonic() - started < 3 * 0.5, (method, path)
            assert_503(reply, code)
        finally:
            own_redis.thaw()
    # A connection that meets the frozen server while connecting sent nothing.
    own_redis.freeze()
    try:
        assert_503(app.simulate_get(f"/v1/jobs/{job.id}"), "store_unavailable")
        assert_503(app.simulate_post("/v1/jobs", json={"type": "teams"}), "store_unavailable")
    finally:
        own_redis.thaw()
    assert app.simulate_get(f"/v1/jobs/{job.id}").status_code == 200
    assert app.simulate_post("/v1/jobs", json={"type": "teams"}).status_code == 201


def test_killed_redis_answers_store_unavailable_then_recovers(own_redis, own_store):
    """kill -9: the pooled connections are closed under the service. Writes are
    refused before they are sent (store_unavailable, not outcome_unknown),
    and the service recovers by itself when Redis is back."""
    store, app = own_store
    job = store.register("teams")[0]
    requests = [
        ("POST", "/v1/jobs", {"json": {"type": "teams"}}, "store_unavailable"),
        ("POST", "/registerJob", {"body": "type=teams", "headers": {
            "Content-Type": "application/x-www-form-urlencoded"}}, None),
        ("POST", "/v1/heartbeats", {"json": {"heartbeats": [{"id": job.id}]}},
         "store_unavailable"),
        ("GET", f"/v1/jobs/{job.id}", {}, "store_unavailable"),
    ]
    warmed, killed = threading.Barrier(len(requests) + 1), threading.Barrier(len(requests) + 1)
    replies: dict[str, object] = {}

    def request(method: str, path: str, arguments: dict) -> None:
        store.state(job.id)  # each thread holds an open pooled connection
        warmed.wait(30)
        killed.wait(30)
        replies[f"{method} {path}"] = app.simulate_request(method, path, **arguments)

    threads = [threading.Thread(target=request, args=r[:3]) for r in requests]
    for thread in threads:
        thread.start()
    warmed.wait(30)
    own_redis.kill()
    killed.wait(30)
    for thread in threads:
        thread.join(30)
    for method, path, _, code in requests:
        assert_503(replies[f"{method} {path}"], code)
    assert_503(app.simulate_get("/jobState", params={"id": job.id}))
    own_redis.start()
    eventually(lambda: app.simulate_post("/v1/jobs", json={"type": "teams"}).status_code == 201)
    assert app.simulate_get("/jobState", params={"id": job.id}).status_code in (200, 404)
