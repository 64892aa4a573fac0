"""The JSON API v1 through the whole Falcon app on a real Redis (SPEC §4)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.store import JobFilter
from tests.bulk_load import register_many
from tests.live import LiveClient

PROBLEM = "application/problem+json"


@pytest.fixture
def client(live_client):
    """Every test here runs through each real HTTP server."""
    return live_client


def register(client, body=None, headers=None):
    return client.simulate_post("/v1/jobs", json=body or {"type": "teams"},
                                headers=headers or {})


def new_job(client, **fields) -> dict:
    response = register(client, {"type": "teams", **fields})
    assert response.status_code == 201, response.text
    return response.json


def command(client, job_id, name, headers=None, **extra):
    return client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                json={"command": name, **extra}, headers=headers or {})


def assert_problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str) and body["title"]
    assert body["type"] == "about:blank"
    return body


def keys_of(redis_client, prefix):
    """The prefix's keys but the upgrades done (a service writes them at start)."""
    return {key for key in redis_client.scan_iter(match=f"{{{prefix}:*", count=1000)
            if not key.endswith(":migrations")}


# -- registration --------------------------------------------------------------


def test_register_answers_201_with_location_etag_and_the_job(client):
    response = register(client, {"type": "export", "name": "nightly export",
                                 "labels": {"team": "data", "env": "prod"},
                                 "heartbeat_timeout": 30})
    assert response.status_code == 201
    job = response.json
    assert re.fullmatch(r"[0-9a-f]{32}", job["id"])
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["etag"] == '"1"'
    assert response.headers["content-type"].startswith("application/json")
    assert job["type"] == "export"
    assert job["state"] == "start"
    assert job["version"] == 1
    assert job["name"] == "nightly export"
    assert job["labels"] == {"team": "data", "env": "prod"}
    assert job["heartbeat_timeout"] == 30
    assert job["created_at"] == job["updated_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", job["created_at"])
    assert job["ended_at"] is None and job["heartbeat_at"] is None
    assert job["stalled"] is False
    assert job["observed_state"] == ""


def test_register_defaults(client):
    job = new_job(client)
    assert (job["name"], job["labels"], job["heartbeat_timeout"]) == ("", {}, 0)


@pytest.mark.parametrize("body", [
    {"type": "teams", "colour": "red"},
    {"type": "teams", "labels": {"k": "v"}, "extra": 1},
    {"type": "nope"},
    {},
    {"type": 5},
    {"type": "teams", "heartbeat_timeout": -1},
    {"type": "teams", "heartbeat_timeout": 1.5},
    {"type": "teams", "labels": {"bad key": "v"}},
    {"type": "teams", "labels": {"a:b": "v"}},
    {"type": "teams", "labels": {"k": 1}},
    {"type": "teams", "labels": {f"k{i}": "v" for i in range(17)}},
    {"type": "teams", "name": "x" * 257},
    [{"type": "teams"}],
])
def test_invalid_registration_is_400_and_writes_nothing(client, redis_client, key_prefix, body):
    response = client.simulate_post("/v1/jobs", body=json.dumps(body),
                                    headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400, "invalid_request")
    assert problem["detail"]
    assert keys_of(redis_client, key_prefix) == set()


@pytest.mark.parametrize("raw, code", [
    (b"{", "malformed_json"),
    (b'{"type": "teams", "type": "teams"}', "malformed_json"),
    (b'{"type": "teams", "heartbeat_timeout": NaN}', "malformed_json"),
    (b'{"type": "teams", "name": "\\ud800"}', "invalid_encoding"),
    (b'{"type": "teams", "name": "\xff"}', "invalid_encoding"),
    (b"", "empty_body"),
    (b"[" * 50 + b"]" * 50, "malformed_json"),
])
def test_malformed_json_is_400(client, redis_client, key_prefix, raw, code):
    response = client.simulate_post("/v1/jobs", body=raw,
                                    headers={"Content-Type": "application/json"})
    assert_problem(response, 400, code)
    assert keys_of(redis_client, key_prefix) == set()


def test_wrong_content_type_is_415(client):
    response = client.simulate_post("/v1/jobs", body="type=teams",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415, "unsupported_media_type")


def test_body_too_large_is_413(client, config):
    big = json.dumps({"type": "teams", "name": "x" * config.max_body_bytes})
    response = client.simulate_post("/v1/jobs", body=big,
                                    headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "body_too_large")


# -- Idempotency-Key -------------------------------------------------------------


def test_same_idempotency_key_gives_one_job(client, redis_client, key_prefix):
    body = {"type": "upload", "labels": {"batch": "7"}}
    first = register(client, body, {"Idempotency-Key": "upload-7"})
    second = register(client, body, {"Idempotency-Key": "upload-7"})
    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json["id"] == first.json["id"]
    assert second.headers["location"] == first.headers["location"]
    listed = client.simulate_get("/v1/jobs").json["jobs"]
    assert [job["id"] for job in listed] == [first.json["id"]]


def test_concurrent_registrations_with_one_key_give_one_job(client):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(
            lambda _: register(client, {"type": "teams"}, {"Idempotency-Key": "race"}),
            range(16)))
    assert sorted(r.status_code for r in responses) == [200] * 15 + [201]
    assert len({r.json["id"] for r in responses}) == 1
    assert len(client.simulate_get("/v1/jobs").json["jobs"]) == 1


def test_idempotency_replay_answers_the_current_job(client):
    first = register(client, headers={"Idempotency-Key": "k1"}).json
    command(client, first["id"], "pause")
    replay = register(client, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 200
    assert (replay.json["id"], replay.json["state"]) == (first["id"], "pause")
    assert replay.headers["etag"] == '"2"'


def test_idempotency_key_order_of_members_does_not_matter(client):
    first = register(client, {"type": "teams", "name": "a", "labels": {"x": "1", "y": "2"}},
                     {"Idempotency-Key": "same"})
    second = register(client, {"labels": {"y": "2", "x": "1"}, "name": "a", "type": "teams"},
                      {"Idempotency-Key": "same"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json["id"] == second.json["id"]


def test_idempotency_key_with_another_body_is_422(client):
    first = register(client, {"type": "teams"}, {"Idempotency-Key": "k2"})
    response = register(client, {"type": "export"}, {"Idempotency-Key": "k2"})
    assert_problem(response, 422, "idempotency_key_reused")
    listed = client.simulate_get("/v1/jobs").json["jobs"]
    assert [job["id"] for job in listed] == [first.json["id"]]


def test_different_idempotency_keys_give_different_jobs(client):
    a = register(client, headers={"Idempotency-Key": "a"}).json
    b = register(client, headers={"Idempotency-Key": "b"}).json
    assert a["id"] != b["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "with space", "caf\u00e9"])
def test_invalid_idempotency_key_is_400(client, redis_client, key_prefix, key):
    response = register(client, headers={"Idempotency-Key": key})
    assert_problem(response, 400, "invalid_idempotency_key")
    assert keys_of(redis_client, key_prefix) == set()


def test_idempotency_replay_of_a_deleted_job_is_404(client):
    job = register(client, headers={"Idempotency-Key": "gone"}).json
    command(client, job["id"], "kill")
    client.simulate_delete(f"/v1/jobs/{job['id']}")
    problem = assert_problem(register(client, headers={"Idempotency-Key": "gone"}), 404,
                             "job_not_found")
    assert "Idempotency-Key" in problem["detail"]


def test_idempotency_record_expires(client, redis_client, key_prefix):
    register(client, headers={"Idempotency-Key": "ttl"})
    records = [k for k in keys_of(redis_client, key_prefix) if ":idem:" in k]
    assert len(records) == 1
    assert 0 < redis_client.ttl(records[0]) <= 24 * 3600


# -- reading: ETag and If-None-Match ------------------------------------------


def test_get_has_etag_and_if_none_match_gives_304(client):
    job = new_job(client)
    response = client.simulate_get(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json == job
    response = client.simulate_get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"1"'})
    assert response.status_code == 304
    assert response.text == ""
    assert response.headers["etag"] == '"1"'
    command(client, job["id"], "pause")
    response = client.simulate_get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": '"1"'})
    assert response.status_code == 200
    assert (response.json["state"], response.headers["etag"]) == ("pause", '"2"')


def test_if_none_match_with_a_list_and_star(client):
    job = new_job(client)
    url = f"/v1/jobs/{job['id']}"
    assert client.simulate_get(url, headers={"If-None-Match": '"7", "1"'}).status_code == 304
    assert client.simulate_get(url, headers={"If-None-Match": "*"}).status_code == 304
    assert client.simulate_get(url, headers={"If-None-Match": '"7"'}).status_code == 200


@pytest.mark.parametrize("params", [
    {"version": "-1"}, {"version": ""}, {"version": str(2**53 + 1)}, {"wait": ""},
    {"wait": "-1"}, {"wait": "1_0"}, {"wait": "inf"}, {"wait": "nan"}, {"wait": "61"},
    {"wait": "1", "version": "x"},
])
def test_invalid_read_parameters_are_400(client, params):
    job = new_job(client)
    assert_problem(client.simulate_get(f"/v1/jobs/{job['id']}", params=params), 400,
                   "invalid_parameter")


def test_label_value_may_hold_a_colon(client):
    job = new_job(client, labels={"url": "http://x"})
    assert [j["id"] for j in listing(client, label="url:http://x")["jobs"]] == [job["id"]]


@pytest.mark.parametrize("job_id", ["0" * 32, "A" * 32, "abc", "0" * 33, "g" * 32])
def test_unknown_or_malformed_id_is_job_not_found(client, job_id):
    assert_problem(client.simulate_get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_problem(client.simulate_get(f"/v1/jobs/{job_id}/history"), 404, "job_not_found")
    assert_problem(command(client, job_id, "pause"), 404, "job_not_found")
    assert_problem(client.simulate_delete(f"/v1/jobs/{job_id}"), 404, "job_not_found")


# -- commands ------------------------------------------------------------------


def test_command_answers_the_job_and_whether_it_changed(client):
    job = new_job(client)
    response = command(client, job["id"], "pause", reason="maintenance")
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.json["changed"] is True
    assert (response.json["job"]["state"], response.json["job"]["version"]) == ("pause", 2)
    again = command(client, job["id"], "pause")
    assert again.status_code == 200
    assert again.json["changed"] is False
    assert again.json["job"]["version"] == 2


def test_resume_kill_and_terminal_fields(client):
    job = new_job(client)
    command(client, job["id"], "pause")
    resumed = command(client, job["id"], "start").json["job"]
    assert (resumed["state"], resumed["version"], resumed["ended_at"]) == ("start", 3, None)
    killed = command(client, job["id"], "kill").json["job"]
    assert (killed["state"], killed["version"]) == ("kill", 4)
    assert killed["ended_at"] == killed["updated_at"]


def test_fail_leads_to_failed(client):
    job = new_job(client)
    assert command(client, job["id"], "fail").json["job"]["state"] == "failed"


@pytest.mark.parametrize("terminal_command, state", [("kill", "kill"), ("done", "done"),
                                                     ("fail", "failed")])
def test_refused_transition_is_409_with_current_state(client, terminal_command, state):
    job = new_job(client)
    command(client, job["id"], terminal_command)
    for refused in {"start", "pause", "kill", "done", "fail"} - {terminal_command}:
        problem = assert_problem(command(client, job["id"], refused), 409,
                                 "illegal_transition")
        assert problem["current_state"] == state
        assert problem["version"] == 2
    same = command(client, job["id"], terminal_command)
    assert (same.status_code, same.json["changed"]) == (200, False)
    assert client.simulate_get(f"/v1/jobs/{job['id']}").json["version"] == 2


@pytest.mark.parametrize("body", [
    {"command": "explode"},
    {"command": "pause", "force": True},
    {},
    {"reason": "x"},
    {"command": "pause", "reason": 5},
    {"command": "pause", "reason": "x" * 1025},
])
def test_invalid_command_body_is_400_and_changes_nothing(client, body):
    job = new_job(client)
    response = client.simulate_post(f"/v1/jobs/{job['id']}/commands", json=body)
    assert_problem(response, 400, "invalid_request")
    after = client.simulate_get(f"/v1/jobs/{job['id']}").json
    assert (after["state"], after["version"]) == ("start", 1)


def test_command_for_unknown_job_creates_nothing(client, redis_client, key_prefix):
    before = keys_of(redis_client, key_prefix)
    assert_problem(command(client, "f" * 32, "pause"), 404, "job_not_found")
    assert keys_of(redis_client, key_prefix) == before


# -- If-Match ----------------------------------------------------------------------


@pytest.mark.parametrize("if_match", ['"1"', "1", "*"])
def test_if_match_with_current_version_applies(client, if_match):
    job = new_job(client)
    response = command(client, job["id"], "pause", {"If-Match": if_match})
    assert response.status_code == 200
    assert response.json["job"]["version"] == 2


def test_stale_if_match_is_412_and_changes_nothing(client):
    job = new_job(client)
    command(client, job["id"], "pause")
    history_before = client.simulate_get(f"/v1/jobs/{job['id']}/history").json
    problem = assert_problem(command(client, job["id"], "kill", {"If-Match": '"1"'}), 412,
                             "version_mismatch")
    assert (problem["current_state"], problem["version"]) == ("pause", 2)
    after = client.simulate_get(f"/v1/jobs/{job['id']}").json
    assert (after["state"], after["version"]) == ("pause", 2)
    assert client.simulate_get(f"/v1/jobs/{job['id']}/history").json == history_before


def test_stale_if_match_wins_over_a_repeated_command(client):
    job = new_job(client)
    command(client, job["id"], "pause")
    assert_problem(command(client, job["id"], "pause", {"If-Match": '"1"'}), 412,
                   "version_mismatch")


def test_weak_if_match_never_matches(client):
    # If-Match uses the strong comparison (RFC 9110 §13.1.1).
    job = new_job(client)
    assert_problem(command(client, job["id"], "pause", {"If-Match": 'W/"1"'}), 412,
                   "version_mismatch")
    assert client.simulate_get(f"/v1/jobs/{job['id']}").json["version"] == 1


@pytest.mark.parametrize("if_match", ['"abc"', '"1", "2"', '"-1"', '"' + '9' * 30 + '"'])
def test_malformed_if_match_is_400(client, if_match):
    job = new_job(client)
    assert_problem(command(client, job["id"], "pause", {"If-Match": if_match}), 400,
                   "invalid_if_match")
    assert client.simulate_get(f"/v1/jobs/{job['id']}").json["version"] == 1


# -- history -----------------------------------------------------------------------


def test_history_lists_every_accepted_change(client):
    job = new_job(client)
    command(client, job["id"], "pause", reason="disk full")
    command(client, job["id"], "pause")  # a no-op: no entry
    command(client, job["id"], "start")
    command(client, job["id"], "done", reason="finished")
    command(client, job["id"], "kill")  # refused: no entry
    response = client.simulate_get(f"/v1/jobs/{job['id']}/history")
    assert response.status_code == 200
    body = response.json
    assert body["id"] == job["id"]
    entries = body["entries"]
    assert [(e["version"], e["command"], e["from"], e["to"], e["reason"]) for e in entries] == [
        (1, "register", "", "start", ""),
        (2, "pause", "start", "pause", "disk full"),
        (3, "start", "pause", "start", ""),
        (4, "done", "start", "done", "finished"),
    ]
    for entry in entries:
        assert set(entry) == {"version", "at", "command", "from", "to", "actor", "reason"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["at"])
        assert entry["actor"] == ""  # no auth configured
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)


def test_history_is_capped(server, live_services, key_prefix):
    client = LiveClient(live_services(server, key_prefix=key_prefix, history_cap=3).url)
    job = new_job(client)
    for name in ("pause", "start", "pause", "start"):
        command(client, job["id"], name)
    entries = client.simulate_get(f"/v1/jobs/{job['id']}/history").json["entries"]
    assert [e["version"] for e in entries] == [3, 4, 5]


def test_history_records_the_actor(server, live_services, key_prefix):
    token = "alice-operator-secret-token"
    client = LiveClient(live_services(server, key_prefix=key_prefix,
                                      tokens=f"alice:operator:{token}").url)
    auth = {"Authorization": f"Bearer {token}"}
    job = register(client, headers=auth).json
    command(client, job["id"], "pause", auth)
    entries = client.simulate_get(f"/v1/jobs/{job['id']}/history", headers=auth).json["entries"]
    assert [e["actor"] for e in entries] == ["alice", "alice"]


# -- listing ---------------------------------------------------------------------


def listing(client, **params):
    response = client.simulate_get("/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return response.json


def test_list_is_newest_first_with_an_opaque_cursor(client):
    ids = [new_job(client)["id"] for _ in range(7)]
    first = listing(client, limit=3)
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:3]
    assert isinstance(first["next_cursor"], str)
    assert ids[4] not in first["next_cursor"]  # opaque: no id in clear
    second = listing(client, limit=3, cursor=first["next_cursor"])
    assert [j["id"] for j in second["jobs"]] == ids[::-1][3:6]
    third = listing(client, limit=3, cursor=second["next_cursor"])
    assert [j["id"] for j in third["jobs"]] == ids[::-1][6:]
    assert third["next_cursor"] is None


def test_list_walk_sees_every_job_once_across_shards(client):
    ids = {new_job(client)["id"] for _ in range(40)}
    seen, cursor = [], None
    while True:
        page = listing(client, limit=7, **({"cursor": cursor} if cursor else {}))
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 40
    assert set(seen) == ids


def test_list_default_page_is_50(client, store):
    for _ in range(55):
        store.register("teams")
    page = listing(client)
    assert len(page["jobs"]) == 50
    assert page["next_cursor"] is not None


def test_list_filters(client):
    upload = new_job(client, type="upload", labels={"team": "a", "env": "prod"})
    export = new_job(client, type="export", labels={"team": "b"})
    paused = new_job(client, type="teams", labels={"team": "a", "env": "dev"})
    command(client, paused["id"], "pause")
    killed = new_job(client, type="upload")
    command(client, killed["id"], "kill")

    def ids(**params):
        return [j["id"] for j in listing(client, **params)["jobs"]]

    assert ids(state="pause") == [paused["id"]]
    assert ids(state="kill") == [killed["id"]]
    assert ids(state="start") == [export["id"], upload["id"]]
    assert ids(type="upload") == [killed["id"], upload["id"]]
    assert ids(type="upload", state="start") == [upload["id"]]
    assert ids(label="team:a") == [paused["id"], upload["id"]]
    assert ids(label=["team:a", "env:prod"]) == [upload["id"]]
    assert ids(label="team:a", state="pause") == [paused["id"]]
    assert ids(label="team:c") == []
    assert ids(type="teams", label="team:b") == []


def test_list_stalled(client, store, redis_client, key_prefix):
    stalled = new_job(client, heartbeat_timeout=1)
    fresh = new_job(client, heartbeat_timeout=3600)
    new_job(client)  # no timeout: never stalled
    # Move the deadline and the start into the past, as if a second had passed.
    shard = store.keys.for_job(stalled["id"])
    redis_client.zadd(shard.deadlines, {stalled["id"]: 1})
    redis_client.hset(shard.job(stalled["id"]), "updated_at", 1000)
    page = listing(client, stalled="true")
    assert [j["id"] for j in page["jobs"]] == [stalled["id"]]
    assert page["jobs"][0]["stalled"] is True
    not_stalled = [j["id"] for j in listing(client, stalled="false")["jobs"]]
    assert stalled["id"] not in not_stalled and fresh["id"] in not_stalled
    assert len(not_stalled) == 2


def test_list_shows_observed_state_and_heartbeat(client):
    job = new_job(client, heartbeat_timeout=60)
    client.simulate_post(f"/v1/jobs/{job['id']}/heartbeat",
                         json={"worker": "host-1", "progress": 42.5, "message": "halfway",
                               "observed_state": "start"})
    listed = listing(client)["jobs"][0]
    assert (listed["worker"], listed["progress"], listed["message"],
            listed["observed_state"]) == ("host-1", 42.5, "halfway", "start")
    assert listed["heartbeat_at"] is not None
    assert listed["stalled"] is False


@pytest.mark.parametrize("params, code", [
    ({"limit": "0"}, "invalid_parameter"),
    ({"limit": "501"}, "invalid_parameter"),
    ({"limit": "-1"}, "invalid_parameter"),
    ({"limit": "ten"}, "invalid_parameter"),
    ({"limit": "\u00b2"}, "invalid_parameter"),  # a digit to str.isdigit, not to int()
    ({"limit": "\u0661"}, "invalid_parameter"),  # ARABIC-INDIC DIGIT ONE
    ({"state": "sleeping"}, "invalid_parameter"),
    ({"type": "nope"}, "invalid_parameter"),
    ({"label": "nocolon"}, "invalid_parameter"),
    ({"label": "bad key:v"}, "invalid_parameter"),
    ({"stalled": "yes"}, "invalid_parameter"),
    ({"state": ["start", "pause"]}, "duplicate_parameter"),
    ({"cursor": "garbage!"}, "invalid_cursor"),
    ({"cursor": "MTIzLmFiYw"}, "invalid_cursor"),  # "123.abc": not an id
    ({"cursor": ""}, "invalid_cursor"),
    ({"state": ""}, "invalid_parameter"),
    ({"type": ""}, "invalid_parameter"),
    ({"stalled": ""}, "invalid_parameter"),
    ({"limit": ""}, "invalid_parameter"),
    ({"label": ""}, "invalid_parameter"),
    ({"label": "k:" + "v" * 257}, "invalid_parameter"),
])
def test_invalid_list_parameters_are_400(client, params, code):
    assert_problem(client.simulate_get("/v1/jobs", params=params), 400, code)


def test_too_many_label_filters_is_400(client, config):
    labels = [f"k{i}:v" for i in range(config.max_labels + 1)]
    assert_problem(client.simulate_get("/v1/jobs", params={"label": labels}), 400,
                   "invalid_parameter")


def test_list_limit_bounds_are_accepted(client):
    new_job(client)
    assert len(listing(client, limit=1)["jobs"]) == 1
    assert len(listing(client, limit=500)["jobs"]) == 1


def test_list_of_nothing(client):
    assert listing(client) == {"jobs": [], "next_cursor": None}


# -- delete ----------------------------------------------------------------------


def test_delete_a_running_job_is_409(client):
    job = new_job(client)
    problem = assert_problem(client.simulate_delete(f"/v1/jobs/{job['id']}"), 409,
                             "illegal_transition")
    assert problem["current_state"] == "start"
    assert client.simulate_get(f"/v1/jobs/{job['id']}").status_code == 200


def test_delete_a_paused_job_is_409(client):
    job = new_job(client)
    command(client, job["id"], "pause")
    assert_problem(client.simulate_delete(f"/v1/jobs/{job['id']}"), 409, "illegal_transition")


def test_delete_removes_the_job_and_every_index_entry(client, redis_client, key_prefix):
    keep = new_job(client, labels={"team": "a"})
    job = new_job(client, type="upload", labels={"team": "a", "env": "prod"},
                  heartbeat_timeout=60)
    command(client, job["id"], "done")
    response = client.simulate_delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 204
    assert response.text == ""
    assert_problem(client.simulate_get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    assert_problem(client.simulate_get(f"/v1/jobs/{job['id']}/history"), 404, "job_not_found")
    assert_problem(client.simulate_delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    for key in keys_of(redis_client, key_prefix):
        assert job["id"] not in key
        kind = redis_client.type(key)
        if kind == "zset":
            assert redis_client.zscore(key, job["id"]) is None, key
    assert [j["id"] for j in listing(client, label="team:a")["jobs"]] == [keep["id"]]
    assert listing(client, state="done")["jobs"] == []


def test_deleted_job_cannot_be_commanded(client, redis_client, key_prefix):
    job = new_job(client)
    command(client, job["id"], "kill")
    client.simulate_delete(f"/v1/jobs/{job['id']}")
    before = keys_of(redis_client, key_prefix)
    assert_problem(command(client, job["id"], "kill"), 404, "job_not_found")
    assert keys_of(redis_client, key_prefix) == before


# -- heartbeats answer the state ------------------------------------------------


def test_heartbeat_answers_the_state_the_worker_must_be_in(client):
    job = new_job(client)
    command(client, job["id"], "pause")
    response = client.simulate_post(f"/v1/jobs/{job['id']}/heartbeat",
                                    json={"observed_state": "start", "progress": 10})
    assert response.status_code == 200
    assert response.json == {"id": job["id"], "found": True, "state": "pause", "version": 2,
                             "observed_state": "start"}
    shown = client.simulate_get(f"/v1/jobs/{job['id']}").json
    assert (shown["state"], shown["observed_state"], shown["version"]) == ("pause", "start", 2)


def test_heartbeat_with_unknown_field_is_400(client):
    job = new_job(client)
    response = client.simulate_post(f"/v1/jobs/{job['id']}/heartbeat", json={"cpu": 1})
    assert_problem(response, 400, "invalid_request")


def test_batch_heartbeats(client):
    a, b = new_job(client), new_job(client)
    missing = "0" * 32
    response = client.simulate_post("/v1/heartbeats", json={"heartbeats": [
        {"id": a["id"], "progress": 1}, {"id": missing}, {"id": b["id"], "worker": "w"}]})
    assert response.status_code == 200
    results = response.json["results"]
    assert [(r["id"], r["found"]) for r in results] == [(a["id"], True), (missing, False),
                                                          (b["id"], True)]
    duplicate = client.simulate_post("/v1/heartbeats", json={"heartbeats": [
        {"id": a["id"]}, {"id": a["id"]}]})
    assert_problem(duplicate, 400, "duplicate_job")


# -- the problem document -------------------------------------------------------


def test_problem_document_has_every_member(client):
    response = client.simulate_get("/v1/jobs/" + "0" * 32)
    body = assert_problem(response, 404, "job_not_found")
    assert set(body) >= {"type", "title", "status", "detail", "code"}


def test_unknown_route_and_method_are_problems(client):
    assert client.simulate_get("/v1/nothing").headers["content-type"] == PROBLEM
    response = client.simulate_put("/v1/jobs")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM


def test_list_walk_with_tied_scores_misses_nothing(client, store, redis_client):
    # Deadlines have millisecond resolution: many stalled jobs can share one.
    ids = {store.register("teams", heartbeat_timeout=1)[0].id for _ in range(40)}
    for job_id in ids:
        shard = store.keys.for_job(job_id)
        redis_client.zadd(shard.deadlines, {job_id: 5000})
        redis_client.hset(shard.job(job_id), "updated_at", 1000)
    seen, cursor = [], None
    while True:
        page = listing(client, stalled="true", limit=1, **({"cursor": cursor} if cursor else {}))
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)


def test_long_poll_accepts_the_largest_version(client):
    job = new_job(client)
    response = client.simulate_get(f"/v1/jobs/{job['id']}",
                                   params={"wait": "0", "version": str(2**53)})
    assert (response.status_code, response.json["version"]) == (200, 1)


def test_jobs_registered_in_bulk_are_whole_jobs(client, store):
    ids = register_many(store, "upload", 30, labels={"batch": "b1"}, heartbeat_timeout=60)
    assert len(set(ids)) == 30
    listed = [j["id"] for j in listing(client, label="batch:b1", limit=100)["jobs"]]
    assert sorted(listed) == sorted(ids)
    history = client.simulate_get(f"/v1/jobs/{ids[0]}/history").json["entries"]
    assert [(e["command"], e["to"]) for e in history] == [("register", "start")]


def test_a_combined_filter_reads_its_smallest_index(client, store):
    register_many(store, "teams", 200)
    paused = store.register("teams")[0]
    store.apply_command(paused.id, "pause")
    page = store.list_jobs(JobFilter(state="pause", type="teams"), limit=50)
    assert ([job.id for job in page.jobs], page.scanned) == ([paused.id], 1)
    assert [j["id"] for j in listing(client, state="pause", type="teams")["jobs"]] == [paused.id]
