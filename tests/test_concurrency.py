"""Many clients at once against a real ``karmchari serve``: registrations
never share an id, and racing commands leave a history that is a valid path
of the state machine."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest

from tests.http_calls import Reply, call
from tests.spec_table import ALLOWED, TARGET, TERMINAL


def all_at_once(count: int, work) -> list:
    """Run ``work(i)`` in ``count`` threads released together."""
    barrier = threading.Barrier(count)

    def run(i):
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def register_old(url: str) -> str:
    reply = call(url, "POST", "/registerJob", form={"type": "teams"})
    assert reply.status == 200, reply
    prefix = "Created! id = "
    assert reply.text.startswith(prefix)
    return reply.text[len(prefix):]


def register_v1(url: str) -> str:
    reply = call(url, "POST", "/v1/jobs", body={"type": "export"})
    assert reply.status == 201, reply
    job = reply.json()
    assert (job["state"], job["version"]) == ("start", 1)
    assert reply.headers["location"] == f"/v1/jobs/{job['id']}"
    return job["id"]


@pytest.mark.parametrize("register", [register_old, register_v1])
def test_fifty_simultaneous_registrations_get_fifty_distinct_ids(live_service, register):
    ids = all_at_once(50, lambda _: register(live_service.url))
    assert len(set(ids)) == 50
    for job_id in ids:
        reply = call(live_service.url, "GET", f"/jobState?id={job_id}")
        assert (reply.status, reply.text) == (200, f"{job_id} -- start")


def send_command(url: str, job_id: str, command: str, old_endpoint: bool) -> Reply:
    if old_endpoint:
        return call(url, "POST", "/jobState", form={"id": job_id, "command": command})
    return call(url, "POST", f"/v1/jobs/{job_id}/commands",
                body={"command": command, "reason": "race"})


def test_racing_commands_leave_a_valid_history(live_service):
    url = live_service.url
    job_id = register_v1(url)

    def client(i: int) -> list[tuple[str, bool, Reply]]:
        rng = random.Random(i)
        # Three rounds of pause/resume, then one of any command: a long path
        # that ends in a race between terminal commands.
        commands = [rng.choice(["start", "pause"]) for _ in range(3)] + [rng.choice(list(TARGET))]
        sent = []
        for command in commands:
            old_endpoint = rng.random() < 0.5
            sent.append((command, old_endpoint, send_command(url, job_id, command, old_endpoint)))
        return sent

    results = [r for per_client in all_at_once(20, client) for r in per_client]

    entries = call(url, "GET", f"/v1/jobs/{job_id}/history").json()["entries"]
    job = call(url, "GET", f"/v1/jobs/{job_id}").json()
    assert [e["version"] for e in entries] == list(range(1, job["version"] + 1))
    assert (entries[0]["command"], entries[0]["from"], entries[0]["to"]) == \
        ("register", "", "start")
    for previous, entry in pairwise(entries):
        assert entry["from"] == previous["to"], entry
        assert (entry["from"], entry["command"]) in ALLOWED, entry
        assert entry["to"] == TARGET[entry["command"]], entry
    assert job["state"] == entries[-1]["to"]
    assert [e["to"] in TERMINAL for e in entries].count(True) <= 1

    by_version = {e["version"]: e for e in entries}
    changed_versions = []
    for command, old_endpoint, reply in results:
        assert reply.status in (200, 409), reply
        if reply.status == 409:
            if old_endpoint:
                # The old API names the state `fail` leads to as the Go service did.
                state = {"fail": "failed"}.get(reply.text.rsplit(" ", 1)[1], "")
                state = state or reply.text.rsplit(" ", 1)[1]
            else:
                state = reply.json()["current_state"]
            assert state in TERMINAL and TARGET[command] != state
            continue
        if old_endpoint:
            assert reply.text == f"{job_id} -- {command}"
            continue
        answer = reply.json()
        assert answer["job"]["state"] == TARGET[command]
        if answer["changed"]:
            entry = by_version[answer["job"]["version"]]
            assert (entry["command"], entry["to"]) == (command, answer["job"]["state"])
            changed_versions.append(entry["version"])
    assert len(changed_versions) == len(set(changed_versions)) <= job["version"] - 1
