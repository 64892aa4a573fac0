"""``karmchari import-legacy``: the Go service's ``job:<id>`` hashes, written
here with exactly the commands it sends (``HSET job:<id> type <type> state
start`` to register, ``HSET job:<id> state <command>`` for a command), imported
into a real Redis and read back through a real ``karmchari serve``."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from app.legacy_import import LegacyImport
from app.store import JobStore, connect
from app.store.keys import KeySchema
from tests.http_calls import call
from tests.servers import ROOT, RedisProcess, karmchari_command
from tests.store_check import assert_store_holds, indexed_from_hashes
from tests.waiting import eventually


@pytest.fixture(scope="module")
def source_server():
    """The Go service's Redis: a server of its own, as ``job:*`` is not under
    a test's key prefix."""
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def source(source_server):
    client = source_server.client()
    client.flushall()
    yield client
    client.close()


def go_id() -> str:
    return hashlib.md5(uuid.uuid4().bytes).hexdigest()


def go_register(source: redis.Redis, job_type: str, job_id: str | None = None) -> str:
    job_id = job_id or go_id()
    source.execute_command("HSET", f"job:{job_id}", "type", job_type, "state", "start")
    return job_id


def go_command(source: redis.Redis, job_id: str, command: str) -> None:
    source.execute_command("HSET", f"job:{job_id}", "state", command)


def import_legacy(source_url: str, redis_url: str, key_prefix: str, *args: str,
                  **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "KARMCHARI_KEY_PREFIX": key_prefix}
    return subprocess.run(import_argv(source_url, redis_url, *args), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, **kwargs)


def import_argv(source_url: str, redis_url: str, *args: str) -> list[str]:
    return [*karmchari_command(), "import-legacy", "--from-url", source_url,
            "--redis-url", redis_url, *args]


def report_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def run_import(source_server, redis_url, key_prefix):
    def run(*args: str) -> dict:
        return report_of(import_legacy(source_server.url, redis_url, key_prefix,
                                       "--output", "json", *args))
    return run


def old_state(url: str, job_id: str) -> tuple[int, str]:
    reply = call(url, "GET", f"/jobState?id={job_id}")
    return reply.status, reply.text


def history(url: str, job_id: str) -> list[dict]:
    reply = call(url, "GET", f"/v1/jobs/{job_id}/history")
    assert reply.status == 200, reply.text
    return reply.json()["entries"]


def test_jobs_keep_their_ids_and_states(source, run_import, live_service, redis_client,
                                        key_prefix):
    started, paused, killed, resumed = (go_register(source, t) for t in
                                        ("teams", "upload", "export", "teams"))
    go_command(source, paused, "pause")
    go_command(source, killed, "pause")
    go_command(source, killed, "kill")
    go_command(source, resumed, "pause")
    go_command(source, resumed, "start")
    before = {key: source.hgetall(key) for key in source.keys("job:*")}

    report = run_import()

    assert (report["scanned"], report["imported"], report["already"]) == (4, 4, 0)
    url = live_service.url
    for job_id, state in ((started, "start"), (paused, "pause"), (killed, "kill"),
                          (resumed, "start")):
        assert old_state(url, job_id) == (200, f"{job_id} -- {state}")
    job = call(url, "GET", f"/v1/jobs/{killed}").json()
    assert (job["type"], job["state"], job["version"]) == ("export", "kill", 1)
    assert job["ended_at"] is not None
    [entry] = history(url, killed)
    assert (entry["command"], entry["from"], entry["to"], entry["actor"]) == \
        ("import", "", "kill", "import")
    assert "creation time unknown" in entry["reason"]
    stored = redis_client.hgetall(KeySchema(key_prefix).for_job(killed).job(killed))
    assert stored["created_unknown"] == "1"
    assert stored["legacy_state"] == "kill"
    # The old keys are untouched.
    assert {key: source.hgetall(key) for key in source.keys("job:*")} == before
    # The counts of GET /v1/stats include them, and count the import as changes.
    stats = call(url, "GET", "/v1/stats").json()
    assert (stats["total"], stats["states"]["start"], stats["states"]["pause"],
            stats["states"]["kill"]) == (4, 2, 1, 1)
    assert stats["types"]["teams"] == 2
    assert sum(minute["count"] for minute in stats["changes_per_minute"]) == 4
    # The two in start have had no heartbeat here: waiting for a worker.
    assert stats["waiting"] == 2
    keys = KeySchema(key_prefix)
    assert_store_holds(redis_client, keys, indexed_from_hashes(redis_client, keys))

    # The indexes hold them: listing by state and type, and commands work on.
    listed = call(url, "GET", "/v1/jobs?state=pause&type=upload").json()["jobs"]
    assert [j["id"] for j in listed] == [paused]
    assert call(url, "POST", "/jobState", form={"id": paused, "command": "start"}).text == \
        f"{paused} -- start"
    assert call(url, "POST", "/jobState", form={"id": started, "command": "pause"}).status \
        == 200
    assert call(url, "DELETE", f"/v1/jobs/{killed}").status == 204
    assert old_state(url, killed)[0] == 404


def test_the_go_services_odd_data_follows_the_documented_rules(source, run_import,
                                                                live_service):
    exploded = go_register(source, "teams")
    go_command(source, exploded, "explode")         # its invalid-command bug
    typeless = go_id()
    go_command(source, typeless, "pause")           # a command for an id never registered
    other_type = go_register(source, "reports")     # not a configured type
    source.execute_command("HSET", "job:not-an-md5", "state", "pause")
    source.set(f"job:{go_id()}", "a string")
    source.hset(f"job:{go_id()}", mapping={"type": "teams", "state": "start", "owner": "x"})
    source.hset(f"job:{go_id().upper()}", mapping={"type": "teams", "state": "start"})
    # A state or type no form ever sent: not copied into the history of a job here.
    huge = go_id()
    source.hset(f"job:{huge}", mapping={"type": "teams", "state": "x" * 1_000_000})
    source.hset(f"job:{go_id()}", mapping={"type": "t" * 1_000_000, "state": "start"})
    source.set("jobless", "not under job:*")

    report = run_import()

    assert report["scanned"] == 9
    assert (report["imported"], report["invalid_state"]) == (1, 1)
    assert (report["no_type"], report["unknown_type"], report["not_legacy"]) == (1, 1, 6)
    assert old_state(live_service.url, huge) == (404, "Job not available")
    assert report["unknown_types"] == {"reports": 1}
    assert report["examples"]["no_type"] == [f"job:{typeless}"]
    url = live_service.url
    # failed in the JSON API; the old API names it fail, as the command that leads there.
    assert old_state(url, exploded) == (200, f"{exploded} -- fail")
    assert call(url, "GET", f"/v1/jobs/{exploded}").json()["state"] == "failed"
    [entry] = history(url, exploded)
    assert entry["to"] == "failed" and "invalid state 'explode'" in entry["reason"]
    assert old_state(url, typeless) == (404, "Job not available")
    assert old_state(url, other_type) == (404, "Job not available")


def test_unknown_types_import_once_configured(source, run_import, live_service):
    job_id = go_register(source, "reports")
    assert run_import()["unknown_type"] == 1
    report = run_import("--job-types", "teams,reports")
    assert (report["imported"], report["unknown_type"]) == (1, 0)
    assert old_state(live_service.url, job_id) == (200, f"{job_id} -- start")


def test_a_second_run_imports_nothing_twice(source, run_import, live_service):
    ids = [go_register(source, "teams") for _ in range(30)]
    go_command(source, ids[0], "explode")
    assert run_import("--batch", "7")["imported"] == 30

    again = run_import("--batch", "7")

    assert (again["imported"], again["already"], again["updated"]) == (0, 30, 0)
    for job_id in ids[:3]:
        assert len(history(live_service.url, job_id)) == 1
        assert call(live_service.url, "GET", f"/v1/jobs/{job_id}").json()["version"] == 1


def test_changes_at_the_source_after_an_import_are_brought_over(source, run_import, live_service,
                                                               redis_client, key_prefix):
    """Running side by side: the Go service still takes commands after a first
    import; a second run brings those over, unless the job changed here too."""
    followed, changed_here = go_register(source, "teams"), go_register(source, "teams")
    run_import()
    url = live_service.url
    go_command(source, followed, "pause")
    go_command(source, changed_here, "kill")
    call(url, "POST", f"/v1/jobs/{changed_here}/commands", body={"command": "pause"})

    report = run_import()

    assert (report["updated"], report["changed_here"], report["imported"]) == (1, 1, 0)
    assert old_state(url, followed) == (200, f"{followed} -- pause")
    assert old_state(url, changed_here) == (200, f"{changed_here} -- pause")
    assert [(e["command"], e["from"], e["to"]) for e in history(url, followed)] == \
        [("import", "", "start"), ("import", "start", "pause")]
    go_command(source, followed, "kill")
    assert run_import()["updated"] == 1
    assert call(url, "GET", f"/v1/jobs/{followed}").json()["ended_at"] is not None
    assert run_import()["updated"] == 0
    keys = KeySchema(key_prefix)
    assert_store_holds(redis_client, keys, indexed_from_hashes(redis_client, keys))


def test_a_job_that_exists_here_is_left_alone(source, run_import, live_service):
    created = call(live_service.url, "POST", "/v1/jobs", body={"type": "teams"}).json()
    go_register(source, "upload", created["id"])
    report = run_import()
    assert (report["id_taken"], report["imported"]) == (1, 0)
    assert call(live_service.url, "GET", f"/v1/jobs/{created['id']}").json()["type"] == "teams"


def test_dry_run_writes_nothing(source, run_import, redis_client, key_prefix):
    for _ in range(5):
        go_register(source, "export")
    go_command(source, go_id(), "kill")

    report = run_import("--dry-run", "--delete-source")

    assert (report["dry_run"], report["imported"], report["no_type"]) == (True, 5, 1)
    assert report["deleted"] == 0
    assert not list(redis_client.scan_iter(match=f"{{{key_prefix}:*"))
    assert len(source.keys("job:*")) == 6
    run_import()
    assert run_import("--dry-run")["already"] == 5


def test_delete_source_removes_only_what_was_imported(source, run_import, live_service):
    imported = [go_register(source, "teams") for _ in range(3)]
    typeless = go_id()
    go_command(source, typeless, "pause")
    source.set(f"job:{go_id()}", "a string")

    report = run_import("--delete-source")

    assert (report["imported"], report["deleted"]) == (3, 3)
    assert sorted(source.keys("job:*")) == sorted([f"job:{typeless}",
                                                   *(k for k in source.keys("job:*")
                                                     if source.type(k) == "string")])
    for job_id in imported:
        assert old_state(live_service.url, job_id) == (200, f"{job_id} -- start")


def test_delete_source_keeps_a_key_changed_since_it_was_read(source_server, source, redis_url,
                                                             key_prefix):
    """deleteLegacyJob, between the read and the delete: the Go service wrote."""
    job_id = go_register(source, "teams")
    target = connect(redis_url)
    store = JobStore(target, keys=KeySchema(key_prefix))
    raw = connect(source_server.url, decode_responses=False)

    def go_writes_meanwhile(report):
        go_command(source, job_id, "pause")

    job = LegacyImport(raw, store, ["teams"], history_cap=100, retention_seconds=60,
                       delete_source=True)
    real_delete = job._delete_source
    job._delete_source = lambda jobs: (go_writes_meanwhile(None), real_delete(jobs))
    report = job.run()
    assert (report.imported, report.deleted, report.kept_changed) == (1, 0, 1)
    assert source.hgetall(f"job:{job_id}") == {"type": "teams", "state": "pause"}
    raw.close()
    target.close()


def test_an_interrupted_run_is_resumed_by_running_it_again(source_server, source, redis_url,
                                                            key_prefix, run_import):
    ids = [go_register(source, "upload") for _ in range(50)]
    target = connect(redis_url)
    store = JobStore(target, keys=KeySchema(key_prefix))
    raw = connect(source_server.url, decode_responses=False)

    class Interrupted(Exception):
        pass

    def interrupt(report):
        if report.scanned >= 20:
            raise Interrupted

    with pytest.raises(Interrupted):
        LegacyImport(raw, store, ["upload"], history_cap=100, retention_seconds=60, batch=10,
                     progress=interrupt).run()
    first = sum(target.exists(store.keys.for_job(i).job(i)) for i in ids)
    assert 0 < first < 50

    report = run_import("--batch", "10")

    assert (report["imported"], report["already"]) == (50 - first, first)
    for job_id in ids:
        assert len(target.lrange(store.keys.for_job(job_id).history(job_id), 0, -1)) == 1
    raw.close()
    target.close()


def test_text_report_and_progress_on_a_terminal(source_server, source, redis_url, key_prefix):
    for _ in range(300):
        go_register(source, "teams")
    go_command(source, go_id(), "explode")

    piped = import_legacy(source_server.url, redis_url, key_prefix, "--batch", "50")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # no progress where nobody watches
    assert "301 job:* keys read" in piped.stdout
    assert "300  imported" in piped.stdout
    assert "skipped: no type" in piped.stdout

    controller, terminal = pty.openpty()
    process = subprocess.Popen(import_argv(source_server.url, redis_url, "--batch", "1"),
                               env={**os.environ, "KARMCHARI_KEY_PREFIX": key_prefix},
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    try:
        while select.select([controller], [], [], 60)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process is gone, and the terminal with it
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"\rimport-legacy: " in shown and b"keys read" in shown
    assert "300  already imported" in stdout


def test_without_a_store_it_says_what_to_give(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
    result = subprocess.run([*karmchari_command(), "import-legacy"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--redis-url" in result.stderr
    # The embedded store of the default data directory: where a running serve listens.
    data_dir = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    assert f"--redis-url unix://{data_dir.resolve() / 'karmchari' / 'redis.sock'}" \
        in result.stderr


def test_the_same_store_by_default(redis_url, key_prefix):
    """Without --from-url the old keys are read from the store written to (the
    usual case: Karmchari pointed at the Go service's Redis)."""
    server = RedisProcess().start()
    try:
        client = server.client()
        job_id = go_register(client, "teams")
        go_command(client, job_id, "pause")
        env = {**os.environ, "KARMCHARI_KEY_PREFIX": key_prefix,
               "KARMCHARI_REDIS_URL": server.url}
        result = subprocess.run([*karmchari_command(), "import-legacy", "--output", "json"],
                                env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert report_of(result)["imported"] == 1
        stored = client.hgetall(KeySchema(key_prefix).for_job(job_id).job(job_id))
        assert stored["state"] == "pause"
        # The new keys are not old jobs: a second run sees just the one.
        again = subprocess.run([*karmchari_command(), "import-legacy", "--output", "json"],
                               env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert (report_of(again)["scanned"], report_of(again)["already"]) == (1, 1)
    finally:
        server.close()


GO_BINARY = os.environ.get("KARMCHARI_GO_BINARY")
# The Go service takes no options: it always listens on 51463 and uses redis:6379.
GO_URL = "http://127.0.0.1:51463"
GO_REDIS_URL = os.environ.get("KARMCHARI_GO_REDIS_URL", "redis://redis:6379/0")


def _go_answers() -> bool:
    """The Go service, not another one, answers on its port: it says 400 to an
    unknown id where Karmchari says 404."""
    try:
        reply = call(GO_URL, "GET", f"/jobState?id={go_id()}", timeout=2)
    except OSError:
        return False
    return (reply.status, reply.text) == (400, "Job not available")


@pytest.fixture
def go_service():
    """The built Go service: started here, or the one already running (it cannot
    be moved off its port, so runs on one host share it)."""
    process = None
    if not _go_answers():
        process = subprocess.Popen([GO_BINARY], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        eventually(_go_answers, timeout=30)
    yield GO_URL
    if process:
        process.terminate()
        process.wait(10)


@pytest.mark.skipif(not GO_BINARY, reason="KARMCHARI_GO_BINARY: a built Go service, optional "
                    "(its source: github.com/archit-p/karmchari)")
def test_data_written_by_the_go_service_itself(go_service, redis_url, key_prefix,
                                               live_service):
    """Its Redis may hold others' jobs too: only this test's are checked, and
    nothing is written there."""
    ids = {}
    for name, job_type in (("running", "teams"), ("paused", "upload"), ("killed", "export"),
                           ("resumed", "teams"), ("exploded", "teams")):
        reply = call(go_service, "POST", "/registerJob", form={"type": job_type})
        assert reply.text.startswith("Created! id = "), reply.text
        ids[name] = reply.text.removeprefix("Created! id = ")
    for name, commands in (("paused", ["pause"]), ("killed", ["pause", "kill"]),
                           ("resumed", ["pause", "start"]), ("exploded", ["explode"])):
        for command in commands:
            call(go_service, "POST", "/jobState", form={"id": ids[name], "command": command})
    typeless = go_id()
    call(go_service, "POST", "/jobState", form={"id": typeless, "command": "pause"})
    go_answers = {name: call(go_service, "GET", f"/jobState?id={job_id}").text
                  for name, job_id in ids.items()}
    assert go_answers["exploded"].endswith(" -- explode")  # its bug, as stored

    report = report_of(import_legacy(GO_REDIS_URL, redis_url, key_prefix, "--output", "json"))

    assert report["imported"] >= 5 and report["invalid_state"] >= 1 and report["no_type"] >= 1
    for name, job_id in ids.items():
        answer = call(live_service.url, "GET", f"/jobState?id={job_id}")
        assert (answer.status, answer.text) == \
            (200, go_answers[name].replace("explode", "fail")), name
    assert call(live_service.url, "GET", f"/jobState?id={typeless}").status == 404
