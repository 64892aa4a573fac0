"""The old wire contract, byte for byte (SPEC §3), with the old bugs fixed."""

from __future__ import annotations

import re

import pytest

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def client(live_client):
    """Every test here runs through each real HTTP server."""
    return live_client


def register(client, job_type="teams"):
    return client.simulate_post("/registerJob", body=f"type={job_type}", headers=FORM)


def command(client, job_id, name):
    return client.simulate_post("/jobState", body=f"id={job_id}&command={name}", headers=FORM)


def test_register_answers_created_with_a_32_hex_id(client):
    response = register(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert re.fullmatch(r"Created! id = [0-9a-f]{32}", response.text)


def test_pause_then_read(client):
    job_id = register(client).text.rsplit(" ", 1)[1]
    response = command(client, job_id, "pause")
    assert (response.status_code, response.text) == (200, f"{job_id} -- pause")
    response = client.simulate_get("/jobState", params={"id": job_id})
    assert (response.status_code, response.text) == (200, f"{job_id} -- pause")


def test_errors_are_the_old_messages(client):
    assert (register(client, "").status_code, register(client, "").text) == \
        (400, "Type is required")
    assert register(client, "nope").text == "Type is invalid"
    assert client.simulate_post("/jobState", body="command=pause", headers=FORM).text == \
        "ID is required"
    assert client.simulate_post("/jobState", body="id=abc", headers=FORM).text == \
        "Command is required"
    job_id = register(client).text.rsplit(" ", 1)[1]
    response = command(client, job_id, "explode")
    assert (response.status_code, response.text) == (400, "Command is invalid")
    response = client.simulate_get("/jobState")
    assert (response.status_code, response.text) == (400, "ID is required")


def test_unknown_id_is_404_and_creates_nothing(client, redis_client, key_prefix):
    before = sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*"))
    response = command(client, "0" * 32, "pause")
    assert (response.status_code, response.text) == (404, "Job not available")
    assert sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*")) == before
    response = client.simulate_get("/jobState", params={"id": "0" * 32})
    assert (response.status_code, response.text) == (404, "Job not available")


def test_invalid_command_changes_nothing(client, store):
    job_id = register(client).text.rsplit(" ", 1)[1]
    command(client, job_id, "explode")
    job = store.get(job_id)
    assert (job.state, job.version) == ("start", 1)


def test_start_after_kill_is_409_naming_the_state(client, store):
    job_id = register(client).text.rsplit(" ", 1)[1]
    assert command(client, job_id, "kill").status_code == 200
    response = command(client, job_id, "start")
    assert response.status_code == 409
    assert "kill" in response.text
    assert store.get(job_id).state == "kill"


def test_every_command_answers_what_get_then_says(client):
    """The state a command leads to, named as the old service named it: after
    command=fail both answers say "fail" (the JSON API says "failed")."""
    for name in ("pause", "start", "kill", "done", "fail"):
        job_id = register(client).text.rsplit(" ", 1)[1]
        posted = command(client, job_id, name)
        read = client.simulate_get("/jobState", params={"id": job_id})
        assert (posted.status_code, read.status_code) == (200, 200)
        assert posted.text == read.text == f"{job_id} -- {name}"
    refused = command(client, job_id, "start")
    assert (refused.status_code, refused.text) == (409, f"Command refused: {job_id} -- fail")
    assert client.simulate_get(f"/v1/jobs/{job_id}").json["state"] == "failed"
