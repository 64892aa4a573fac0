"""The client library and the ``karmchari`` command on the operators'
endpoints of issue 20 (GET /v1/workers, the worker and name_prefix filters,
POST /v1/jobs/{id}/rerun, bulk delete of ended jobs), against a live
``karmchari serve`` on real Redis."""

from __future__ import annotations

import json
import uuid

import pytest

from karmchari_client import ApiError, Client
from karmchari_client.cli import EXIT_REFUSED
from tests.test_cli import karmchari, ok


def ended_job(api: Client, **fields) -> str:
    job_id = api.register("export", **fields)["id"]
    api.command(job_id, "kill")
    return job_id


# -- rerun -------------------------------------------------------------------------

def test_rerun_registers_a_job_like_the_ended_one(api):
    old = ended_job(api, name="nightly", labels={"team": "a"}, heartbeat_timeout=45)
    new = api.rerun(old)
    assert (new["type"], new["name"], new["labels"], new["heartbeat_timeout"]) == (
        "export", "nightly", {"team": "a"}, 45)
    assert (new["state"], new["retry_of"]) == ("start", old)
    assert api.get(old)["reruns"] == [new["id"]]


def test_rerun_with_the_same_key_reruns_once(api):
    old = ended_job(api)
    first = api.rerun(old, idempotency_key="rerun-once")
    assert api.rerun(old, idempotency_key="rerun-once")["id"] == first["id"]
    assert api.get(old)["reruns"] == [first["id"]]


def test_rerun_of_a_job_that_has_not_ended_is_refused(api):
    running = api.register("export")["id"]
    with pytest.raises(ApiError) as refused:
        api.rerun(running)
    assert (refused.value.status, refused.value.code) == (409, "not_ended")


def test_karmchari_rerun(url, api):
    old = ended_job(api, name="nightly")
    new_id = ok(karmchari("rerun", old, url=url)).strip()
    assert api.get(new_id)["retry_of"] == old
    again = json.loads(ok(karmchari("rerun", old, "-o", "json", url=url)))
    assert (again["retry_of"], again["name"]) == (old, "nightly")
    shown = ok(karmchari("get", old, url=url))
    assert new_id in shown and "reruns:" in shown
    running = api.register("export")["id"]
    refused = karmchari("rerun", running, url=url)
    assert refused.returncode == EXIT_REFUSED
    assert "has not ended" in refused.stderr


# -- workers and the listing's filters ------------------------------------------------

def test_workers_lists_each_worker_with_its_jobs(url, api):
    jobs = [api.register("export")["id"] for _ in range(2)]
    for job_id in jobs:
        api.heartbeat(job_id, worker="host-7", progress=10)
    api.command(jobs[1], "pause")
    found = {w["name"]: w for w in api.workers()["workers"]}
    assert found["host-7"]["jobs"]["start"] == 1
    assert found["host-7"]["jobs"]["pause"] == 1
    assert found["host-7"]["jobs_url"] == "/v1/jobs?worker=host-7"

    listed = json.loads(ok(karmchari("workers", "-o", "json", url=url)))
    assert "host-7" in {w["name"] for w in listed["workers"]}
    table = ok(karmchari("workers", url=url))
    assert table.splitlines()[0].split() == ["NAME", "LAST", "HEARTBEAT", "STALLED", "JOBS"]
    assert "host-7" in table


def test_list_by_worker_and_by_name_prefix(url, api):
    mine = api.register("export", name="nightly-export")["id"]
    other = api.register("export", name="weekly-export")["id"]
    api.heartbeat(mine, worker="host-7")
    api.heartbeat(other, worker="host-8")
    assert [j["id"] for j in api.list(worker="host-7")["jobs"]] == [mine]
    assert [j["id"] for j in api.list(name_prefix="nightly")["jobs"]] == [mine]

    by_worker = json.loads(ok(karmchari("list", "--worker", "host-8", "-o", "json", url=url)))
    assert [j["id"] for j in by_worker["jobs"]] == [other]
    by_name = ok(karmchari("list", "--name-prefix", "weekly", url=url))
    assert other in by_name and mine not in by_name


# -- bulk delete ----------------------------------------------------------------------

def test_delete_jobs_deletes_ended_jobs_and_refuses_the_others(api):
    ended, running = ended_job(api), api.register("export")["id"]
    answer = api.delete_jobs(ids=[ended, running])
    assert (answer["deleted"], answer["refused_ids"]) == (1, [running])
    with pytest.raises(ApiError) as gone:
        api.get(ended)
    assert gone.value.status == 404


def test_delete_jobs_by_a_filter_that_may_match_running_jobs_is_refused(api):
    with pytest.raises(ApiError) as refused:
        api.delete_jobs(where={"type": "export"})
    assert (refused.value.status, refused.value.code) == (400, "filter_not_final")
    assert api.delete_jobs(where={"state": "kill"})["deleted"] >= 0


# -- waiting for a worker ---------------------------------------------------------------

def test_list_waiting_shows_the_jobs_no_worker_has_picked_up(url, api):
    tag = uuid.uuid4().hex[:8]
    waiting = api.register("export", name=f"waiting-{tag}")["id"]
    picked = api.register("export", name=f"picked-{tag}")["id"]
    api.heartbeat(picked, worker="host-7")
    ids = {j["id"] for j in api.list(state="start", started=False, stalled=False,
                                     name_prefix=f"waiting-{tag}")["jobs"]}
    assert ids == {waiting}
    shown = ok(karmchari("list", "--waiting", "--limit", "500", url=url))
    assert waiting in shown and picked not in shown


def test_kill_the_jobs_no_worker_picked_up(url, api):
    tag = uuid.uuid4().hex[:8]
    waiting = api.register("export", labels={"run": tag})["id"]
    picked = api.register("export", labels={"run": tag})["id"]
    api.heartbeat(picked, worker="host-7")
    ok(karmchari("kill", "--state", "start", "--not-started", "--label", f"run:{tag}", "-y",
                 url=url))
    assert (api.get(waiting)["state"], api.get(picked)["state"]) == ("kill", "start")
