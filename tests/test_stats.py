"""GET /v1/stats against a real Redis: counts per state, type and label,
stalled jobs, and the per-minute changes that the scripts count themselves."""

from __future__ import annotations

import datetime
import uuid

import pytest
from falcon import testing

from app.app import create_app
from app.config import Config
from app.model import STATES
from app.store import HeartbeatReport, JobStore
from tests.bulk_load import register_many
from tests.waiting import eventually

TOKENS = "rea:reader:tok-reader-5f6a-5e4f,wim:worker:tok-worker-3d4e-7c6d"


def stats(client: testing.TestClient, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.simulate_get("/v1/stats", headers=headers)
    assert response.status_code == 200, response.text
    return response.json


def changes(body: dict) -> int:
    return sum(entry["count"] for entry in body["changes_per_minute"])


def test_an_empty_store(client):
    body = stats(client)
    assert body["total"] == 0 and body["stalled"] == 0
    assert body["states"] == dict.fromkeys(STATES, 0)
    assert body["types"] == {"upload": 0, "export": 0, "teams": 0}
    assert body["labels"] == {}
    assert changes(body) == 0


def test_counts_per_state_type_and_label(client, store: JobStore):
    for _ in range(3):
        store.register("teams", labels={"team": "a", "env": "prod"})
    paused, _ = store.register("export", labels={"team": "b"})
    store.apply_command(paused.id, "pause")
    killed, _ = store.register("upload")
    store.apply_command(killed.id, "kill")
    done, _ = store.register("upload", labels={"team": "a"})
    store.apply_command(done.id, "done")

    body = stats(client)

    assert body["total"] == 6
    assert body["states"] == {"start": 3, "pause": 1, "kill": 1, "done": 1, "failed": 0}
    assert body["types"] == {"upload": 2, "export": 1, "teams": 3}
    assert list(body["labels"].items()) == [("team:a", 4), ("env:prod", 3), ("team:b", 1)]
    assert changes(body) == 6 + 3


def test_deleting_jobs_takes_their_labels_out(client, store):
    first, _ = store.register("teams", labels={"team": "gone", "env": "x"})
    second, _ = store.register("teams", labels={"team": "gone"})
    for job in (first, second):
        store.apply_command(job.id, "done")
    store.delete(first.id)
    assert stats(client)["labels"] == {"team:gone": 1}
    store.delete(second.id)
    body = stats(client)
    assert body["labels"] == {} and body["total"] == 0
    # No member is left at zero in any shard.
    assert all(store.client.zcard(shard.label_counts) == 0
               for shard in store.keys.shards.values())


def test_the_fifty_largest_labels_largest_first(client, store):
    # Label "n:<i>" on i+1 jobs, spread over shards by the random ids.
    jobs = 0
    for i in range(60):
        register_many(store, "teams", i + 1, labels={"n": str(i)})
        jobs += i + 1
    body = stats(client)
    assert body["total"] == jobs
    assert list(body["labels"]) == [f"n:{i}" for i in range(59, 9, -1)]
    assert all(body["labels"][f"n:{i}"] == i + 1 for i in range(10, 60))


def register_in_shard(store: JobStore, shard: str, labels: dict[str, str]) -> None:
    """A job in the given shard: an Idempotency-Key registration takes its
    shard from the key's hash, so try keys until one hashes there."""
    job = uuid.uuid4().hex
    for n in range(10_000):
        key = f"{job}-{n}"
        if store.keys.idempotency_shard("t", key).shard == shard:
            store.register("teams", labels=labels, actor="t", idempotency_key=key)
            return
    raise AssertionError("no key found")


def test_a_label_small_in_every_shard_but_large_overall_is_found(client, store):
    """Each shard's 50 largest labels are only where the search starts: a label
    that is 51st in every shard but first over all of them is found too."""
    for shard in store.keys.shards:
        for group in range(5):
            local = {f"k{i}": f"s{shard}g{group}" for i in range(10)}
            for _ in range(2):          # 50 labels of 2 jobs, only in this shard
                register_in_shard(store, shard, local)
        register_in_shard(store, shard, {"spread": "yes"})   # 1 job in every shard
    labels = stats(client)["labels"]
    assert len(labels) == 50
    assert list(labels.items())[0] == ("spread:yes", 16)
    assert set(list(labels.values())[1:]) == {2}


def test_stalled_jobs_are_counted(client, store):
    stalled, _ = store.register("teams", heartbeat_timeout=1)
    alive, _ = store.register("teams", heartbeat_timeout=1)
    store.register("teams", heartbeat_timeout=3600)
    store.register("teams")
    eventually(lambda: stats(client)["stalled"] == 2)  # both past their 1 s timeout
    store.heartbeat(HeartbeatReport(alive.id, progress=5.0))
    assert stats(client)["stalled"] == 1
    store.apply_command(stalled.id, "pause")
    assert stats(client)["stalled"] == 0


def test_changes_per_minute_come_from_the_scripts(client, store):
    job, _ = store.register("teams")
    store.apply_command(job.id, "pause")
    store.apply_command(job.id, "pause")               # unchanged: not counted
    store.heartbeat(HeartbeatReport(job.id, progress=5.0))  # not a change of state
    others = register_many(store, "teams", 40)
    store.bulk_command("kill", ids=others[:30])
    store.bulk_command("kill", ids=others[:30])        # unchanged: not counted

    body = stats(client)
    series = body["changes_per_minute"]
    assert len(series) == 60
    minutes = [datetime.datetime.fromisoformat(e["minute"].replace("Z", "+00:00"))
               for e in series]
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in zip(minutes, minutes[1:],
                                                                      strict=False))
    now = datetime.datetime.fromisoformat(body["now"].replace("Z", "+00:00"))
    assert minutes[-1] <= now < minutes[-1] + datetime.timedelta(minutes=1)
    assert changes(body) == 1 + 1 + 40 + 30
    # Kept by the scripts, in one hash per shard with an expiry.
    for shard in store.keys.shards.values():
        if store.client.exists(shard.changes):
            assert 0 < store.client.ttl(shard.changes) <= 3720


def test_minutes_older_than_an_hour_are_dropped_by_the_scripts(client, store):
    """The first change of a minute removes the counters of minutes more than
    an hour old (left, here, as an idle hour would leave them)."""
    job, _ = store.register("teams")
    shard = store.keys.for_job(job.id)
    this_minute = store.server_time_ms() // 60_000
    store.client.hdel(shard.changes, this_minute)
    old = {str(this_minute - 61 - i): 5 for i in range(70)}
    store.client.hset(shard.changes, mapping={**old, str(this_minute - 60): 2})

    store.apply_command(job.id, "pause")

    after = store.server_time_ms() // 60_000    # this_minute, unless it just ended
    kept = store.client.hgetall(shard.changes)
    assert set(kept) == {str(m) for m in (this_minute - 60, after) if m >= after - 60}
    assert changes(stats(client)) == 1      # minute - 60 is outside the last hour


@pytest.fixture
def auth_client(config, store):
    config = Config(redis_url=config.redis_url, key_prefix=config.key_prefix, threads=8,
                    tokens=TOKENS)
    return testing.TestClient(create_app(config, store))


def test_readers_may_read_it_and_anonymous_callers_may_not(auth_client, store):
    store.register("teams")
    assert stats(auth_client, "tok-reader-5f6a-5e4f")["total"] == 1
    assert stats(auth_client, "tok-worker-3d4e-7c6d")["total"] == 1
    assert auth_client.simulate_get("/v1/stats").status_code == 401
