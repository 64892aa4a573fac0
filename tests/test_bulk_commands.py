"""POST /v1/jobs/commands and its script, lua/applyCommands-12.lua, against a
real Redis: by ids and by filter, the counts, every change with its history
entry, the same changes as applyCommand for every (state, command) pair,
batches over all 16 shards, a walk continued from its cursor, and bulk
commands racing single ones."""

from __future__ import annotations

import base64
import random
import secrets
import threading

import pytest
import redis
from falcon import testing

from app.app import create_app
from app.config import Config
from app.errors import IllegalTransition
from app.model import COMMANDS, SHARDS, STATES, TARGET_STATE, TERMINAL_STATES, Outcome, outcome
from app.store import JobFilter, JobStore
from app.store.bulk import BATCH
from tests.bulk_load import register_many
from tests.servers import ServiceProcess
from tests.waiting import eventually


def script_call(store: JobStore, shard, job_ids, command, actor, reason, history_cap,
                retention_seconds, **where) -> tuple[list[str], list]:
    """KEYS and ARGV of one applyCommands call, as its binding builds them."""
    call = store.bindings.apply_commands.call(
        shard, job_ids, command, actor=actor, reason=reason, history_cap=history_cap,
        retention_seconds=retention_seconds, operation=secrets.token_hex(6), **where)
    return call.keys, call.args


OPERATOR = ("otto", "tok-operator-1b2c-9a8b")
TOKENS = (f"otto:operator:{OPERATOR[1]},wim:worker:tok-worker-3d4e-7c6d,"
          "rea:reader:tok-reader-5f6a-5e4f")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(config, store):
    """The app with tokens: operator otto, worker wim, reader rea."""
    config = Config(redis_url=config.redis_url, key_prefix=config.key_prefix, threads=8,
                    tokens=TOKENS)
    return testing.TestClient(create_app(config, store))


def bulk(api: testing.TestClient, body: dict, token: str = OPERATOR[1]):
    return api.simulate_post("/v1/jobs/commands", json=body, headers=bearer(token))


def job_in(store: JobStore, state: str, **options) -> str:
    job, _ = store.register("teams", **options)
    if state != "start":
        store.apply_command(job.id, "fail" if state == "failed" else state)
    return job.id


def history(store: JobStore, job_id: str) -> list[dict]:
    return store.history(job_id)


def snapshot(client: redis.Redis, prefix: str) -> dict:
    read = {"hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True), "string": client.get,
            "set": client.smembers}
    return {key: read[client.type(key)](key)
            for key in client.scan_iter(match=f"{{{prefix}:*", count=1000)}


def counts(matched=0, changed=0, unchanged=0, refused=0, not_found=0) -> dict:
    return {"matched": matched, "changed": changed, "unchanged": unchanged, "refused": refused,
            "not_found": not_found, "next_cursor": None}


# -- by ids ---------------------------------------------------------------------

def test_by_ids_counts_each_outcome_and_writes_history_with_actor_and_reason(api, store):
    running = [job_in(store, "start") for _ in range(3)]
    paused = job_in(store, "pause")
    killed = job_in(store, "kill")
    unknown = "0" * 32

    response = bulk(api, {"command": "pause", "reason": "db maintenance",
                          "ids": [*running, paused, killed, unknown, running[0]]})

    assert response.status_code == 200, response.text
    assert response.json == counts(matched=5, changed=3, unchanged=1, refused=1, not_found=1)
    for job_id in running:
        job = store.get(job_id)
        assert (job.state, job.version) == ("pause", 2)
        last = history(store, job_id)[-1]
        assert {k: last[k] for k in ("version", "command", "from", "to", "actor", "reason")} == {
            "version": 2, "command": "pause", "from": "start", "to": "pause", "actor": "otto",
            "reason": "db maintenance"}
    assert len(history(store, paused)) == 2 and store.get(paused).version == 2
    assert store.get(killed).state == "kill" and len(history(store, killed)) == 2


def test_a_repeated_bulk_command_changes_nothing_more(api, store):
    ids = [job_in(store, "start") for _ in range(4)]
    assert bulk(api, {"command": "kill", "ids": ids}).json["changed"] == 4
    again = bulk(api, {"command": "kill", "ids": ids}).json
    assert again == counts(matched=4, unchanged=4)
    assert all(len(history(store, job_id)) == 2 for job_id in ids)


# -- by filter --------------------------------------------------------------------

def test_by_label_state_and_type(api, store):
    team_a = [job_in(store, "start", labels={"team": "a"}) for _ in range(5)]
    team_a_paused = job_in(store, "pause", labels={"team": "a"})
    team_a_done = job_in(store, "done", labels={"team": "a", "env": "prod"})
    team_b = [job_in(store, "start", labels={"team": "b"}) for _ in range(3)]
    export_a, _ = store.register("export", labels={"team": "a"})

    response = bulk(api, {"command": "pause", "reason": "freeze",
                          "where": {"label": ["team:a"], "type": "teams"}})
    assert response.json == counts(matched=7, changed=5, unchanged=1, refused=1)
    assert {store.get(j).state for j in team_a} == {"pause"}
    assert store.get(export_a.id).state == "start"
    assert {store.get(j).state for j in team_b} == {"start"}
    assert store.get(team_a_paused).version == 2 and store.get(team_a_done).state == "done"

    response = bulk(api, {"command": "start", "where": {"state": "pause", "label": ["team:a"]}})
    assert response.json == counts(matched=6, changed=6)
    assert store.get(team_a_paused).state == "start"

    response = bulk(api, {"command": "kill", "where": {"label": ["team:a", "env:prod"]}})
    assert response.json == counts(matched=1, refused=1)


def test_an_empty_filter_matches_every_job(api, store):
    ids = [job_in(store, state) for state in ("start", "start", "pause", "failed")]
    response = bulk(api, {"command": "kill", "where": {}})
    assert response.json == counts(matched=4, changed=3, refused=1)
    assert [store.get(j).state for j in ids] == ["kill", "kill", "kill", "failed"]


def test_stalled_filter(api, store):
    stalled = job_in(store, "start", heartbeat_timeout=1)
    lively = job_in(store, "start", heartbeat_timeout=3600)
    never = job_in(store, "start")
    eventually(lambda: store.get(stalled).stalled(store.server_time_ms()))

    response = bulk(api, {"command": "pause", "reason": "stalled",
                          "where": {"stalled": True}})
    assert response.json == counts(matched=1, changed=1)
    assert store.get(stalled).state == "pause"
    # Paused, it leaves the deadlines: no longer stalled.
    assert store.client.zscore(store.keys.for_job(stalled).deadlines, stalled) is None

    response = bulk(api, {"command": "kill", "where": {"stalled": False, "state": "start"}})
    assert response.json == counts(matched=2, changed=2)
    assert {store.get(lively).state, store.get(never).state} == {"kill"}


def test_many_jobs_over_every_shard_in_batches(api, store):
    # More than one batch per shard.
    ids = register_many(store, "teams", 24 * BATCH, labels={"team": "big"})
    shards = {job_id[0] for job_id in ids}
    assert shards == set(SHARDS)
    paused = random.Random(7).sample(ids, 50)
    store.bulk_command("pause", ids=paused)

    response = bulk(api, {"command": "kill", "reason": "decommissioned",
                          "where": {"label": ["team:big"], "state": "start"}})

    assert response.json == counts(matched=len(ids) - 50, changed=len(ids) - 50)
    assert store.count_by_state()["kill"] == len(ids) - 50
    assert store.count_by_state()["pause"] == 50
    for job_id in random.Random(8).sample(sorted(set(ids) - set(paused)), 20):
        entries = history(store, job_id)
        assert [e["to"] for e in entries] == ["start", "kill"]
        assert entries[-1]["reason"] == "decommissioned"


def test_a_walk_past_its_limit_continues_from_its_cursor(store):
    # More than one round of batches (16 shards of BATCH each).
    ids = set(register_many(store, "teams", 24 * BATCH, labels={"team": "walk"}))
    where = JobFilter(labels=(("team", "walk"),))
    total, rounds, cursor = 0, 0, None
    while True:
        result = store.bulk_command("pause", where=where, cursor=cursor, max_examined=150)
        total += result.changed
        rounds += 1
        assert result.examined <= 150 + 16 * BATCH
        cursor = result.next_cursor
        if cursor is None:
            break
        assert rounds < 50
    assert rounds > 1
    assert total == len(ids)
    # Each job was changed once: the walk neither skipped nor repeated one.
    assert all(len(history(store, job_id)) == 2 for job_id in ids)


def test_a_cursor_from_elsewhere_is_refused_and_nothing_is_written(api, store, redis_client,
                                                                   key_prefix):
    job_in(store, "start")
    before = snapshot(redis_client, key_prefix)
    for cursor in ("bm9wZQ", "MTc5NTgzODgwMTA0MjExMy41YzBlMmI3YTlkMTRmM2U4NmEyYjBjNGQ3ZTlmMWEzOA",
                   "eyJ6IjpudWxsfQ", "eyIwIjpbLTEsIngiXX0",
                   # JSON nested past the parser's depth, within the pattern's 2000 characters
                   base64.urlsafe_b64encode(b"[" * 1400).decode().rstrip("=")):
        response = bulk(api, {"command": "pause", "where": {}, "cursor": cursor})
        assert response.status_code == 400, cursor
        assert response.json["code"] == "invalid_cursor"
    assert snapshot(redis_client, key_prefix) == before


# -- refusals ------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["tok-worker-3d4e-7c6d", "tok-reader-5f6a-5e4f"])
def test_readers_and_workers_are_forbidden(api, store, redis_client, key_prefix, token):
    job_id = job_in(store, "start")
    before = snapshot(redis_client, key_prefix)
    for body in ({"command": "pause", "ids": [job_id]}, {"command": "done", "ids": [job_id]},
                 {"command": "kill", "where": {}}):
        response = bulk(api, body, token)
        assert response.status_code == 403, response.text
    assert api.simulate_post("/v1/jobs/commands", json={"command": "kill", "where": {}}
                             ).status_code == 401
    assert snapshot(redis_client, key_prefix) == before


BAD_BODIES = {
    "neither ids nor where": {"command": "pause"},
    "both ids and where": {"command": "pause", "ids": ["a" * 32], "where": {}},
    "no command": {"ids": ["a" * 32]},
    "unknown command": {"command": "stop", "ids": ["a" * 32]},
    "empty ids": {"command": "pause", "ids": []},
    "an id that is not one": {"command": "pause", "ids": ["A" * 32]},
    "too many ids": {"command": "pause", "ids": ["a" * 32] * 501},
    "unknown state": {"command": "pause", "where": {"state": "running"}},
    "unknown type": {"command": "pause", "where": {"type": "nope"}},
    "label without a colon": {"command": "pause", "where": {"label": ["team"]}},
    "label as a string": {"command": "pause", "where": {"label": "team:a"}},
    "stalled as a string": {"command": "pause", "where": {"stalled": "true"}},
    "unknown filter": {"command": "pause", "where": {"worker": "w1"}},
    "cursor with ids": {"command": "pause", "ids": ["a" * 32], "cursor": "abc"},
    "unknown member": {"command": "pause", "ids": ["a" * 32], "force": True},
    "reason not text": {"command": "pause", "ids": ["a" * 32], "reason": 5},
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_input_is_400_and_writes_nothing(api, store, redis_client, key_prefix, name):
    job_in(store, "start")
    before = snapshot(redis_client, key_prefix)
    response = bulk(api, BAD_BODIES[name])
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json["code"] == "invalid_request"
    assert snapshot(redis_client, key_prefix) == before


def test_not_json_is_415(api):
    response = api.simulate_post("/v1/jobs/commands", body="command=pause",
                                 headers={**bearer(OPERATOR[1]),
                                          "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415


# -- the script against applyCommand -------------------------------------------------

def job_state(store: JobStore, job_id: str) -> dict:
    """What a change writes about one job, with what differs between two
    jobs (id, times, operation ids) taken out."""
    shard = store.keys.for_job(job_id)
    client = store.client
    job = client.hgetall(shard.job(job_id))
    now_ms = store.server_time_ms()
    fields = {k: v for k, v in job.items() if k not in ("id", "created_at", "updated_at",
                                                        "ended_at", "score", "ops")}
    deadline = client.zscore(shard.deadlines, job_id)
    expiry = client.zscore(shard.expiries, job_id)
    entries = [{k: v for k, v in e.items() if k != "at"} for e in store.history(job_id)]
    return {
        "fields": fields, "has_ended_at": "ended_at" in job, "has_ops": "ops" in job,
        "indexes": [s for s in STATES if client.zscore(shard.state_index(s), job_id)],
        "deadline_ahead": None if deadline is None else deadline > now_ms,
        "expiry_ahead": None if expiry is None else expiry > now_ms + 3600_000,
        "history": entries,
    }


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("command", COMMANDS)
def test_applycommands_changes_a_job_exactly_as_applycommand(store, redis_client, state,
                                                             command):
    one = job_in(store, state, heartbeat_timeout=60, labels={"team": "x"})
    other = job_in(store, state, heartbeat_timeout=60, labels={"team": "x"})
    pubsub = redis_client.pubsub()
    channels = {store.keys.for_job(job_id).channel for job_id in (one, other)}
    pubsub.ssubscribe(*channels)
    for _ in channels:
        assert pubsub.get_sharded_message(timeout=5)["type"] == "ssubscribe"

    expected = outcome(state, command)
    if expected is Outcome.REFUSED:
        with pytest.raises(IllegalTransition):
            store.apply_command(one, command, actor="ann", reason="why")
    else:
        _, changed = store.apply_command(one, command, actor="ann", reason="why")
        assert changed == (expected is Outcome.CHANGED)
    result = store.bulk_command(command, ids=[other], actor="ann", reason="why")

    assert {Outcome.CHANGED: result.changed, Outcome.UNCHANGED: result.unchanged,
            Outcome.REFUSED: result.refused}[expected] == 1 and result.matched == 1
    assert job_state(store, one) == job_state(store, other)
    # The same change message from both, after the one version more.
    version = 2 if state == "start" else 3
    wanted = [f"{version} {TARGET_STATE[command]}"] * 2 if expected is Outcome.CHANGED else []
    messages = []
    for _ in range(len(wanted) + 1):
        message = pubsub.get_sharded_message(timeout=5 if len(messages) < len(wanted) else 0.1)
        if message is not None:
            messages.append(message["data"].split(" ", 1)[1])
    pubsub.close()
    assert messages == wanted


def test_a_retried_batch_counts_its_changes_and_writes_nothing_more(store, redis_client,
                                                                    key_prefix):
    ids = [job_in(store, "start") for _ in range(30)]
    shard_ids = [j for j in ids if j[0] == ids[0][0]]
    shard = store.keys.for_job(ids[0])
    keys, args = script_call(store, shard, shard_ids, "pause", "ann", "", 100, 3600)
    assert store.scripts.apply_commands(keys, args) == [len(shard_ids), 0, 0, 0, 0]
    # Another client resumes one of them; the batch then arrives a second time
    # (redis-py retrying after a lost reply): it must not pause that one again.
    store.apply_command(shard_ids[0], "start")
    before = snapshot(redis_client, key_prefix)
    assert store.scripts.apply_commands(keys, args) == [len(shard_ids), 0, 0, 0, 0]
    assert snapshot(redis_client, key_prefix) == before
    assert store.get(shard_ids[0]).state == "start"


def test_a_job_that_no_longer_matches_is_left_alone(store, redis_client, key_prefix):
    """Listed under the filter, then changed by someone else: the script checks
    the filter again, at the moment it writes."""
    paused = job_in(store, "pause", labels={"team": "a"})
    other_label = job_in(store, "start", labels={"team": "b"})
    before = snapshot(redis_client, key_prefix)
    for job_id, where in ((paused, {"state": "start"}), (other_label, {"labels": (("team", "a"),)}),
                          (paused, {"job_type": "export"}), (other_label, {"stalled": True})):
        keys, args = script_call(store, store.keys.for_job(job_id), [job_id], "kill", "", "",
                                 100, 3600, **where)
        assert store.scripts.apply_commands(keys, args) == [0, 0, 0, 0, 1]
    assert snapshot(redis_client, key_prefix) == before


def test_an_unknown_command_writes_nothing(store, redis_client, key_prefix):
    job_id = job_in(store, "start")
    before = snapshot(redis_client, key_prefix)
    keys, args = script_call(store, store.keys.for_job(job_id), [job_id], "stop", "", "", 100, 3600)
    assert store.scripts.apply_commands(keys, args) == [-2]
    assert snapshot(redis_client, key_prefix) == before


# -- racing single commands --------------------------------------------------------

def test_bulk_and_single_commands_racing_keep_every_job_consistent(redis_url, key_prefix, store):
    """Through a real server: bulk pauses and resumes by filter while other
    clients send single commands to the same jobs. Every job ends in exactly
    one state index, the one of its state, with a history that has one entry
    per version and ends in that state."""
    from tests.http_calls import call

    ids = register_many(store, "teams", 400, labels={"team": "race"})
    service = ServiceProcess("--redis-url", redis_url, "--threads", "8",
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    errors: list[str] = []

    def singles(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            command = rng.choice(["pause", "start", "start", "kill"])
            reply = call(service.url, "POST", f"/v1/jobs/{rng.choice(ids)}/commands",
                         body={"command": command})
            if reply.status not in (200, 409):
                errors.append(reply.text)

    def bulks() -> None:
        for command, state in [("pause", "start"), ("start", "pause")] * 3:
            reply = call(service.url, "POST", "/v1/jobs/commands", timeout=60,
                         body={"command": command, "where": {"state": state,
                                                             "label": ["team:race"]}})
            if reply.status != 200:
                errors.append(reply.text)

    try:
        threads = [threading.Thread(target=singles, args=(n,)) for n in range(3)]
        threads.append(threading.Thread(target=bulks))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        service.stop()
    assert not errors, errors[:3]

    jobs = [store.get(job_id) for job_id in ids]
    for job in jobs:
        shard = store.keys.for_job(job.id)
        inside = [s for s in STATES if store.client.zscore(shard.state_index(s), job.id)]
        assert inside == [job.state]
        entries = history(store, job.id)
        assert [e["version"] for e in entries] == list(range(1, job.version + 1))
        assert entries[-1]["to"] == job.state
        for before, after in zip(entries, entries[1:], strict=False):
            assert after["from"] == before["to"] and before["to"] not in TERMINAL_STATES
    assert sum(store.count_by_state().values()) == len(ids)
