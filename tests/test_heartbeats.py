"""Heartbeats (single and batch), stalled jobs and long-poll, against real
Redis and, where HTTP and threads matter, a real ``karmchari serve``."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from falcon import testing

from app.app import create_app
from app.config import Config
from app.store import JobStore
from app.store.keys import KeySchema
from karmchari_client import Client, ServiceUnavailable
from tests.monitoring import CommandMonitor
from tests.servers import RedisProcess, ServiceProcess
from tests.waiting import eventually, long_polls_waiting

JSON = {"Content-Type": "application/json"}


def heartbeat(client, job_id: str, **body):
    return client.simulate_post(f"/v1/jobs/{job_id}/heartbeat", json=body)


def get_job(client, job_id: str) -> dict:
    response = client.simulate_get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    return response.json


def listed_ids(client, **params) -> set[str]:
    response = client.simulate_get("/v1/jobs", params={"limit": 500, **params})
    assert response.status_code == 200
    return {job["id"] for job in response.json["jobs"]}


def job_in(store: JobStore, state: str, **options):
    job, _ = store.register("teams", **options)
    command = {"failed": "fail"}.get(state, state)
    if state != "start":
        job, _ = store.apply_command(job.id, command)
    return job


# -- batch heartbeats ----------------------------------------------------------

def test_batch_of_100_jobs_in_mixed_states_answers_each_in_order(client, store):
    rng = random.Random(4)
    states = ["start", "pause", "kill", "done", "failed"]
    expected = [(job_in(store, state).id, state) for state in states for _ in range(18)]
    expected += [(f"{i:x}" + "0" * 31, None) for i in range(10)]  # no such jobs
    rng.shuffle(expected)

    body = {"heartbeats": [{"id": job_id, "progress": i, "worker": "host-1",
                            "observed_state": "start"} for i, (job_id, _) in enumerate(expected)]}
    response = client.simulate_post("/v1/heartbeats", json=body)

    assert response.status_code == 200
    results = response.json["results"]
    assert [r["id"] for r in results] == [job_id for job_id, _ in expected]
    for i, ((job_id, state), result) in enumerate(zip(expected, results, strict=True)):
        if state is None:
            assert result == {"id": job_id, "found": False}
            continue
        assert (result["found"], result["state"]) == (True, state)
        assert result["version"] == (1 if state == "start" else 2)
        job = store.get(job_id)
        if state in ("start", "pause"):
            assert (job.progress, job.worker, job.observed_state) == (float(i), "host-1", "start")
        else:
            assert (job.progress, job.worker, job.observed_state) == (None, "", "")


class CountingConnection(redis.Connection):
    """A real connection that records each write: a write followed by its
    replies is one round trip."""

    writes: list[bytes] = []

    def send_packed_command(self, command, check_health=True):
        chunks = [command] if isinstance(command, (bytes, str)) else command
        self.writes.append(b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks))
        super().send_packed_command(command, check_health)


@pytest.fixture
def own_redis():
    server = RedisProcess().start()
    yield server
    server.close()


def test_batch_makes_one_round_trip_with_one_script_call_per_shard(own_redis):
    pool = redis.ConnectionPool.from_url(own_redis.url, connection_class=CountingConnection,
                                         decode_responses=True)
    store = JobStore(redis.Redis(connection_pool=pool), keys=KeySchema("rt"))
    app = testing.TestClient(create_app(Config(redis_url=own_redis.url, key_prefix="rt"), store))
    jobs = [store.register("upload")[0] for _ in range(100)]
    shards = {job.id[0] for job in jobs}
    store.ready()  # scripts cached: no NOSCRIPT reload in the measured call
    monitor = CommandMonitor(own_redis.url)
    CountingConnection.writes.clear()

    body = {"heartbeats": [{"id": job.id, "progress": 50} for job in jobs]}
    response = app.simulate_post("/v1/heartbeats", json=body)

    assert response.status_code == 200
    sent = [c for c in monitor.collect() if not c.from_script]
    monitor.close()
    assert [c.name for c in sent] == ["EVALSHA"] * len(shards)
    for command in sent:
        keys = command.args[3:3 + int(command.args[2])]
        assert len({key.split("}")[0] for key in keys}) == 1  # one shard, one slot
    assert sorted(c.args[3].split(":")[1][0] for c in sent) == sorted(shards)
    script_writes = [w for w in CountingConnection.writes if b"EVALSHA" in w]
    assert len(script_writes) == 1
    assert script_writes[0].count(b"EVALSHA") == len(shards)
    assert {store.get(job.id).progress for job in jobs} == {50.0}
    pool.disconnect()


def test_batch_over_the_size_limit_is_refused_and_records_nothing(client, store, config):
    job = job_in(store, "start")
    over = [{"id": job.id, "progress": 1}] + [
        {"id": f"{i:032x}", "progress": 1} for i in range(1, config.max_batch + 1)]
    response = client.simulate_post("/v1/heartbeats", json={"heartbeats": over})
    assert response.status_code == 400
    assert response.json["code"] == "invalid_request"
    assert store.get(job.id).heartbeat_at is None


def test_batch_with_a_repeated_job_is_refused_and_records_nothing(client, store):
    job = job_in(store, "start")
    other = job_in(store, "start")
    body = {"heartbeats": [{"id": job.id, "progress": 1}, {"id": other.id},
                           {"id": job.id, "progress": 2}]}
    response = client.simulate_post("/v1/heartbeats", json=body)
    assert (response.status_code, response.json["code"]) == (400, "duplicate_job")
    assert store.get(job.id).heartbeat_at is None
    assert store.get(other.id).heartbeat_at is None


@pytest.mark.parametrize("body", [{"heartbeats": []}, {}, {"heartbeats": [{"progress": 1}]},
                                  {"heartbeats": [{"id": "A" * 32}]}])
def test_batch_that_is_empty_or_malformed_is_refused(client, body):
    response = client.simulate_post("/v1/heartbeats", json=body)
    assert response.status_code == 400


# -- single heartbeats and the observed state --------------------------------------

def test_observed_state_tells_pause_requested_from_paused(client, store):
    job = job_in(store, "start")
    client.simulate_post(f"/v1/jobs/{job.id}/commands", json={"command": "pause"})
    answer = heartbeat(client, job.id, observed_state="start", progress=10).json
    assert (answer["state"], answer["observed_state"]) == ("pause", "start")
    assert (get_job(client, job.id)["state"], get_job(client, job.id)["observed_state"]) == \
        ("pause", "start")  # requested, not yet obeyed
    answer = heartbeat(client, job.id, observed_state="pause").json
    assert (answer["state"], answer["observed_state"]) == ("pause", "pause")
    assert get_job(client, job.id)["observed_state"] == "pause"


def test_a_killed_job_records_the_acknowledgement_and_nothing_else(client, store):
    job = job_in(store, "start")
    heartbeat(client, job.id, observed_state="start", progress=10, message="working")
    client.simulate_post(f"/v1/jobs/{job.id}/commands", json={"command": "kill"})
    before = get_job(client, job.id)
    assert before["observed_state"] == "start"  # kill requested, worker not yet stopped

    response = heartbeat(client, job.id, observed_state="kill", progress=90, message="late")

    assert response.status_code == 200
    assert (response.json["state"], response.json["observed_state"]) == ("kill", "kill")
    after = get_job(client, job.id)
    assert after == {**before, "observed_state": "kill"}
    heartbeat(client, job.id, observed_state="start")  # a late heartbeat cannot undo it
    assert get_job(client, job.id)["observed_state"] == "kill"


def test_heartbeat_of_an_unknown_job_is_404_and_creates_nothing(client, redis_client,
                                                                key_prefix):
    before = sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*"))
    response = heartbeat(client, "f" * 32, progress=1)
    assert (response.status_code, response.json["code"]) == (404, "job_not_found")
    assert sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*")) == before


# -- stalled jobs ----------------------------------------------------------------

def test_stalled_follows_heartbeats_and_state(client, store):
    job = job_in(store, "start", heartbeat_timeout=1)
    quiet = job_in(store, "start")  # no timeout: never stalled

    for _ in range(4):  # heartbeating faster than the timeout: never stalled
        assert heartbeat(client, job.id, progress=1).status_code == 200
        assert get_job(client, job.id)["stalled"] is False
        time.sleep(0.3)

    eventually(lambda: get_job(client, job.id)["stalled"])
    assert job.id in listed_ids(client, stalled="true")
    assert job.id not in listed_ids(client, stalled="false")
    assert quiet.id in listed_ids(client, stalled="false")
    assert quiet.id not in listed_ids(client, stalled="true")

    client.simulate_post(f"/v1/jobs/{job.id}/commands", json={"command": "pause"})
    assert get_job(client, job.id)["stalled"] is False  # a paused job is not expected to beat
    assert job.id not in listed_ids(client, stalled="true")
    assert job.id in listed_ids(client, stalled="false")

    client.simulate_post(f"/v1/jobs/{job.id}/commands", json={"command": "start"})
    assert get_job(client, job.id)["stalled"] is False  # a full timeout from the resume
    eventually(lambda: get_job(client, job.id)["stalled"])
    assert job.id in listed_ids(client, stalled="true")

    heartbeat(client, job.id)
    assert get_job(client, job.id)["stalled"] is False
    assert job.id not in listed_ids(client, stalled="true")

    client.simulate_post(f"/v1/jobs/{job.id}/commands", json={"command": "kill"})
    last_beat_ms = store.get(job.id).heartbeat_at
    eventually(lambda: store.server_time_ms() > last_beat_ms + 1100)  # the timeout ran out
    assert get_job(client, job.id)["stalled"] is False  # ended jobs never stall
    assert job.id not in listed_ids(client, stalled="true")



def test_command_answers_and_replays_carry_the_server_times_stalled(client):
    """A repeated start and an Idempotency-Key replay answer "stalled" as GET does
    (it was computed with the job's own times as "now", so always false)."""
    body = {"type": "teams", "heartbeat_timeout": 1}
    first = client.simulate_post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-stall"})
    job_id = first.json["id"]
    assert first.json["stalled"] is False
    eventually(lambda: get_job(client, job_id)["stalled"])

    repeated = client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "start"})
    assert repeated.status_code == 200
    assert repeated.json["changed"] is False
    assert repeated.json["job"]["stalled"] is True
    replay = client.simulate_post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-stall"})
    assert (replay.status_code, replay.json["id"]) == (200, job_id)
    assert replay.json["stalled"] is True

    paused = client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "pause"})
    assert (paused.json["changed"], paused.json["job"]["stalled"]) == (True, False)


# -- long-poll -------------------------------------------------------------------

def in_thread(call):
    """Run ``call()`` in a thread; the returned dict gets its result or error
    and the time it took."""
    outcome: dict = {}

    def run():
        started = time.monotonic()
        try:
            outcome["result"] = call()
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_long_poll_returns_soon_after_a_command(live_service):
    api = Client(live_service.url)
    job = api.register("teams")
    waiting = in_thread(lambda: Client(live_service.url).get(job["id"], wait=5,
                                                              version=job["version"]))
    long_polls_waiting(live_service.url)
    api.command(job["id"], "pause")
    waiting["thread"].join(10)
    assert waiting["result"]["state"] == "pause"
    assert waiting["result"]["version"] == job["version"] + 1
    # The point of the test: it returned on the change, well before the wait ran out.
    assert waiting["seconds"] < 4


def test_long_poll_returns_the_unchanged_job_after_the_wait(live_service):
    api = Client(live_service.url)
    job = api.register("teams")
    started = time.monotonic()
    answer = api.get(job["id"], wait=1, version=job["version"])
    assert time.monotonic() - started >= 1
    assert (answer["state"], answer["version"]) == ("start", job["version"])


def test_long_poll_with_an_old_version_returns_at_once(live_service):
    api = Client(live_service.url)
    job = api.register("teams")
    api.command(job["id"], "pause")
    answer = api.get(job["id"], wait=30, version=job["version"])  # would hang 30 s otherwise
    assert (answer["state"], answer["version"]) == ("pause", job["version"] + 1)


@pytest.mark.parametrize("query", ["wait=61", "wait=-1", "wait=nan", "wait=inf", "wait=soon",
                                   "wait=1&version=-1", "wait=1&version=x",
                                   "wait=1&wait=2"])
def test_long_poll_bounds(client, store, query):
    job = job_in(store, "start")
    response = client.simulate_get(f"/v1/jobs/{job.id}", query_string=query)
    assert response.status_code == 400
    assert response.json["code"] in ("invalid_parameter", "duplicate_parameter")


def test_long_poll_of_an_unknown_job_is_404(client):
    response = client.simulate_get("/v1/jobs/" + "e" * 32, params={"wait": "5"})
    assert (response.status_code, response.json["code"]) == (404, "job_not_found")


def raw_get(url: str, timeout: float = 10) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def small_service(redis_url, key_prefix):
    """Four request threads: at most two of them may wait in a long-poll."""
    service = ServiceProcess("--redis-url", redis_url, "--threads", "4",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    yield service
    service.stop()


def test_waiters_beyond_the_limit_get_429_and_the_rest_are_still_served(small_service):
    api = Client(small_service.url)
    job = api.register("teams")
    url = f"{small_service.url}/v1/jobs/{job['id']}?version={job['version']}&wait="

    def wait_in_a_slot():
        # A probe below may hold a slot for a moment: try again then.
        return eventually(lambda: (answer := raw_get(url + "20", timeout=30))[0] != 429
                          and answer)

    waiters = [in_thread(wait_in_a_slot) for _ in range(2)]

    def refused():
        answer = raw_get(url + "0")
        return answer if answer[0] == 429 else None

    status, headers, problem = eventually(refused)

    assert int(headers["Retry-After"]) >= 1
    assert problem["code"] == "too_many_waiters"
    with pytest.raises(ServiceUnavailable) as refused:  # the client sees it as retryable
        api.get(job["id"], wait=20, version=job["version"])
    assert (refused.value.status, refused.value.retry_after) == (429, 1.0)
    # Waiters hold only half the threads: other requests are still answered.
    assert api.heartbeat(job["id"], progress=5)["state"] == "start"
    assert api.get(job["id"])["progress"] == 5
    assert all(w["thread"].is_alive() for w in waiters)

    api.command(job["id"], "pause")
    for waiter in waiters:
        waiter["thread"].join(10)
        assert waiter["result"][0] == 200
        assert waiter["result"][2]["state"] == "pause"
    answer = api.get(job["id"], wait=0.2)  # slots are free again
    assert answer["state"] == "pause"


def test_shutdown_answers_waiting_long_polls_at_once(redis_url, key_prefix):
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    api = Client(service.url)
    job = api.register("teams")
    waiting = in_thread(lambda: Client(service.url).get(job["id"], wait=60,
                                                         version=job["version"]))
    long_polls_waiting(service.url)
    assert service.stop() == 0
    waiting["thread"].join(10)
    assert waiting["result"]["version"] == job["version"]  # answered, unchanged
    # The point: SIGTERM did not wait for the 60 s long-poll to run out.
    assert waiting["seconds"] < 30
