"""The service changes data only through its Lua scripts: a MONITOR on a
Redis of the test's own sees every command ``karmchari serve`` sends while
every endpoint is driven, and no data-changing command comes from anywhere
but a script."""

from __future__ import annotations

import pytest

from tests.http_calls import call
from tests.monitoring import CommandMonitor, SentCommand
from tests.servers import RedisProcess, ServiceProcess


def drive_every_endpoint(url: str) -> None:
    def ok(reply, *statuses):
        assert reply.status in (statuses or (200,)), reply
        return reply

    text = ok(call(url, "POST", "/registerJob", form={"type": "teams"})).text
    old_id = text.rsplit(" ", 1)[1]
    ok(call(url, "POST", "/registerJob", form={"type": "nope"}), 400)
    ok(call(url, "POST", "/jobState", form={"id": old_id, "command": "pause"}))
    ok(call(url, "POST", "/jobState", form={"id": old_id, "command": "explode"}), 400)
    ok(call(url, "POST", "/jobState", form={"id": "0" * 32, "command": "pause"}), 404)
    ok(call(url, "GET", f"/jobState?id={old_id}"))

    job = ok(call(url, "POST", "/v1/jobs", body={
        "type": "export", "name": "nightly", "labels": {"team": "core"},
        "heartbeat_timeout": 30}, headers={"Idempotency-Key": "run-1"}), 201).json()
    ok(call(url, "POST", "/v1/jobs", body={"type": "export", "name": "nightly",
                                            "labels": {"team": "core"}, "heartbeat_timeout": 30},
            headers={"Idempotency-Key": "run-1"}))
    other = ok(call(url, "POST", "/v1/jobs", body={"type": "upload"}), 201).json()
    job_path = f"/v1/jobs/{job['id']}"
    ok(call(url, "POST", f"{job_path}/commands", body={"command": "pause", "reason": "why"},
            headers={"If-Match": '"1"'}))
    ok(call(url, "POST", f"{job_path}/commands", body={"command": "start"},
            headers={"If-Match": '"1"'}), 412)
    ok(call(url, "POST", f"{job_path}/commands", body={"command": "start"}))
    ok(call(url, "POST", f"{job_path}/heartbeat", body={"progress": 40, "worker": "w1",
                                                        "observed_state": "start"}))
    ok(call(url, "POST", "/v1/heartbeats", body={"heartbeats": [
        {"id": job["id"], "progress": 50}, {"id": other["id"], "message": "m"},
        {"id": old_id, "observed_state": "pause"}, {"id": "f" * 32}]}))
    ok(call(url, "GET", job_path))
    ok(call(url, "GET", job_path, headers={"If-None-Match": '"3"'}), 304)
    ok(call(url, "GET", f"{job_path}?wait=0.2&version=3"))
    ok(call(url, "GET", f"{job_path}/history"))
    for query in ("", "?state=start", "?type=export", "?label=team:core", "?stalled=true",
                  "?limit=1"):
        ok(call(url, "GET", f"/v1/jobs{query}"))
    ok(call(url, "DELETE", job_path), 409)
    ok(call(url, "POST", f"{job_path}/commands", body={"command": "done"}))
    ok(call(url, "POST", f"{job_path}/commands", body={"command": "start"}), 409)
    ok(call(url, "DELETE", job_path), 204)
    ok(call(url, "GET", job_path), 404)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        ok(call(url, "GET", path))


@pytest.fixture(scope="module")
def session():
    """What the server ran while the service started, served every endpoint
    and stopped, and the server's command statistics afterwards."""
    server = RedisProcess().start()
    monitor = CommandMonitor(server.url)
    service = ServiceProcess("--redis-url", server.url).start()
    try:
        drive_every_endpoint(service.url)
    finally:
        service.stop()
    commands = monitor.collect()
    admin = server.client()
    stats = admin.info("commandstats")
    flags = command_flags(admin)
    admin.close()
    monitor.close()
    server.close()
    return commands, stats, flags


def command_flags(client) -> dict[str, set[str]]:
    """The server's own flags of each command and subcommand ("config|set")."""
    flags = {}
    for name, spec in client.command().items():
        flags[name] = set(spec["flags"])
        for sub in spec.get("subcommands", []):
            flags[sub[0]] = set(sub[2])
    return flags


def flags_of(command: SentCommand, flags: dict[str, set[str]]) -> set[str]:
    if len(command.args) > 1:
        sub = f"{command.name}|{command.args[1]}".lower()
        if sub in flags:
            return flags[sub]
    return flags[command.name.lower()]


def test_the_service_changes_data_only_through_scripts(session):
    commands, _, flags = session
    from_service = [c for c in commands if not c.from_script]
    assert from_service, "MONITOR saw nothing from the service"
    direct_writes = [c.args[:2] for c in from_service if "write" in flags_of(c, flags)]
    assert direct_writes == []
    assert {c.name for c in from_service} >= {"EVALSHA"}


def test_the_scripts_did_the_writing(session):
    """The check above can only pass for the right reason if MONITOR showed
    the scripts' own writes."""
    commands, _, flags = session
    script_writes = {c.name for c in commands if c.from_script and "write" in flags_of(c, flags)}
    assert script_writes >= {"HSET", "ZADD", "ZREM", "RPUSH", "LTRIM", "DEL", "SET"}


def test_command_statistics_show_script_calls(session):
    commands, stats, _ = session
    sent = sum(1 for c in commands if not c.from_script and c.name == "EVALSHA")
    assert stats["cmdstat_evalsha"]["calls"] >= sent > 10
