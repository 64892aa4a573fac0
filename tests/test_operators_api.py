"""Issue 20, the server side, against a real Redis: workers, search by name
prefix, run again, durations, bulk delete; over each real HTTP server where
the API is concerned, on the store where its bounds are."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from falcon import testing

from app.app import create_app
from app.config import Config
from app.errors import JobNotFound, NotEnded
from app.store import HeartbeatReport, JobFilter, JobStore, connect, lexical
from app.store import workers as workers_module
from app.store.keys import KeySchema
from tests.store_check import assert_lexical_indexes
from tests.waiting import eventually

PROBLEM = "application/problem+json"


@pytest.fixture
def client(live_client):
    return live_client


def new_job(client, **fields) -> dict:
    response = client.simulate_post("/v1/jobs", json={"type": "teams", **fields})
    assert response.status_code == 201, response.text
    return response.json


def command(client, job_id: str, name: str) -> dict:
    response = client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": name})
    assert response.status_code == 200, response.text
    return response.json["job"]


def heartbeat(client, job_id: str, **fields) -> None:
    response = client.simulate_post(f"/v1/jobs/{job_id}/heartbeat", json=fields)
    assert response.status_code == 200, response.text


def get(client, path: str, query: str = "") -> dict:
    response = client.simulate_get(path, query_string=query)
    assert response.status_code == 200, response.text
    return response.json


def list_all(client, query: str, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = get(client, "/v1/jobs", f"{query}&limit={limit}"
                   + (f"&cursor={cursor}" if cursor else ""))
        ids += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("paging does not end")


def workers_of(client, limit: int = 50) -> list[dict]:
    found: list[dict] = []
    cursor = None
    for _ in range(100):
        page = get(client, "/v1/workers", f"limit={limit}" + (f"&cursor={cursor}" if cursor
                                                                else ""))
        found += page["workers"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("paging does not end")


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json["code"] == code
    return response.json


# -- durations (item 7) ------------------------------------------------------------


def test_started_at_is_the_first_heartbeat_and_finished_at_the_final_state(client):
    job = new_job(client, name="n")
    assert (job["started_at"], job["finished_at"], job["retry_of"], job["reruns"]) == \
        (None, None, None, [])
    heartbeat(client, job["id"], worker="w", progress=1)
    first = get(client, f"/v1/jobs/{job['id']}")
    assert first["started_at"] == first["heartbeat_at"]
    time.sleep(0.01)
    heartbeat(client, job["id"], progress=2)
    again = get(client, f"/v1/jobs/{job['id']}")
    assert again["started_at"] == first["started_at"] != again["heartbeat_at"]
    assert again["finished_at"] is None
    done = command(client, job["id"], "done")
    assert done["finished_at"] == done["ended_at"] is not None
    assert done["started_at"] == first["started_at"]


def test_stats_give_run_times_of_the_last_hour_by_type(client, store):
    before = get(client, "/v1/stats").get("run_times", {})
    assert before == {}
    for _ in range(3):
        job = new_job(client)
        heartbeat(client, job["id"], worker="w")
        time.sleep(0.05)
        command(client, job["id"], "done")
    never = client.simulate_post("/v1/jobs", json={"type": "export"}).json
    time.sleep(0.02)
    command(client, never["id"], "fail")
    command(client, new_job(client)["id"], "pause")  # not final: not counted
    run_times = get(client, "/v1/stats")["run_times"]
    assert set(run_times) == {"teams", "export"}
    assert run_times["teams"]["count"] == 3
    assert run_times["export"]["count"] == 1
    # Within a bucket (19 % wide) of the 50 ms the jobs ran.
    assert 0.04 <= run_times["teams"]["median_seconds"] <= 0.08
    assert run_times["teams"]["median_seconds"] <= run_times["teams"]["p95_seconds"] < 1
    assert 0.015 <= run_times["export"]["median_seconds"] < 1  # from its registration


# -- workers (item 4) --------------------------------------------------------------


def test_workers_list_names_their_jobs_by_state_and_link_to_them(client):
    jobs = [new_job(client, heartbeat_timeout=60) for _ in range(6)]
    for job in jobs[:4]:
        heartbeat(client, job["id"], worker="host-7", progress=5)
    answer = client.simulate_post("/v1/heartbeats", json={"heartbeats": [
        {"id": jobs[4]["id"], "worker": "host 8/é", "progress": 1},
        {"id": jobs[5]["id"], "worker": "host 8/é"}]})
    assert answer.status_code == 200, answer.text
    command(client, jobs[0]["id"], "pause")
    command(client, jobs[1]["id"], "done")
    command(client, jobs[2]["id"], "kill")

    workers = {w["name"]: w for w in workers_of(client)}
    assert set(workers) == {"host-7", "host 8/é"}
    assert workers["host-7"]["jobs"] == {"running": 1, "paused": 1, "killed": 1, "done": 1,
                                         "failed": 0}
    assert workers["host 8/é"]["jobs"]["running"] == 2
    assert workers["host-7"]["stalled"] == 0
    assert workers["host 8/é"]["jobs_url"] == "/v1/jobs?worker=" + quote("host 8/é", safe="")
    assert workers["host 8/é"]["last_heartbeat_at"] >= workers["host-7"]["last_heartbeat_at"]

    listed = list_all(client, "worker=" + quote("host-7", safe=""), 2)
    assert listed == [job["id"] for job in reversed(jobs[:4])]  # newest first, paged by 2
    assert list_all(client, "worker=host-7&state=done", 50) == [jobs[1]["id"]]
    assert list_all(client, "worker=nobody", 50) == []


def test_a_job_moves_to_the_worker_that_heartbeats_it_last(client):
    job = new_job(client)
    heartbeat(client, job["id"], worker="first")
    heartbeat(client, job["id"], worker="second")
    heartbeat(client, job["id"], progress=3)  # no worker sent: it stays
    workers = {w["name"]: w for w in workers_of(client)}
    assert workers["first"]["jobs"]["running"] == 0
    assert workers["second"]["jobs"]["running"] == 1
    assert list_all(client, "worker=first", 10) == []
    assert list_all(client, "worker=second", 10) == [job["id"]]


def test_workers_count_their_stalled_jobs(client):
    job = new_job(client, heartbeat_timeout=1)
    heartbeat(client, job["id"], worker="slow")
    time.sleep(1.3)
    [slow] = [w for w in workers_of(client) if w["name"] == "slow"]
    assert (slow["jobs"]["running"], slow["stalled"]) == (1, 1)


def test_stalled_counts_past_the_read_limit_say_they_are_lower_bounds(client, store,
                                                                    monkeypatch):
    """At most STALLED_READ stalled jobs per shard are read: with more, each
    count is a lower bound and the page says so (60 jobs in 16 shards: some
    shard holds at least 4, more than a limit of 3)."""
    jobs = [new_job(client, heartbeat_timeout=1) for _ in range(60)]
    store.heartbeats([HeartbeatReport(job["id"], worker="slow") for job in jobs])
    eventually(lambda: client.simulate_get("/v1/stats").json["stalled"] == 60)
    body = client.simulate_get("/v1/workers").json
    assert body["stalled_exact"] is True
    assert [w["stalled"] for w in body["workers"] if w["name"] == "slow"] == [60]
    # The store in this process, with a smaller limit (the service's is 1,000).
    monkeypatch.setattr(workers_module, "STALLED_READ", 3)
    [slow] = [w for w in store.workers()[0] if w.name == "slow"]
    assert slow.stalled_exact is False
    assert 3 <= slow.stalled < 60


def test_workers_page_without_repeats_when_they_span_shards(client, store):
    # 48 jobs spread over the shards, each named by one of 5 workers.
    jobs = [new_job(client) for _ in range(48)]
    store.heartbeats([HeartbeatReport(job["id"], worker=f"w{i % 5}")
                      for i, job in enumerate(jobs)])
    time.sleep(0.002)  # a later millisecond: a tie would list w4 first (by name)
    heartbeat(client, jobs[7]["id"], worker="w2")  # w2 is now the newest
    for limit in (1, 2, 3, 50):
        names = [w["name"] for w in workers_of(client, limit)]
        assert names[0] == "w2"
        assert sorted(names) == [f"w{i}" for i in range(5)], (limit, names)
    assert sum(w["jobs"]["running"] for w in workers_of(client)) == 48


def test_silent_workers_drop_off_in_the_retention_sweep(store):
    job, _ = store.register("teams")
    store.heartbeat(HeartbeatReport(job.id, worker="gone"))
    assert [w.name for w in store.workers()[0]] == ["gone"]
    keep = JobStore(store.client, retention_seconds=3600, keys=store.keys)
    keep.sweep_expired()
    assert [w.name for w in store.workers()[0]] == ["gone"]
    due = JobStore(store.client, retention_seconds=0, keys=store.keys)
    time.sleep(0.01)
    due.sweep_expired()
    assert store.workers()[0] == []
    # The job keeps its worker; a new heartbeat lists the worker again.
    assert store.get(job.id).worker == "gone"
    store.heartbeat(HeartbeatReport(job.id, worker="gone"))
    assert [w.name for w in store.workers()[0]] == ["gone"]


# -- search by name (item 5) -------------------------------------------------------


def test_name_prefix_lists_the_matching_jobs_newest_first(client):
    made = [new_job(client, name=name)["id"]
            for name in ("report-b", "report-a", "reporter", "other", "report-b", "rep")]
    assert list_all(client, "name_prefix=report", 2) == [made[4], made[2], made[1], made[0]]
    assert list_all(client, "name_prefix=report-b", 50) == [made[4], made[0]]
    assert list_all(client, "name_prefix=rep", 50) == \
        [made[5], made[4], made[2], made[1], made[0]]
    assert list_all(client, "name_prefix=zzz", 50) == []
    command(client, made[1], "done")
    assert list_all(client, "name_prefix=report&state=done", 50) == [made[1]]


def test_name_prefix_with_unicode_and_bytes_beyond_ascii(client):
    ids = [new_job(client, name=name)["id"] for name in ("été 1", "été 2", "éte")]
    assert list_all(client, "name_prefix=" + quote("été"), 50) == [ids[1], ids[0]]
    assert list_all(client, "name_prefix=" + quote("é"), 50) == [ids[2], ids[1], ids[0]]


def test_a_broad_prefix_walks_the_time_index_with_the_same_order(store, monkeypatch):
    ids = [store.register("teams", name=f"bulk-{i:03d}")[0].id for i in range(30)]
    store.register("teams", name="other")
    exact = store.list_jobs(JobFilter(name_prefix="bulk-"), limit=100)
    monkeypatch.setattr(lexical, "MAX_PREFIX_ENTRIES", 10)
    walked, cursor = [], None
    while True:
        page = store.list_jobs(JobFilter(name_prefix="bulk-"), limit=7, cursor=cursor)
        walked += [job.id for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [job.id for job in exact.jobs] == walked == list(reversed(ids))


def test_unknown_query_parameters_on_the_listing_are_refused(client):
    new_job(client)
    for query, name in (("stat=done", "stat"), ("state=done&nme_prefix=x", "nme_prefix"),
                        ("workr=", "workr")):
        body = assert_problem(client.simulate_get("/v1/jobs", query_string=query), 400,
                              "invalid_parameter")
        assert body["detail"] == f"unknown query parameter: {name}"


def test_delete_and_rerun_keep_the_lexical_indexes_in_step(store):
    named, _ = store.register("teams", name="keep-me")
    gone, _ = store.register("teams", name="keep-me-not")
    store.heartbeat(HeartbeatReport(named.id, worker="w"))
    store.heartbeat(HeartbeatReport(gone.id, worker="w"))
    store.apply_command(gone.id, "done")
    again, _, _ = store.rerun(gone.id)
    store.delete(gone.id)
    ids = [named.id, again.id]
    assert_lexical_indexes(store.client, store.keys, ids)
    assert [j.id for j in store.list_jobs(JobFilter(name_prefix="keep-me")).jobs] == \
        [again.id, named.id]
    assert [j.id for j in store.list_jobs(JobFilter(worker="w")).jobs] == [named.id]


# -- run again (item 6) ------------------------------------------------------------


def test_rerun_registers_a_like_job_that_points_back(client):
    old = new_job(client, name="nightly", labels={"team": "data"}, heartbeat_timeout=30)
    heartbeat(client, old["id"], worker="w", progress=50)
    command(client, old["id"], "fail")
    response = client.simulate_post(f"/v1/jobs/{old['id']}/rerun")
    assert response.status_code == 201, response.text
    new = response.json
    assert response.headers["location"] == f"/v1/jobs/{new['id']}"
    assert new["id"][0] == old["id"][0] and new["id"] != old["id"]
    assert (new["type"], new["name"], new["labels"], new["heartbeat_timeout"]) == \
        ("teams", "nightly", {"team": "data"}, 30)
    assert (new["state"], new["version"], new["retry_of"], new["reruns"]) == \
        ("start", 1, old["id"], [])
    assert (new["worker"], new["progress"], new["started_at"]) == ("", None, None)
    assert get(client, f"/v1/jobs/{new['id']}") == new
    second = client.simulate_post(f"/v1/jobs/{old['id']}/rerun").json
    assert get(client, f"/v1/jobs/{old['id']}")["reruns"] == [new["id"], second["id"]]
    history = get(client, f"/v1/jobs/{new['id']}/history")["entries"]
    assert [(e["command"], e["to"]) for e in history] == [("rerun", "start")]
    assert list_all(client, "label=team:data", 50) == [second["id"], new["id"], old["id"]]


def test_rerun_refuses_a_job_that_has_not_ended_and_writes_nothing(client, redis_client,
                                                                   key_prefix):
    running = new_job(client)
    paused = new_job(client)
    command(client, paused["id"], "pause")
    keys = sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*"))
    for job, state in ((running, "start"), (paused, "pause")):
        body = assert_problem(client.simulate_post(f"/v1/jobs/{job['id']}/rerun"), 409,
                              "not_ended")
        assert body["current_state"] == state
    assert_problem(client.simulate_post(f"/v1/jobs/{'0' * 32}/rerun"), 404, "job_not_found")
    assert_problem(client.simulate_post("/v1/jobs/nothex/rerun"), 404, "job_not_found")
    assert sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*")) == keys


def test_rerun_honours_the_idempotency_key_per_old_job(client):
    first, other = new_job(client), new_job(client)
    command(client, first["id"], "done")
    command(client, other["id"], "kill")
    key = {"Idempotency-Key": "again-1"}
    made = client.simulate_post(f"/v1/jobs/{first['id']}/rerun", headers=key)
    replay = client.simulate_post(f"/v1/jobs/{first['id']}/rerun", headers=key)
    assert (made.status_code, replay.status_code) == (201, 200)
    assert replay.json["id"] == made.json["id"]
    elsewhere = client.simulate_post(f"/v1/jobs/{other['id']}/rerun", headers=key)
    assert elsewhere.status_code == 201 and elsewhere.json["retry_of"] == other["id"]
    assert get(client, f"/v1/jobs/{first['id']}")["reruns"] == [made.json["id"]]


def test_rerun_is_owned_by_the_caller(store):
    old, _ = store.register("teams", owner="worker-a")
    store.apply_command(old.id, "done")
    new, created, _ = store.rerun(old.id, actor="worker-b", owner="worker-b")
    assert created and new.owner == "worker-b" and store.get(new.id).owner == "worker-b"
    with pytest.raises(NotEnded):
        store.rerun(new.id)
    with pytest.raises(JobNotFound):
        store.rerun("f" * 32)


# -- bulk delete (item 8) ------------------------------------------------------------


def bulk(client, body: dict):
    return client.simulate_post("/v1/jobs/commands", json=body)


def test_bulk_delete_by_ids_deletes_ended_jobs_and_names_the_others(client):
    done, killed, running = new_job(client), new_job(client), new_job(client)
    command(client, done["id"], "done")
    command(client, killed["id"], "kill")
    missing = "0" * 32
    response = bulk(client, {"command": "delete",
                             "ids": [done["id"], running["id"], killed["id"], missing]})
    assert response.status_code == 200, response.text
    answer = response.json
    assert answer["deleted"] == 2
    assert answer["refused_ids"] == [running["id"], missing]
    assert (answer["not_found"], answer["refused"]) == (1, 1)
    for job in (done, killed):
        assert client.simulate_get(f"/v1/jobs/{job['id']}").status_code == 404
    assert get(client, f"/v1/jobs/{running['id']}")["state"] == "start"


def test_bulk_delete_by_a_final_state_filter(client):
    jobs = [new_job(client, labels={"k": "a" if i % 2 else "b"}) for i in range(8)]
    for job in jobs[:6]:
        command(client, job["id"], "done")
    command(client, jobs[6]["id"], "fail")
    answer = bulk(client, {"command": "delete",
                           "where": {"state": "done", "label": ["k:a"]}}).json
    assert (answer["deleted"], answer["next_cursor"]) == (3, None)
    left = set(list_all(client, "state=done", 50))
    assert left == {jobs[i]["id"] for i in (0, 2, 4)}
    assert bulk(client, {"command": "delete", "where": {"state": "done"}}).json["deleted"] == 3
    assert list_all(client, "type=teams", 50) == [jobs[7]["id"], jobs[6]["id"]]


def test_bulk_delete_by_a_filter_that_could_match_running_jobs_is_refused(
        client, redis_client, key_prefix):
    job = new_job(client)
    command(client, job["id"], "done")
    keys = sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*"))
    for where in ({}, {"type": "teams"}, {"state": "start"}, {"stalled": False}):
        body = assert_problem(bulk(client, {"command": "delete", "where": where}), 400,
                              "filter_not_final")
        assert "kill, done or failed" in body["detail"]
    assert sorted(redis_client.scan_iter(match=f"{{{key_prefix}:*")) == keys


# -- Redis trouble -------------------------------------------------------------------


def test_new_endpoints_answer_503_with_retry_after_when_redis_is_away():
    config = Config(redis_url="redis://127.0.0.1:1", key_prefix="gone", threads=2)
    client = connect(config.redis_url, socket_timeout=0.5)
    store = JobStore(client, keys=KeySchema("gone"))
    app = testing.TestClient(create_app(config, store))
    job_id = "a" * 32
    for method, path, query, body in (
            ("GET", "/v1/workers", "", None),
            ("GET", "/v1/jobs", "worker=w", None),
            ("GET", "/v1/jobs", "name_prefix=n", None),
            ("POST", f"/v1/jobs/{job_id}/rerun", "", None),
            ("GET", "/v1/stats", "", None),
            ("POST", "/v1/jobs/commands", "", {"command": "delete", "ids": [job_id]}),
            ("POST", "/v1/jobs/commands", "", {"command": "delete",
                                               "where": {"state": "done"}})):
        response = app.simulate_request(method, path, query_string=query, json=body)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["retry-after"].isdigit()
        assert response.json["code"] == "store_unavailable"


def test_workers_with_long_names_page_with_their_cursor(client):
    names = ["é" * 256, "x" * 256]
    for name in names:
        heartbeat(client, new_job(client)["id"], worker=name)
    assert sorted(w["name"] for w in workers_of(client, limit=1)) == sorted(names)


def test_worker_listing_pages_newest_first_across_shards(store):
    # text_entries merges the shards' raw members: their order must be the
    # entries' (score, id) order, page after page.
    jobs = [store.register("teams")[0] for _ in range(40)]
    store.heartbeats([HeartbeatReport(job.id, worker="w") for job in jobs])
    expected = [j.id for j in store.list_jobs(JobFilter(), limit=100).jobs]
    for limit in (1, 3, 7, 50):
        seen, cursor = [], None
        while True:
            page = store.list_jobs(JobFilter(worker="w"), limit=limit, cursor=cursor)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected, limit
