"""The standalone client of app/store/lean.py keeps redis-py's contract where
it skips redis-py's bookkeeping: one retry after a dropped connection, a
bounded wait for a pooled connection, no reply left behind for the next
command, fresh connections after a fork. Against a real Redis."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import redis

from app.store import connect
from app.store.lean import LeanBlockingConnectionPool, LeanRedis


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
