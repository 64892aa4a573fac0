"""Cluster safety of the key schema, checked on the calls the store really
sends: every EVALSHA names all its keys in KEYS, and they share one slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from app.errors import JobNotFound
from app.legacy_import import LegacyImport
from app.model import SHARDS, STATES
from app.store import HeartbeatReport, JobFilter, JobStore, connect
from app.store.keys import KeySchema
from tests.monitoring import CommandMonitor
from tests.servers import RedisProcess


@pytest.fixture(scope="module")
def server():
    process = RedisProcess().start()
    yield process
    process.close()


@pytest.fixture
def monitor(server):
    watcher = CommandMonitor(server.url)
    yield watcher
    watcher.close()


@pytest.fixture
def store(server, key_prefix):
    client = connect(server.url)
    yield JobStore(client, keys=KeySchema(key_prefix))
    client.close()


def script_calls(store: JobStore, commands) -> list[tuple[str, list[str]]]:
    """(script name, KEYS) of each script call that ran: an EVALSHA, or the EVAL
    sent again after NOSCRIPT. MONITOR also shows the EVALSHA that NOSCRIPT
    refused (the first use of a script on a server: a pipeline of 16 calls is
    then 32 lines); such a call ran nothing and counts once, as its EVAL."""
    by_sha = {lua.script.sha: name for name, lua in store.scripts.by_name.items()}
    by_source = {lua.source: name for name, lua in store.scripts.by_name.items()}
    calls: list[tuple[str, list[str]] | None] = []
    unanswered: dict[tuple, list[int]] = {}  # EVALSHA calls an EVAL may yet replace
    for command in commands:
        if command.from_script or command.name not in ("EVALSHA", "EVAL"):
            continue
        names = by_sha if command.name == "EVALSHA" else by_source
        name, rest = names[command.args[1]], command.args[2:]
        if command.name == "EVAL" and unanswered.get((name, rest)):
            calls[unanswered[(name, rest)].pop(0)] = None  # that EVALSHA met NOSCRIPT
        elif command.name == "EVALSHA":
            unanswered.setdefault((name, rest), []).append(len(calls))
        num_keys = int(rest[0])
        calls.append((name, list(rest[1:1 + num_keys])))
    return [call for call in calls if call is not None]


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def test_every_script_call_touches_one_slot(server, store, monitor):
    first, _ = store.register("teams", name="nightly", labels={"team": "core", "env": "prod"},
                              heartbeat_timeout=30)
    store.register("export", labels={"team": "core"}, idempotency_key="retry-1", actor="ci")
    store.register("export", labels={"team": "core"}, idempotency_key="retry-1", actor="ci")
    store.apply_command(first.id, "pause", reason="maintenance")
    store.apply_command(first.id, "start")
    store.bulk_command("pause", ids=[first.id], reason="maintenance")
    store.bulk_command("start", where=JobFilter(type="teams", labels=(("team", "core"),)))
    store.heartbeat(HeartbeatReport(first.id, worker="w1", progress=10.0))
    store.get(first.id)
    store.apply_command(first.id, "done")
    again, _, _ = store.rerun(first.id, actor="ci", idempotency_key="again-1")
    store.apply_command(again.id, "kill")
    store.delete(again.id)
    store.delete(first.id)
    with pytest.raises(JobNotFound):
        store.get(first.id)
    due = JobStore(store.client, retention_seconds=0, keys=store.keys)
    swept, _ = due.register("teams", labels={"team": "core"})
    due.apply_command(swept.id, "done")
    while due.sweep_expired(job_types=("teams", "export")):
        pass
    with pytest.raises(JobNotFound):
        store.get(swept.id)
    # import-legacy: the Go service's keys (in this server too, for the monitor)
    # to the current model, a batch per shard, then deleted one by one.
    for n in range(40):
        store.client.hset(f"job:{n % 16:x}{n:031x}", mapping={"type": "teams", "state": "start"})
    source = connect(server.url, decode_responses=False)
    LegacyImport(source, store, ["teams"], history_cap=10, retention_seconds=60,
                 delete_source=True).run()
    source.close()
    # The upgrade of an earlier release's data, as a service runs it at start.
    store.client.delete(*(shard.migrations for shard in store.keys.shards.values()))
    store.upgrade()

    calls = script_calls(store, monitor.collect())
    assert {name for name, _ in calls} == set(store.scripts.by_name)
    for name, keys in calls:
        assert keys, f"{name} was called without keys"
        assert len(slots(keys)) == 1, f"{name} spans slots: {keys}"


def test_a_heartbeat_batch_sends_one_single_slot_call_per_shard(store, monitor):
    jobs = [store.register("upload")[0] for _ in range(60)]
    # Loaded first: run alone (xdist), the first call would add an EVAL per NOSCRIPT.
    store.scripts.load_all()
    monitor.collect()

    answers = store.heartbeats([HeartbeatReport(job.id, progress=50.0) for job in jobs])

    assert all(answer.found for answer in answers)
    calls = [keys for name, keys in script_calls(store, monitor.collect())
             if name == "recordHeartbeats"]
    touched = {job.id[0] for job in jobs}
    assert len(calls) == len(touched) > 1
    for keys in calls:
        assert len(slots(keys)) == 1, keys
    assert len(set().union(*(slots(keys) for keys in calls))) == len(touched)


def test_listing_indexes_are_spread_over_sixteen_slots(key_prefix):
    schema = KeySchema(key_prefix)
    per_shard = [
        lambda s: s.all_jobs, lambda s: s.deadlines, lambda s: s.expiries,
        lambda s: s.type_index("teams"), lambda s: s.label_index("team", "core"),
        *(lambda s, state=state: s.state_index(state) for state in STATES),
    ]
    for index in per_shard:
        keys = [index(schema.shards[shard]) for shard in SHARDS]
        assert len(slots(keys)) == 16, keys


def test_listing_reads_every_shard(store, monitor):
    for _ in range(3):
        store.register("teams")
    monitor.collect()

    store.list_jobs(JobFilter(), limit=10)

    read = {command.args[1] for command in monitor.collect()
            if command.name == "ZREVRANGEBYSCORE"}
    assert len(slots(sorted(read))) == 16
