"""Bulk commands under attack and under failure, on both servers against a real
Redis: past --max-bulk a bulk command gets 429 and ordinary requests keep being
answered; a drain (SIGTERM) or a Redis that stops answering ends a bulk command
at a batch boundary, and its answer says what changed and where to resume."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.store import BulkInterrupted, JobFilter, JobStore, connect
from app.store.keys import KeySchema
from tests.bulk_load import register_many
from tests.live import SERVERS
from tests.servers import RedisProcess, ServiceProcess
from tests.waiting import eventually

JOBS = 20_000
PREFIX = "bulklim"
ATTACKERS = int(__import__("os").environ.get("BULK_ATTACKERS", "16"))


def call(port: int, method: str, path: str, body: dict | None = None,
         timeout: float = 60) -> tuple[int, dict, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data,
                           headers={"Content-Type": "application/json"} if data else {})
        answer = connection.getresponse()
        content = answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, \
            (json.loads(content) if content else {})
    finally:
        connection.close()


def load(store: JobStore, count: int) -> None:
    for _ in range(count // 2000):
        register_many(store, "teams", 2000)


@pytest.fixture(scope="module")
def dataset():
    """A Redis of its own holding JOBS jobs, all in start or all in pause."""
    server = RedisProcess().start()
    store = JobStore(connect(server.url, max_connections=8), keys=KeySchema(PREFIX))
    load(store, JOBS)
    yield server, store
    server.close()


def states(store: JobStore) -> dict[str, int]:
    return {state: count for state, count in store.stats(("teams",)).states.items() if count}


def flip(store: JobStore) -> tuple[str, str]:
    """Every job in one state: (that state, the command that moves them all). A
    test that failed half-way may have left both states: all start then."""
    now = states(store)
    if len(now) > 1:
        store.bulk_command("start", where=JobFilter())
        now = states(store)
    assert len(now) == 1 and sum(now.values()) == JOBS, now
    state = next(iter(now))
    return state, "pause" if state == "start" else "start"


def finish(store: JobStore, command: str) -> None:
    """Leave every job in the command's state for the next test."""
    store.bulk_command(command, where=JobFilter())
    assert sum(states(store).values()) == JOBS


def serve(server: str, url: str, *args: str) -> ServiceProcess:
    return ServiceProcess("--server", server, "--redis-url", url, *args,
                          env={"KARMCHARI_KEY_PREFIX": PREFIX}).start()


@pytest.mark.parametrize("server", SERVERS)
def test_bulk_commands_past_the_cap_get_429_and_reads_keep_being_answered(dataset, server):
    redis_server, store = dataset
    state, command = flip(store)
    job_id = store.list_jobs(JobFilter(), limit=1).jobs[0].id
    service = serve(server, redis_server.url)
    statuses: list[int] = []
    retry_after: set[str] = set()
    latencies: list[float] = []
    stop = threading.Event()

    def attack(n: int) -> None:
        # Each attacker flips every job back and forth until told to stop.
        commands = (command, state) if n % 2 else (state, command)
        while not stop.is_set():
            for each in commands:
                status, headers, _ = call(service.port, "POST", "/v1/jobs/commands",
                                          {"command": each, "where": {}})
                statuses.append(status)
                if status == 429:
                    retry_after.add(headers.get("retry-after", ""))

    try:
        with ThreadPoolExecutor(max(1, ATTACKERS)) as pool:
            attackers = [pool.submit(attack, n) for n in range(ATTACKERS)]
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status, _, _ = call(service.port, "GET", f"/v1/jobs/{job_id}", timeout=10)
                latencies.append(time.perf_counter() - started)
                assert status == 200
            stop.set()
            for attacker in attackers:
                attacker.result(timeout=120)
    finally:
        stop.set()
        service.stop()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(f"{server}: {len(statuses)} bulk attempts, {statuses.count(429)} refused 429; "
          f"{len(latencies)} reads, median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert set(statuses) == {200, 429}, set(statuses)
    assert retry_after == {"1"}
    finish(store, command)


def _changed_so_far(store: JobStore, target: str) -> bool:
    # A few rounds (16 batches of 100 each) in: some answered, not all.
    return states(store).get(target, 0) > 4000


@pytest.mark.parametrize("server", SERVERS)
def test_a_drain_ends_a_bulk_command_at_a_batch_boundary_with_a_cursor(dataset, server):
    """SIGTERM with a short --shutdown-timeout: the bulk command answers in time,
    with the jobs changed so far and a cursor that resumes exactly there."""
    redis_server, store = dataset
    state, command = flip(store)
    service = serve(server, redis_server.url, "--shutdown-timeout", "3")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(call, service.port, "POST", "/v1/jobs/commands",
                             {"command": command, "where": {}})
        eventually(lambda: _changed_so_far(store, command), timeout=30)
        service.stop()
        status, headers, body = answer.result(timeout=30)
    assert status == 200, body
    assert 0 < body["changed"] < JOBS and body["next_cursor"], body
    assert states(store) == {command: body["changed"], state: JOBS - body["changed"]}

    rest = store.bulk_command(command, where=JobFilter(), cursor=body["next_cursor"])
    assert rest.changed == JOBS - body["changed"] and rest.unchanged == 0
    assert rest.next_cursor is None
    assert states(store) == {command: JOBS}


@pytest.mark.parametrize("server", SERVERS)
def test_redis_frozen_mid_bulk_answers_the_counts_and_where_to_resume(dataset, server):
    redis_server, store = dataset
    state, command = flip(store)
    service = serve(server, redis_server.url, "--redis-socket-timeout", "0.5")
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(call, service.port, "POST", "/v1/jobs/commands",
                                 {"command": command, "where": {}})
            eventually(lambda: _changed_so_far(store, command), timeout=30)
            redis_server.freeze()
            try:
                status, headers, body = answer.result(timeout=30)
            finally:
                redis_server.thaw()
        assert status == 503 and headers["retry-after"] == "1", body
        assert headers["content-type"] == "application/problem+json"
        assert body["code"] == "bulk_interrupted"
        assert "Idempotency-Key" not in json.dumps(body)
        assert body["next_cursor"] and body["changed"] > 0
        changed_now = states(store).get(command, 0)
        assert body["changed"] <= changed_now <= body["changed"] + body["in_doubt"], body

        status, _, rest = call(service.port, "POST", "/v1/jobs/commands",
                               {"command": command, "where": {}, "cursor": body["next_cursor"]})
        assert status == 200 and rest["next_cursor"] is None, rest
        # Resumed exactly where it stopped: each job changed once over both answers.
        assert body["changed"] + rest["changed"] == JOBS - (changed_now - body["changed"])
        assert rest["changed"] + changed_now == JOBS
        assert states(store) == {command: JOBS}
    finally:
        service.stop()


@pytest.mark.parametrize("server", SERVERS)
def test_redis_killed_mid_bulk_answers_what_it_knows(server):
    redis_server = RedisProcess().start()
    store = JobStore(connect(redis_server.url, max_connections=4), keys=KeySchema(PREFIX))
    load(store, JOBS)
    service = serve(server, redis_server.url, "--redis-socket-timeout", "0.5")
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(call, service.port, "POST", "/v1/jobs/commands",
                                 {"command": "pause", "where": {}})
            eventually(lambda: _changed_so_far(store, "pause"), timeout=30)
            redis_server.kill()
            status, headers, body = answer.result(timeout=30)
        assert status == 503 and headers["retry-after"] == "1", body
        assert body["code"] == "bulk_interrupted"
        assert body["changed"] > 0 and body["next_cursor"], body
        assert body["matched"] == body["changed"] + body["unchanged"] + body["refused"]
        assert "in_doubt" in body
        assert "Idempotency-Key" not in json.dumps(body)
    finally:
        service.stop()
        redis_server.close()


def test_the_ids_form_cut_short_lists_the_ids_not_done(dataset):
    """Over several rounds (more than one batch per shard); stopped after the
    first, the rest is listed and finishes with a second call."""
    _, store = dataset
    state, command = flip(store)
    ids = [j.id for j in _first_jobs(store, 2000)]
    rounds = iter([False, True])
    first = store.bulk_command(command, ids=ids, stop=lambda: next(rounds))
    assert 0 < first.changed < len(ids)
    assert first.remaining_ids and first.changed + len(first.remaining_ids) == len(ids)
    rest = store.bulk_command(command, ids=first.remaining_ids)
    assert rest.changed == len(first.remaining_ids) and rest.remaining_ids is None
    finish(store, command)


def test_the_ids_form_with_redis_gone_raises_with_the_ids_not_done(dataset):
    redis_server, store = dataset
    state, command = flip(store)
    ids = [j.id for j in _first_jobs(store, 2000)]
    calls = {"n": 0}

    def stop_then_freeze() -> bool:
        # Asked before each round: Redis stops answering before the second.
        calls["n"] += 1
        if calls["n"] == 2:
            redis_server.freeze()
        return False

    quick = JobStore(connect(redis_server.url, max_connections=4, socket_timeout=0.3),
                     keys=KeySchema(PREFIX))
    try:
        with pytest.raises(BulkInterrupted) as cut:
            quick.bulk_command(command, ids=ids, stop=stop_then_freeze)
    finally:
        redis_server.thaw()
    result = cut.value.result
    assert 0 < result.changed < len(ids)
    assert result.changed + len(result.remaining_ids) == len(ids)
    # The second round was sent, its answer never came: it is in doubt, and the
    # ids not done start with it.
    assert 0 < result.in_doubt <= len(result.remaining_ids)
    rest = quick.bulk_command(command, ids=result.remaining_ids)
    # Some of the batch in doubt had been applied before Redis froze: unchanged now.
    assert rest.changed + rest.unchanged == len(result.remaining_ids)
    assert result.changed + rest.changed <= len(ids) <= result.changed + rest.changed \
        + result.in_doubt
    finish(store, command)


def _first_jobs(store: JobStore, count: int) -> list:
    jobs: list = []
    cursor = None
    while len(jobs) < count:
        page = store.list_jobs(JobFilter(), limit=500, cursor=cursor)
        jobs += page.jobs
        cursor = page.next_cursor
    return jobs[:count]
