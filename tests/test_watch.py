"""POST /v1/watch: one long-poll over many jobs, on a real Redis, through the
whole app and, where threads and HTTP matter, a real ``karmchari serve``."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from email.message import Message

import pytest
from falcon import testing

from app.app import create_app
from app.config import Config
from app.events import ChangeNotifier
from app.store import JobStore, connect
from app.store.keys import KeySchema
from tests.bulk_load import register_many
from tests.monitoring import CommandMonitor
from tests.servers import RedisProcess, ServiceProcess
from tests.waiting import eventually


def watch(client, jobs: dict, wait: float = 0, **extra):
    return client.simulate_post("/v1/watch", json={"jobs": jobs, "wait": wait, **extra})


def in_thread(call) -> dict:
    box: dict = {}
    box["thread"] = threading.Thread(target=lambda: box.update(result=call()), daemon=True)
    box["thread"].start()
    return box


def test_a_job_at_another_version_answers_at_once_as_get_shows_it(client, store):
    job, _ = store.register("teams", labels={"team": "a"})
    other, _ = store.register("export")
    response = watch(client, {job.id: 0, other.id: other.version}, wait=30)
    assert response.status_code == 200, response.text
    assert response.json["missing"] == []
    (changed,) = response.json["changed"]
    shown = client.simulate_get(f"/v1/jobs/{job.id}").json
    assert changed == shown


def test_an_unknown_job_is_missing_at_once(client, store):
    job, _ = store.register("teams")
    unknown = "e" * 32
    response = watch(client, {job.id: job.version, unknown: 3}, wait=30)
    assert response.status_code == 200
    assert response.json == {"changed": [], "missing": [unknown]}


def test_nothing_changed_answers_empty_lists_after_the_wait(client, store):
    jobs = [store.register("teams")[0] for _ in range(3)]
    response = watch(client, {j.id: j.version for j in jobs}, wait=0.3)
    assert response.status_code == 200
    assert response.json == {"changed": [], "missing": []}


def test_a_change_wakes_the_watch_with_only_the_job_that_changed(config, store):
    # A re-read interval longer than any wait here: only the change message wakes it.
    notifier = ChangeNotifier(store, max_waiters=4, poll_interval=60.0)
    client = testing.TestClient(create_app(config, store, notifier=notifier))
    jobs = [store.register("teams")[0] for _ in range(20)]
    target = jobs[13]
    waiting = in_thread(lambda: watch(client, {j.id: j.version for j in jobs}, wait=30))
    eventually(lambda: notifier.waiting() == 1 and notifier.watched() == 20)
    store.apply_command(target.id, "pause")
    waiting["thread"].join(30)
    response = waiting["result"]
    assert response.status_code == 200
    (changed,) = response.json["changed"]
    assert (changed["id"], changed["state"], changed["version"]) == \
        (target.id, "pause", target.version + 1)
    assert notifier.watched() == 0
    notifier.stop()


def test_a_deleted_job_wakes_the_watch_as_missing(config, store):
    notifier = ChangeNotifier(store, max_waiters=4, poll_interval=60.0)
    client = testing.TestClient(create_app(config, store, notifier=notifier))
    job, _ = store.register("teams")
    job, _ = store.apply_command(job.id, "kill")
    waiting = in_thread(lambda: watch(client, {job.id: job.version}, wait=30))
    eventually(lambda: notifier.waiting() == 1)
    store.delete(job.id)
    waiting["thread"].join(30)
    assert waiting["result"].json == {"changed": [], "missing": [job.id]}
    notifier.stop()


def test_the_periodic_re_read_finds_a_change_without_a_message(config, store, redis_client):
    """A lost message (a reconnect, a failover) costs latency, not the change:
    here the version moves without any message at all."""
    notifier = ChangeNotifier(store, max_waiters=4, poll_interval=0.2)
    client = testing.TestClient(create_app(config, store, notifier=notifier))
    job, _ = store.register("teams")
    waiting = in_thread(lambda: watch(client, {job.id: job.version}, wait=30))
    eventually(lambda: notifier.waiting() == 1)
    redis_client.hset(store.keys.for_job(job.id).job(job.id), "version", job.version + 5)
    waiting["thread"].join(30)
    (changed,) = waiting["result"].json["changed"]
    assert changed["version"] == job.version + 5
    notifier.stop()


def test_stop_answers_a_waiting_watch_at_once(config, store):
    notifier = ChangeNotifier(store, max_waiters=4)
    client = testing.TestClient(create_app(config, store, notifier=notifier))
    job, _ = store.register("teams")
    waiting = in_thread(lambda: watch(client, {job.id: job.version}, wait=60))
    eventually(lambda: notifier.waiting() == 1)
    notifier.stop()
    waiting["thread"].join(10)
    assert waiting["result"].json == {"changed": [], "missing": []}


BAD_BODIES = {
    "no jobs": {"wait": 1},
    "no wait": {"jobs": {"a" * 32: 1}},
    "empty jobs": {"jobs": {}, "wait": 1},
    "id too short": {"jobs": {"a" * 31: 1}, "wait": 1},
    "id upper case": {"jobs": {"A" * 32: 1}, "wait": 1},
    "id with newline": {"jobs": {"a" * 32 + "\n": 1}, "wait": 1},
    "key-like id": {"jobs": {"{kc:a}:job:x": 1}, "wait": 1},
    "negative version": {"jobs": {"a" * 32: -1}, "wait": 1},
    "version too large": {"jobs": {"a" * 32: 2**53 + 1}, "wait": 1},
    "version as text": {"jobs": {"a" * 32: "1"}, "wait": 1},
    "version fraction": {"jobs": {"a" * 32: 1.5}, "wait": 1},
    "wait too long": {"jobs": {"a" * 32: 1}, "wait": 61},
    "negative wait": {"jobs": {"a" * 32: 1}, "wait": -1},
    "wait as text": {"jobs": {"a" * 32: 1}, "wait": "1"},
    "unknown member": {"jobs": {"a" * 32: 1}, "wait": 1, "since": 0},
    "jobs as list": {"jobs": ["a" * 32], "wait": 1},
    "too many jobs": {"jobs": {f"{n:032x}": 1 for n in range(1001)}, "wait": 1},
}


@pytest.fixture(scope="module")
def quiet_redis():
    """A server of this module's own: MONITOR sees no other test's commands, also
    when the suite runs in parallel processes on one REDIS_URL."""
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def monitor(quiet_redis):
    watcher = CommandMonitor(quiet_redis.url)
    yield watcher
    watcher.close()


@pytest.fixture
def quiet_client(quiet_redis):
    """The ``client`` fixture's app, on ``quiet_redis``."""
    store = JobStore(connect(quiet_redis.url), keys=KeySchema("w"))
    yield testing.TestClient(create_app(Config(redis_url=quiet_redis.url, key_prefix="w"),
                                        store))
    store.client.close()


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_input_is_refused_before_any_redis_call(quiet_client, monitor, name):
    client = quiet_client
    monitor.collect()
    response = client.simulate_post("/v1/watch", json=BAD_BODIES[name])
    reads = [c for c in monitor.collect() if c.name in ("HGET", "EVALSHA", "EVAL", "HGETALL")]
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json["code"] == "invalid_request"
    assert reads == []


def test_the_job_limit_is_a_setting(redis_url, key_prefix, store):
    config = Config(redis_url=redis_url, key_prefix=key_prefix, max_watch_jobs=2)
    client = testing.TestClient(create_app(config, store))
    ids = [store.register("teams")[0].id for _ in range(3)]
    refused = watch(client, {i: 1 for i in ids})
    assert refused.status_code == 400
    assert "at most 2" in refused.json["detail"]
    assert watch(client, {i: 1 for i in ids[:2]}).status_code == 200


def test_not_json_is_415(client):
    response = client.simulate_post("/v1/watch", body="jobs=1",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415


def post_watch(url: str, body: dict, timeout: float = 40) -> tuple[int, Message, dict]:
    """Status, headers (names in any case, as servers send them) and body."""
    request = urllib.request.Request(url + "/v1/watch", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.headers, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_one_watch_holds_one_slot_however_many_jobs_and_past_the_limit_429(redis_url,
                                                                           key_prefix, store):
    """Four request threads, two slots for waiting requests: two watches of
    500 jobs each take them; a third request gets 429 with Retry-After, and
    ordinary requests are still answered meanwhile."""
    service = ServiceProcess("--redis-url", redis_url, "--threads", "4",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    try:
        ids = register_many(store, "teams", 1000)
        halves = [{i: 1 for i in ids[:500]}, {i: 1 for i in ids[500:]}]

        def hold(jobs):
            # A probe below may hold a slot for a moment: try again then.
            return eventually(lambda: (a := post_watch(service.url, {"jobs": jobs, "wait": 30}))
                              [0] != 429 and a)

        waiting = [in_thread(lambda jobs=jobs: hold(jobs)) for jobs in halves]

        def refused():
            answer = post_watch(service.url, {"jobs": {ids[0]: 1}, "wait": 0})
            return answer if answer[0] == 429 else None

        status, headers, problem = eventually(refused)
        assert int(headers["Retry-After"]) >= 1
        assert problem["code"] == "too_many_waiters"
        with urllib.request.urlopen(f"{service.url}/v1/jobs/{ids[7]}", timeout=10) as answer:
            assert json.loads(answer.read())["state"] == "start"

        store.apply_command(ids[7], "pause")
        store.apply_command(ids[700], "kill")
        for box, expected in zip(waiting, (ids[7], ids[700]), strict=True):
            box["thread"].join(30)
            status, _, body = box["result"]
            assert status == 200
            assert [job["id"] for job in body["changed"]] == [expected]
    finally:
        service.stop()
