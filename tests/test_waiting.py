"""Jobs waiting for a worker (state start, no heartbeat yet) against a real
Redis: the scripts keep idx:waiting and deadline:waiting, GET /v1/stats counts
them apart from running and stalled jobs, ?started= lists them, and the
upgrade indexes the jobs of an earlier release once."""

from __future__ import annotations

import pytest

from app.model import STATES
from app.store import HeartbeatReport, JobStore
from app.store.migrations import WAITING_INDEX
from tests.servers import ServiceProcess
from tests.store_check import assert_store_holds, indexed_from_hashes
from tests.waiting import eventually


def stats(client) -> dict:
    response = client.simulate_get("/v1/stats")
    assert response.status_code == 200, response.text
    return response.json


def listed(client, **params: str) -> list[str]:
    response = client.simulate_get("/v1/jobs", params={**params, "limit": "500"})
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json["jobs"]]


def waiting_ids(client) -> set[str]:
    return set(listed(client, state="start", started="false", stalled="false"))


def holds(store: JobStore) -> None:
    assert_store_holds(store.client, store.keys, indexed_from_hashes(store.client, store.keys))


def test_a_job_waits_until_its_first_heartbeat(client, store):
    first, _ = store.register("teams", heartbeat_timeout=3600)
    second, _ = store.register("upload")
    assert stats(client)["waiting"] == 2
    assert waiting_ids(client) == {first.id, second.id}
    holds(store)

    store.heartbeat(HeartbeatReport(first.id, worker="host-1", progress=1.0))

    body = stats(client)
    assert (body["waiting"], body["states"]["start"], body["stalled"]) == (1, 2, 0)
    assert waiting_ids(client) == {second.id}
    assert listed(client, state="start", started="true") == [first.id]
    assert client.simulate_get(f"/v1/jobs/{first.id}").json["started_at"] is not None
    holds(store)


def test_pause_and_resume_before_any_heartbeat(client, store):
    job, _ = store.register("teams", heartbeat_timeout=3600)
    store.apply_command(job.id, "pause")
    assert stats(client)["waiting"] == 0
    assert listed(client, started="false") == [job.id]      # paused, never heard from
    holds(store)
    store.apply_command(job.id, "start")
    assert waiting_ids(client) == {job.id}
    holds(store)
    # A heartbeat while paused starts it: resumed, it runs, it does not wait.
    store.apply_command(job.id, "pause")
    store.heartbeat(HeartbeatReport(job.id, observed_state="pause"))
    store.apply_command(job.id, "start")
    assert stats(client)["waiting"] == 0
    holds(store)


@pytest.mark.parametrize("command", ["kill", "done", "fail"])
def test_a_final_state_ends_the_wait_and_a_rerun_waits_again(client, store, command):
    job, _ = store.register("teams", heartbeat_timeout=3600)
    store.apply_command(job.id, command)
    assert stats(client)["waiting"] == 0
    rerun, _, _ = store.rerun(job.id)
    assert waiting_ids(client) == {rerun.id}
    holds(store)


def test_bulk_commands_keep_the_index(client, store):
    ids = [store.register("export", heartbeat_timeout=3600 * (i % 2))[0].id for i in range(20)]
    store.heartbeats([HeartbeatReport(j, progress=1.0) for j in ids[:5]])
    store.bulk_command("pause", ids=ids[::2])
    holds(store)
    store.bulk_command("start", ids=ids)
    assert waiting_ids(client) == set(ids[5:])
    holds(store)


def test_a_waiting_job_that_stalls_counts_as_stalled_only(client, store):
    late, _ = store.register("teams", heartbeat_timeout=1)
    store.register("teams")                                 # no timeout: waits for ever
    eventually(lambda: stats(client)["stalled"] == 1)
    body = stats(client)
    assert (body["waiting"], body["states"]["start"]) == (1, 2)
    assert listed(client, stalled="true", started="false") == [late.id]
    assert late.id not in waiting_ids(client)
    # The overview's counts add up: waiting + running + stalled = start.
    running = body["states"]["start"] - body["stalled"] - body["waiting"]
    assert running == 0
    store.heartbeat(HeartbeatReport(late.id, progress=1.0))
    body = stats(client)
    assert (body["waiting"], body["stalled"]) == (1, 0)
    holds(store)


def test_a_deleted_job_leaves_no_entry(client, store):
    job, _ = store.register("teams", heartbeat_timeout=3600)
    store.apply_command(job.id, "kill")
    store.delete(job.id)
    shard = store.keys.for_job(job.id)
    assert not store.client.exists(shard.waiting, shard.waiting_deadlines)
    holds(store)


@pytest.mark.parametrize("value", ["yes", "1", "", "TRUE"])
def test_started_must_be_true_or_false(client, value):
    response = client.simulate_get("/v1/jobs", params={"started": value})
    assert response.status_code == 400
    assert response.json["code"] == "invalid_parameter"


def forget_waiting_index(store: JobStore) -> None:
    """Redis as an earlier release left it: no waiting index, no upgrade done."""
    for shard in store.keys.shards.values():
        store.client.delete(shard.waiting, shard.waiting_deadlines, shard.migrations)


def test_the_upgrade_indexes_the_jobs_of_an_earlier_release_once(client, store):
    waiting = [store.register("teams", heartbeat_timeout=3600 * (i % 2))[0].id
               for i in range(40)]
    running, _ = store.register("teams", heartbeat_timeout=3600)
    store.heartbeat(HeartbeatReport(running.id, progress=1.0))
    paused, _ = store.register("teams")
    store.apply_command(paused.id, "pause")
    # Heard from before the release that added started_at: heartbeat_at only.
    old, _ = store.register("teams")
    store.heartbeat(HeartbeatReport(old.id, progress=1.0))
    store.client.hdel(store.keys.for_job(old.id).job(old.id), "started_at")
    forget_waiting_index(store)
    assert stats(client)["waiting"] == 0

    assert store.upgrade(batch=7) == len(waiting)

    assert stats(client)["waiting"] == len(waiting)
    holds(store)
    assert all(store.client.sismember(shard.migrations, WAITING_INDEX)
               for shard in store.keys.shards.values())
    # Done once: a later start reads the marks and writes nothing.
    store.client.delete(*(s.waiting for s in store.keys.shards.values()))
    assert store.upgrade() == 0
    assert stats(client)["waiting"] == 0
    # The job heard from before started_at existed does not wait when resumed.
    store.apply_command(old.id, "pause")
    store.apply_command(old.id, "start")
    assert old.id not in waiting_ids(client)


def test_the_service_upgrades_at_start(redis_url, key_prefix, store):
    job, _ = store.register("teams")
    forget_waiting_index(store)
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    try:
        eventually(lambda: all(store.client.sismember(s.migrations, WAITING_INDEX)
                               for s in store.keys.shards.values()))
        assert store.client.zscore(store.keys.for_job(job.id).waiting, job.id) is not None
    finally:
        service.stop()


def test_every_state_is_counted_once(client, store):
    for state in STATES:
        job, _ = store.register("teams")
        if state != "start":
            store.apply_command(job.id, {"failed": "fail"}.get(state, state))
    body = stats(client)
    assert body["waiting"] == 1 and body["total"] == len(STATES)


def test_a_bulk_command_reaches_only_the_jobs_no_worker_picked_up(client, store):
    ids = [store.register("export", heartbeat_timeout=3600)[0].id for _ in range(12)]
    store.heartbeats([HeartbeatReport(j, progress=1.0) for j in ids[:4]])
    response = client.simulate_post("/v1/jobs/commands", json={
        "command": "kill", "reason": "never picked up",
        "where": {"state": "start", "started": False}})
    assert response.status_code == 200, response.text
    assert response.json["changed"] == 8
    assert {j: store.get(j).state for j in ids} == \
        {j: "start" if i < 4 else "kill" for i, j in enumerate(ids)}
    assert stats(client)["waiting"] == 0
    holds(store)


def test_the_script_checks_started_again(store):
    """A job listed while waiting that has its first heartbeat before the
    batch arrives no longer matches: unmatched, not changed."""
    job, _ = store.register("export")
    shard = store.keys.for_job(job.id)
    call = store.bindings.apply_commands.call(
        shard, [job.id], "pause", actor="t", reason="", history_cap=10, retention_seconds=60,
        operation="op1", state="start", started=False)
    store.heartbeat(HeartbeatReport(job.id, progress=1.0))
    assert store.scripts.apply_commands(call.keys, call.args) == [0, 0, 0, 0, 1]
    assert store.get(job.id).state == "start"
