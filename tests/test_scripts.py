"""Each Lua script of ``lua/`` against a real Redis: what it writes, what it
refuses, and that a refusal writes nothing."""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest
import redis

from app.errors import (
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidArguments,
    InvalidCommand,
    JobNotFound,
    VersionMismatch,
)
from app.model import (
    COMMANDS,
    STATES,
    TARGET_STATE,
    TERMINAL_STATES,
    Job,
    Outcome,
    new_job_id,
    outcome,
)
from app.store import HeartbeatReport, JobStore, connect
from app.store.keys import KeySchema
from app.store.scripts import (
    RETURN_CODES,
    ImportLegacyJobsCode,
    RegisterJobCode,
    script_dir,
)
from tests.servers import RedisProcess

TARGET, TERMINAL = TARGET_STATE, TERMINAL_STATES


@pytest.fixture
def raw(redis_url):
    """A client without decoding, for DUMP."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def snapshot(raw: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    """Every key of the namespace with its serialized value."""
    return {key: raw.dump(key) for key in raw.scan_iter(match=f"{{{prefix}:*", count=1000)}


def traces(client: redis.Redis, prefix: str, job_id: str) -> list[str]:
    """Keys named after the job, and sorted sets that hold it."""
    found = []
    for key in client.scan_iter(match=f"{{{prefix}:*", count=1000):
        if job_id in key or (client.type(key) == "zset" and client.zscore(key, job_id) is not None):
            found.append(key)
    return found


def job_in(store: JobStore, state: str, **register_options) -> Job:
    job, _ = store.register("teams", **register_options)
    if state != "start":
        job, _ = store.apply_command(job.id, "fail" if state == "failed" else state)
    return job


def history(store: JobStore, job_id: str) -> list[dict]:
    return [json.loads(e) for e in store.client.lrange(store.keys.for_job(job_id).history(job_id),
                                                      0, -1)]


def apply_keys(store: JobStore, job_id: str) -> list[str]:
    shard = store.keys.for_job(job_id)
    return [shard.job(job_id), shard.history(job_id), *shard.state_indexes(), shard.deadlines,
            shard.expiries, shard.changes, shard.worker_jobs, shard.run_times, shard.waiting,
            shard.waiting_deadlines]


def apply_args(store: JobStore, job_id: str, command: str, expected: str = "") -> list:
    return [command, "", "", expected, store.history_cap, store.retention_seconds,
            store.keys.for_job(job_id).channel]


# -- registerJob --------------------------------------------------------------

def test_register_writes_the_job_its_history_and_index_entries(store, redis_client):
    job, created = store.register("teams", name="nightly", labels={"team": "core", "env": "prod"},
                                  heartbeat_timeout=60, actor="ci")
    assert created
    shard = store.keys.for_job(job.id)
    stored = redis_client.hgetall(shard.job(job.id))
    assert Job.from_hash(stored) == job
    assert (job.state, job.version, job.type, job.name) == ("start", 1, "teams", "nightly")
    assert job.labels == {"team": "core", "env": "prod"}
    assert job.created_at == job.updated_at
    score = int(stored["score"])
    for index in (shard.all_jobs, shard.state_index("start"), shard.type_index("teams"),
                  shard.label_index("team", "core"), shard.label_index("env", "prod")):
        assert redis_client.zscore(index, job.id) == score, index
    assert redis_client.zscore(shard.deadlines, job.id) == job.created_at + 60_000
    assert history(store, job.id) == [{"version": 1, "at": job.created_at, "command": "register",
                                       "from": "", "to": "start", "actor": "ci", "reason": ""}]
    assert not redis_client.exists(f"{shard.tag}:idem:-")


def test_register_without_heartbeat_timeout_is_never_due(store, redis_client):
    job, _ = store.register("upload")
    assert redis_client.zscore(store.keys.for_job(job.id).deadlines, job.id) is None


def test_register_never_overwrites_an_existing_id(store, raw, key_prefix):
    job, _ = store.register("teams", name="first", labels={"team": "core"})
    shard = store.keys.for_job(job.id)
    before = snapshot(raw, key_prefix)

    reply = store.scripts.register_job(
        [shard.job(job.id), shard.history(job.id), shard.all_jobs, shard.state_index("start"),
         shard.type_index("export"), shard.deadlines, f"{shard.tag}:idem:-",
         shard.label_counts, shard.changes, shard.name_index, shard.waiting,
         shard.waiting_deadlines],
        [job.id, "export", "second", "{}", 5, "", 100, 0, "", shard.channel])

    assert reply[0] == RegisterJobCode.EXISTS
    assert dict(zip(reply[1][::2], reply[1][1::2], strict=True))["name"] == "first"
    assert snapshot(raw, key_prefix) == before


def test_idempotency_key_returns_the_first_job_and_writes_nothing_more(
        store, raw, redis_client, key_prefix):
    job, created = store.register("teams", actor="ci", idempotency_key="deploy-42",
                                  fingerprint="f1")
    assert created
    shard = store.keys.idempotency_shard("ci", "deploy-42")
    assert job.id[0] == shard.shard
    record = shard.idempotency("ci", "deploy-42")
    assert redis_client.get(record) == f"{job.id} f1"
    assert 0 < redis_client.ttl(record) <= store.idempotency_ttl
    before = snapshot(raw, key_prefix)

    replay, created = store.register("teams", actor="ci", idempotency_key="deploy-42",
                                     fingerprint="f1")
    assert (replay, created) == (job, False)
    with pytest.raises(IdempotencyKeyReused):
        store.register("export", actor="ci", idempotency_key="deploy-42", fingerprint="f2")
    assert snapshot(raw, key_prefix) == before

    other, created = store.register("teams", actor="cron", idempotency_key="deploy-42",
                                    fingerprint="f1")
    assert created and other.id != job.id


# -- applyCommand: every cell of app.model's table ----------------------------

@pytest.mark.parametrize(("state", "command"), list(itertools.product(STATES, COMMANDS)))
def test_transition_table(store, raw, redis_client, key_prefix, state, command):
    """The script agrees with app.model.outcome() (which tests/test_transitions.py
    checks against the spec's table)."""
    job = job_in(store, state)
    before = snapshot(raw, key_prefix)
    target = TARGET[command]

    if outcome(state, command) is Outcome.UNCHANGED:
        after, changed = store.apply_command(job.id, command)
        assert (changed, after) == (False, job)
        assert snapshot(raw, key_prefix) == before
    elif outcome(state, command) is Outcome.CHANGED:
        after, changed = store.apply_command(job.id, command, actor="ops", reason="why not")
        assert changed
        assert (after.state, after.version) == (target, job.version + 1)
        assert after.updated_at >= job.updated_at
        entries = history(store, job.id)
        assert len(entries) == after.version
        assert entries[-1] == {"version": after.version, "at": after.updated_at,
                               "command": command, "from": state, "to": target,
                               "actor": "ops", "reason": "why not"}
        shard = store.keys.for_job(job.id)
        score = redis_client.zscore(shard.all_jobs, job.id)
        for other in STATES:
            expected = score if other == target else None
            assert redis_client.zscore(shard.state_index(other), job.id) == expected, other
        if target in TERMINAL:
            assert after.ended_at == after.updated_at
            assert redis_client.zscore(shard.expiries, job.id) == \
                after.ended_at + store.retention_seconds * 1000
        else:
            assert after.ended_at is None
            assert redis_client.zscore(shard.expiries, job.id) is None
    else:
        with pytest.raises(IllegalTransition) as refused:
            store.apply_command(job.id, command)
        assert refused.value.extra == {"current_state": state, "version": job.version}
        assert snapshot(raw, key_prefix) == before


@pytest.mark.parametrize("command", [*TARGET, "explode"])
def test_command_for_an_unknown_id_creates_nothing(store, raw, key_prefix, command):
    store.register("teams")
    before = snapshot(raw, key_prefix)
    unknown = "f" * 32
    with pytest.raises(JobNotFound):
        store.apply_command(unknown, command)
    sha = store.scripts.apply_command.script.sha
    reply = store.client.evalsha(sha, 10, *apply_keys(store, unknown),
                                 *apply_args(store, unknown, command))
    assert reply == [-1]
    assert snapshot(raw, key_prefix) == before


@pytest.mark.parametrize("state", STATES)
def test_invalid_command_writes_nothing(store, raw, key_prefix, state):
    job = job_in(store, state)
    before = snapshot(raw, key_prefix)
    with pytest.raises(InvalidCommand):
        store.apply_command(job.id, "explode")
    for command in ("", "failed", "START", "pause "):
        assert store.scripts.apply_command(apply_keys(store, job.id),
                                          apply_args(store, job.id, command)) == [-2]
    assert snapshot(raw, key_prefix) == before


def test_expected_version_mismatch_writes_nothing(store, raw, key_prefix):
    job = job_in(store, "pause")
    before = snapshot(raw, key_prefix)
    for command in ("start", "pause", "kill"):  # allowed, repeated, allowed
        with pytest.raises(VersionMismatch) as refused:
            store.apply_command(job.id, command, expected_version=job.version - 1)
        assert refused.value.extra == {"current_state": "pause", "version": job.version}
    assert snapshot(raw, key_prefix) == before

    after, changed = store.apply_command(job.id, "start", expected_version=job.version)
    assert changed and after.version == job.version + 1


def test_history_is_capped(store):
    capped = JobStore(store.client, history_cap=3, keys=store.keys)
    job, _ = capped.register("teams")
    for command in ("pause", "start") * 4:
        job, _ = capped.apply_command(job.id, command)
    assert job.version == 9
    assert [e["version"] for e in history(capped, job.id)] == [7, 8, 9]


def test_heartbeat_deadline_follows_the_state(store, redis_client):
    job, _ = store.register("teams", heartbeat_timeout=30)
    deadlines = store.keys.for_job(job.id).deadlines
    paused, _ = store.apply_command(job.id, "pause")
    assert redis_client.zscore(deadlines, job.id) is None
    resumed, _ = store.apply_command(job.id, "start")
    assert redis_client.zscore(deadlines, job.id) == resumed.updated_at + 30_000
    store.apply_command(job.id, "kill")
    assert redis_client.zscore(deadlines, job.id) is None


# -- recordHeartbeats ----------------------------------------------------------

def test_heartbeat_records_what_was_sent_and_keeps_state_and_version(store, redis_client):
    job, _ = store.register("teams", heartbeat_timeout=30)
    answer = store.heartbeat(HeartbeatReport(job.id, worker="w1", progress=42.5, message="half",
                                             observed_state="start"))
    assert (answer.found, answer.state, answer.version, answer.observed_state) == \
        (True, "start", 1, "start")
    answer = store.heartbeat(HeartbeatReport(job.id, progress=50.0))
    after = store.get(job.id)
    assert (after.worker, after.progress, after.message, after.observed_state) == \
        ("w1", 50.0, "half", "start")
    assert (after.state, after.version, after.updated_at) == ("start", 1, job.updated_at)
    assert redis_client.zscore(store.keys.for_job(job.id).deadlines, job.id) == \
        after.heartbeat_at + 30_000
    assert len(history(store, job.id)) == 1


def test_heartbeat_of_a_paused_job_answers_pause_and_sets_no_deadline(store, redis_client):
    job = job_in(store, "pause", heartbeat_timeout=30)
    answer = store.heartbeat(HeartbeatReport(job.id, observed_state="start"))
    assert (answer.state, answer.version, answer.observed_state) == ("pause", 2, "start")
    assert store.get(job.id).observed_state == "start"
    assert redis_client.zscore(store.keys.for_job(job.id).deadlines, job.id) is None


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_heartbeat_of_a_terminal_job_is_answered_not_recorded(store, raw, key_prefix, state):
    job = job_in(store, state, heartbeat_timeout=30)
    before = snapshot(raw, key_prefix)
    answer = store.heartbeat(HeartbeatReport(job.id, worker="late", progress=99.0))
    assert (answer.found, answer.state, answer.version) == (True, state, 2)
    assert snapshot(raw, key_prefix) == before


def test_heartbeat_of_an_unknown_job_creates_nothing(store, raw, key_prefix):
    job, _ = store.register("teams")
    unknown = job.id[0] + "0" * 31
    before = snapshot(raw, key_prefix)
    with pytest.raises(JobNotFound):
        store.heartbeat(HeartbeatReport(unknown, progress=1.0))
    shard = store.keys.for_job(job.id)
    reply = store.scripts.record_heartbeats(
        [*shard.heartbeat_keys(), shard.job(unknown), shard.job(job.id)],
        # The known job's heartbeat names no worker: a worker would add its own keys.
        ["", "2", "", "1.0", "", "", "2", "", "5.0", "", ""])
    assert reply[0] == [-1]
    assert reply[1][:2] == ["start", 1]
    assert not raw.exists(shard.job(unknown))
    # The known job's first heartbeat: it no longer waits for a worker.
    assert set(snapshot(raw, key_prefix)) == set(before) - {shard.waiting.encode()}


def test_heartbeat_batch_answers_in_order_over_many_shards(store):
    jobs = [store.register("upload")[0] for _ in range(40)]
    store.apply_command(jobs[3].id, "pause")
    store.apply_command(jobs[5].id, "kill")
    unknown = "0" * 32
    reports = [HeartbeatReport(j.id, progress=float(i)) for i, j in enumerate(jobs)]
    reports.insert(7, HeartbeatReport(unknown, progress=1.0))

    answers = store.heartbeats(reports)

    assert [a.job_id for a in answers] == [r.job_id for r in reports]
    assert [a.found for a in answers] == [r.job_id != unknown for r in reports]
    states = {a.job_id: a.state for a in answers if a.found}
    assert (states[jobs[3].id], states[jobs[5].id], states[jobs[0].id]) == \
        ("pause", "kill", "start")
    assert store.get(jobs[10].id).progress == 10.0
    assert store.get(jobs[5].id).progress is None


# -- deleteJob -----------------------------------------------------------------

@pytest.mark.parametrize("state", ["start", "pause"])
def test_delete_refuses_a_job_that_has_not_ended(store, raw, key_prefix, state):
    job = job_in(store, state)
    before = snapshot(raw, key_prefix)
    with pytest.raises(IllegalTransition) as refused:
        store.delete(job.id)
    assert refused.value.extra["current_state"] == state
    assert snapshot(raw, key_prefix) == before


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_delete_removes_the_job_and_every_index_entry(store, redis_client, key_prefix, state):
    job = job_in(store, state, labels={"team": "core", "env": "prod"}, heartbeat_timeout=30)
    keeper, _ = store.register("teams", labels={"team": "core"})
    assert len(traces(redis_client, key_prefix, job.id)) >= 6

    store.delete(job.id)

    assert traces(redis_client, key_prefix, job.id) == []
    assert store.get(keeper.id) == keeper
    with pytest.raises(JobNotFound):
        store.delete(job.id)


def delete_call(store: JobStore, job: Job, job_type: str, mode: str) -> list:
    shard = store.keys.for_job(job.id)
    keys = [shard.job(job.id), shard.history(job.id), shard.all_jobs,
            *(shard.state_index(s) for s in ("kill", "done", "failed")), shard.deadlines,
            shard.expiries, shard.type_index(job_type), shard.state_index("start"),
            shard.state_index("pause"), shard.label_counts, shard.name_index,
            shard.worker_index, shard.worker_jobs]
    return store.scripts.delete_job(keys, [job.id, job_type, "{}", mode, shard.channel])


def test_delete_with_a_stale_read_or_before_retention_writes_nothing(store, raw, key_prefix):
    job, paused = job_in(store, "done"), job_in(store, "pause")
    before = snapshot(raw, key_prefix)
    assert delete_call(store, job, "export", "api") == [-5]
    assert delete_call(store, job, "teams", "sweep") == [-7]
    assert delete_call(store, paused, "teams", "api") == [-4, "pause", 2]
    assert snapshot(raw, key_prefix) == before


# -- readJob -------------------------------------------------------------------

def test_read_job_answers_the_job_with_server_time(store, redis_client):
    job, _ = store.register("teams", labels={"a": "b"})
    first = store.server_time_ms()
    now_ms, flat = store.scripts.read_job([store.keys.for_job(job.id).job(job.id)], [])
    last = store.server_time_ms()
    assert first <= now_ms <= last
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == redis_client.hgetall(
        store.keys.for_job(job.id).job(job.id))
    unknown = "a" * 32
    assert store.scripts.read_job([store.keys.for_job(unknown).job(unknown)], [])[1] == []


def test_only_read_job_may_run_as_a_read_only_script(store):
    job, _ = store.register("teams")
    key = store.keys.for_job(job.id).job(job.id)
    store.ready()
    _, flat = store.client.evalsha_ro(store.scripts.read_job.script.sha, 1, key)
    assert flat
    with pytest.raises(redis.exceptions.ResponseError, match="write"):
        store.client.evalsha_ro(store.scripts.apply_command.script.sha, 12,
                                *apply_keys(store, job.id), *apply_args(store, job.id, "pause"))
    assert store.get(job.id).state == "start"


# -- script cache --------------------------------------------------------------

@pytest.fixture(scope="module")
def own_redis():
    """A server of this module's own: its script cache is flushed."""
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def flushable_store(own_redis, key_prefix):
    client = connect(own_redis.url)
    yield JobStore(client, keys=KeySchema(key_prefix))
    client.close()


def flush_scripts(store: JobStore) -> None:
    store.client.script_flush()
    assert not any(store.client.script_exists(
        *(lua.script.sha for lua in store.scripts.by_name.values())))


def test_store_recovers_from_a_flushed_script_cache(flushable_store):
    store = flushable_store
    flush_scripts(store)
    job, _ = store.register("teams", labels={"x": "y"})
    flush_scripts(store)
    assert store.apply_command(job.id, "pause")[0].state == "pause"
    flush_scripts(store)
    assert store.heartbeat(HeartbeatReport(job.id, progress=5.0)).state == "pause"
    flush_scripts(store)
    assert store.get(job.id).progress == 5.0
    store.apply_command(job.id, "done")
    flush_scripts(store)
    store.delete(job.id)
    flush_scripts(store)
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert store.ready()


def test_pipelined_heartbeats_recover_from_a_flushed_script_cache(flushable_store):
    store = flushable_store
    jobs = [store.register("upload")[0] for _ in range(30)]
    flush_scripts(store)
    answers = store.heartbeats([HeartbeatReport(j.id, progress=7.0) for j in jobs])
    assert all(a.found and a.state == "start" for a in answers)
    assert len({j.id[0] for j in jobs}) > 1
    assert all(store.get(j.id).progress == 7.0 for j in jobs)


# -- retention -----------------------------------------------------------------

def test_terminal_jobs_are_swept_with_every_index_entry(store, redis_client, key_prefix):
    short = JobStore(store.client, retention_seconds=1, keys=store.keys)
    finished = job_in(short, "start", labels={"team": "core"}, heartbeat_timeout=30)
    finished, _ = short.apply_command(finished.id, "done")
    running, _ = short.register("teams", labels={"team": "core"})
    kept = job_in(store, "kill")  # the default retention of seven days
    due_ms = redis_client.zscore(store.keys.for_job(finished.id).expiries, finished.id)
    assert due_ms == finished.ended_at + 1000

    while short.server_time_ms() <= due_ms:
        time.sleep(0.05)
    assert short.sweep_expired() == 1

    assert traces(redis_client, key_prefix, finished.id) == []
    assert short.get(running.id) == running
    assert short.get(kept.id) == kept
    assert short.sweep_expired() == 0



def test_sweep_moves_past_entries_of_jobs_that_are_gone(store, redis_client):
    """250 due expiry entries in one shard whose jobs are gone (evicted, say) come
    first, before a due finished job of the same shard: the sweep clears them
    and reaches that job (it used to read the same 200 entries for ever)."""
    short = JobStore(store.client, retention_seconds=1, keys=store.keys)
    finished = next(job for job in (short.register("teams")[0] for _ in range(200))
                    if job.id[0] == "7")
    finished, _ = short.apply_command(finished.id, "done")
    running, _ = short.register("teams")
    shard = store.keys.shards["7"]
    gone = [new_job_id("7") for _ in range(250)]
    for index in (shard.expiries, shard.all_jobs, shard.state_index("done"),
                  shard.type_index("teams"), shard.deadlines):
        redis_client.zadd(index, dict.fromkeys(gone, 1000))
    redis_client.rpush(shard.history(gone[0]), "{}")
    # An entry of an unfinished job does not belong in expiry: it goes too.
    redis_client.zadd(shard.expiries, {running.id: 1000})
    due_ms = redis_client.zscore(shard.expiries, finished.id)
    while short.server_time_ms() <= due_ms:
        time.sleep(0.05)

    rounds = 0
    while short.sweep_expired(job_types=("teams",)):
        rounds += 1
        assert rounds < 10

    assert rounds >= 2  # 200 entries a round and shard
    assert traces(redis_client, store.keys.prefix, finished.id) == []
    for index in (shard.expiries, shard.all_jobs, shard.state_index("done"),
                  shard.type_index("teams"), shard.deadlines):
        assert not set(gone) & set(redis_client.zrange(index, 0, -1)), index
    assert not redis_client.exists(shard.history(gone[0]))
    assert short.get(running.id) == running
    assert redis_client.zscore(store.keys.for_job(running.id).expiries, running.id) is None


# -- return codes ---------------------------------------------------------------

# A code as a table ("{ -3, state, version }  NAME") or, for a script that
# answers a bare integer, as the number alone ("1   NAME").
_HEADER_CODE_RE = re.compile(r"^\s*(?:\{ (-?\d+)\b[^}]*\}|(-?\d+))\s+([A-Z_]+)", re.MULTILINE)


@pytest.mark.parametrize("name", sorted(RETURN_CODES))
def test_each_header_documents_the_codes_of_its_script(name):
    """Every code of a script's set is in its Lua header's Output, by number and
    name, and the header lists no other."""
    (path,) = script_dir().glob(f"{name}-*.lua")
    header = path.read_text(encoding="utf-8").split("]]", 1)[0]
    output = header.split("Output", 1)[1]
    documented = {int(table or bare): label
                  for table, bare, label in _HEADER_CODE_RE.findall(output)}
    assert documented == {code.value: code.name for code in RETURN_CODES[name]}


@pytest.mark.parametrize("options", [
    {}, {"name": "nightly é", "labels": {"team": "core", "a.b": "x y"}},
    {"heartbeat_timeout": 30, "owner": "worker-1", "actor": "ci"},
    {"heartbeat_timeout": 5.0}, {"idempotency_key": "k-1", "fingerprint": "f"},
])
def test_a_registration_answers_the_job_as_its_hash_holds_it(store, options):
    """registerJob answers only its time; the job Python builds from it and
    from the arguments is the one a read of the hash gives."""
    job, created, now_ms = store.register_with_time("teams", **options)
    assert created
    assert job == store.get(job.id)
    assert now_ms == job.created_at


# -- importLegacyJobs -------------------------------------------------------------

def import_call(store: JobStore, job_id: str, state: str, source_state: str, shard: str = ""):
    return store.bindings.import_legacy_jobs.call(
        store.keys.shards[shard or job_id[0]], [(job_id, "teams", state, source_state)],
        actor="import",
        history_cap=store.history_cap, retention_seconds=store.retention_seconds)


def test_import_of_arguments_that_do_not_fit_answers_a_code_and_writes_nothing(
        store, raw, key_prefix):
    job_id = new_job_id()
    before = snapshot(raw, key_prefix)
    for call in (import_call(store, job_id, "explode", "explode"),
                 import_call(store, "not-an-id", "start", "start", shard="0")):
        assert call.run() == [ImportLegacyJobsCode.INVALID_ARGUMENTS]
        with pytest.raises(InvalidArguments):
            store.bindings.import_legacy_jobs.decode(call.run())
    short = import_call(store, job_id, "start", "start")
    assert store.scripts.import_legacy_jobs(short.keys[:-1], short.args) == [-9]
    assert snapshot(raw, key_prefix) == before


def test_import_answering_already_writes_nothing(store, raw, key_prefix):
    job_id = new_job_id()
    assert import_call(store, job_id, "failed", "explode").run() == [1]
    before = snapshot(raw, key_prefix)
    # Another invalid state at the source: still failed here, nothing to write.
    assert import_call(store, job_id, "failed", "implode").run() == [0]
    assert snapshot(raw, key_prefix) == before
