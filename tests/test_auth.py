"""Bearer tokens and roles (SPEC §7) on every route and method: who gets 401,
403 or an answer, with tokens from KARMCHARI_TOKENS and from a tokens file;
and the refusal to listen beyond loopback without tokens."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from falcon import inspect

from app.app import build_store, create_app
from app.auth import TokenConfigError, TokenRegistry
from app.config import Config
from app.store import JobStore
from karmchari_client import ApiError, Client, JobKilled, Worker
from tests.live import SERVERS as LIVE_SERVERS
from tests.live import LiveClient
from tests.servers import ROOT, ServiceProcess, karmchari_command
from tests.waiting import eventually

TOKENS = {  # role: (name, token)
    "admin": ("ada", "tok-admin-5d1e-8c2a40"),
    "operator": ("otto", "tok-operator-77a0-19fe"),
    "worker": ("wim", "tok-worker-c3b9-5a7d1e"),
    "reader": ("rea", "tok-reader-0f42-b6e390"),
}
ROLES = tuple(TOKENS)
# A second worker, to touch the first one's jobs.
OTHER_WORKER = ("wendy", "tok-worker-2-e0d4c7a9")
# SPEC §7, written out here rather than read from app.auth, so the code is checked against it.
# On a job with no owner (registered without auth, or by an operator or admin):
ALLOWED = {
    "read": {"admin", "operator", "worker", "reader"},
    "register": {"admin", "operator", "worker"},
    "command": {"admin", "operator"},
    "finish": {"admin", "operator"},  # done and fail
    "heartbeat": {"admin"},
    "delete": {"admin"},
}
# On a job its worker registered: that worker may heartbeat and finish it too.
ALLOWED_ON_OWN_JOB = {**ALLOWED, "finish": {"admin", "operator", "worker"},
                      "heartbeat": {"admin", "worker"}}
OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json"}
# The dashboard's static files and the redirect to them: no data, open too.
DASHBOARD_ROUTES = {"/", "/ui", "/ui/{name}"}
FORM = "application/x-www-form-urlencoded"


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_env(*roles: str) -> str:
    return ",".join(f"{TOKENS[r][0]}:{r}:{TOKENS[r][1]}" for r in roles)


OTHER_WORKER_ENV = f"{OTHER_WORKER[0]}:worker:{OTHER_WORKER[1]}"


def tokens_file_text(*roles: str) -> str:
    lines = ["# name role sha256-of-token", ""]
    lines += [f"{TOKENS[r][0]} {r} {sha256_hex(TOKENS[r][1])}" for r in roles]
    return "\r\n".join(lines) + "\n"


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role][1]}"}


# -- one call per route, method and permission ----------------------------------

def new_job(store: JobStore, command: str | None = None, owner: str = "") -> str:
    job_id = store.register("teams", owner=owner)[0].id
    if command:
        store.apply_command(job_id, command)
    return job_id


@dataclass(frozen=True)
class Call:
    label: str
    permission: str
    # Prepares what the call needs (a job in the right state, owned by the
    # given worker name or by none) and returns method, path and falcon
    # simulate_request keyword arguments.
    prepare: Callable[..., tuple[str, str, dict]]
    success: int = 200


def _form(**values: str) -> dict:
    return {"body": "&".join(f"{k}={v}" for k, v in values.items()),
            "headers": {"Content-Type": FORM}}


def _v1(command: str, state: str | None = None, **extra: str):
    return lambda s, o="": ("POST", f"/v1/jobs/{new_job(s, state, o)}/commands",
                            {"json": {"command": command, **extra}})


def _old(command: str, state: str | None = None):
    return lambda s, o="": ("POST", "/jobState", _form(id=new_job(s, state, o), command=command))


CALLS = [
    Call("POST /registerJob", "register",
         lambda s, o="": ("POST", "/registerJob", _form(type="teams"))),
    Call("GET /jobState", "read",
         lambda s, o="": ("GET", "/jobState", {"query_string": f"id={new_job(s, owner=o)}"})),
    Call("POST /jobState pause", "command", _old("pause")),
    Call("POST /jobState start (resume)", "command", _old("start", "pause")),
    Call("POST /jobState kill", "command", _old("kill")),
    Call("POST /jobState done", "finish", _old("done")),
    Call("POST /jobState fail", "finish", _old("fail")),
    Call("POST /v1/jobs", "register",
         lambda s, o="": ("POST", "/v1/jobs", {"json": {"type": "teams"}}), 201),
    Call("GET /v1/jobs", "read", lambda s, o="": ("GET", "/v1/jobs", {})),
    Call("GET /v1/jobs/{id}", "read",
         lambda s, o="": ("GET", f"/v1/jobs/{new_job(s, owner=o)}", {})),
    Call("GET /v1/jobs/{id} long-poll", "read",
         lambda s, o="": ("GET", f"/v1/jobs/{new_job(s, owner=o)}",
                          {"query_string": "wait=0&version=0"})),
    Call("DELETE /v1/jobs/{id}", "delete",
         lambda s, o="": ("DELETE", f"/v1/jobs/{new_job(s, 'kill', o)}", {}), 204),
    Call("POST /v1/jobs/{id}/commands pause", "command", _v1("pause")),
    Call("POST /v1/jobs/{id}/commands start", "command", _v1("start", "pause")),
    Call("POST /v1/jobs/{id}/commands kill", "command", _v1("kill")),
    Call("POST /v1/jobs/{id}/commands done", "finish", _v1("done")),
    Call("POST /v1/jobs/{id}/commands fail", "finish", _v1("fail", reason="disk full")),
    Call("GET /v1/jobs/{id}/history", "read",
         lambda s, o="": ("GET", f"/v1/jobs/{new_job(s, owner=o)}/history", {})),
    Call("POST /v1/jobs/{id}/heartbeat", "heartbeat",
         lambda s, o="": ("POST", f"/v1/jobs/{new_job(s, owner=o)}/heartbeat",
                          {"json": {"progress": 10}})),
    Call("POST /v1/heartbeats", "heartbeat",
         lambda s, o="": ("POST", "/v1/heartbeats",
                          {"json": {"heartbeats": [{"id": new_job(s, owner=o)}]}})),
    Call("POST /v1/watch", "read",
         lambda s, o="": ("POST", "/v1/watch",
                          {"json": {"jobs": {new_job(s, owner=o): 0}, "wait": 0}})),
    Call("GET /metrics", "read", lambda s, o="": ("GET", "/metrics", {})),
    Call("GET /v1/whoami", "read", lambda s, o="": ("GET", "/v1/whoami", {})),
    Call("POST /v1/jobs/commands pause by ids", "command",
         lambda s, o="": ("POST", "/v1/jobs/commands",
                          {"json": {"command": "pause", "ids": [new_job(s, owner=o)]}})),
    # Even done and fail: a worker reports on its own job, never on a set of them.
    Call("POST /v1/jobs/commands done by filter", "command",
         lambda s, o="": ("POST", "/v1/jobs/commands",
                          {"json": {"command": "done", "where": {"state": "start"}}})),
    Call("GET /v1/stats", "read", lambda s, o="": ("GET", "/v1/stats", {})),
    Call("POST /v1/jobs/{id}/rerun", "register",
         lambda s, o="": ("POST", f"/v1/jobs/{new_job(s, 'done', o)}/rerun", {}), 201),
    Call("GET /v1/workers", "read", lambda s, o="": ("GET", "/v1/workers", {})),
    Call("POST /v1/jobs/commands delete by ids", "delete",
         lambda s, o="": ("POST", "/v1/jobs/commands",
                          {"json": {"command": "delete", "ids": [new_job(s, "kill", o)]}})),
    Call("POST /v1/jobs/commands delete by filter", "delete",
         lambda s, o="": ("POST", "/v1/jobs/commands",
                          {"json": {"command": "delete", "where": {"state": "done"}}})),
]
# The calls whose outcome for a worker depends on who owns the job.
OWNED_CALLS = [c for c in CALLS if c.permission in ("finish", "heartbeat")]

UNAUTHENTICATED = {
    "no header": None,
    "empty header": "",
    "scheme only": "Bearer",
    "scheme and blanks": "Bearer   ",
    "Basic": "Basic " + base64.b64encode(b"ada:tok-admin-5d1e").decode(),
    "token without a scheme": TOKENS["admin"][1],
    "another scheme": "Token " + TOKENS["admin"][1],
    "scheme glued to the token": "Bearer" + TOKENS["admin"][1],
    "unknown token": "Bearer tok-nobody",
    "token with a suffix": "Bearer " + TOKENS["admin"][1] + "x",
    "token prefix": "Bearer " + TOKENS["admin"][1][:-1],
    "token in upper case": "Bearer " + TOKENS["admin"][1].upper(),
    "two tokens": f"Bearer {TOKENS['admin'][1]} {TOKENS['admin'][1]}",
    "the stored hash as token": "Bearer " + sha256_hex(TOKENS["worker"][1]),
    "token name as token": "Bearer " + TOKENS["admin"][0],
    "non-ASCII token": "Bearer t\u00f6k",
    "very long token": "Bearer " + "x" * 8000,
}


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def admin_redis(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def module_prefix(admin_redis):
    prefix = "a" + uuid.uuid4().hex[:12]
    yield prefix
    for key in admin_redis.scan_iter(match=f"{{{prefix}:*", count=1000):
        admin_redis.delete(key)


@pytest.fixture(autouse=True)
def empty_prefix(admin_redis, module_prefix):
    """Each test starts from no keys, so comparing all of them stays cheap."""
    yield
    for key in admin_redis.scan_iter(match=f"{{{module_prefix}:*", count=1000):
        admin_redis.delete(key)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(tokens_file_text("worker", "reader"))
    return path


AUTH_ENV = {"KARMCHARI_TOKENS": tokens_env("admin", "operator") + "," + OTHER_WORKER_ENV}


@pytest.fixture(scope="module", params=LIVE_SERVERS)
def auth_app(request, redis_url, module_prefix, tokens_file):
    """``karmchari serve`` on each server, over real HTTP, with admin and operator
    tokens from KARMCHARI_TOKENS and worker and reader tokens (as hashes) from a
    tokens file; and a store on its keys."""
    service = ServiceProcess("--server", request.param, "--redis-url", redis_url,
                             "--threads", "4", "--tokens-file", str(tokens_file),
                             env={**AUTH_ENV, "KARMCHARI_KEY_PREFIX": module_prefix}).start()
    config = Config(redis_url=redis_url, key_prefix=module_prefix)
    store = build_store(config, redis_url)
    yield LiveClient(service.url), store
    store.client.close()
    service.stop()
    service.log_path.unlink(missing_ok=True)


def key_contents(client: redis.Redis, prefix: str) -> dict:
    read = {"hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True), "string": client.get,
            "set": client.smembers}
    return {key: read[client.type(key)](key)
            for key in client.scan_iter(match=f"{{{prefix}:*", count=1000)}


def call(client: LiveClient, store: JobStore, spec: Call, authorization: str | None):
    method, path, kwargs = spec.prepare(store)
    headers = dict(kwargs.pop("headers", {}))
    if authorization is not None:
        headers["Authorization"] = authorization
    return client.simulate_request(method, path, headers=headers, **kwargs)


# -- the matrix -----------------------------------------------------------------

@pytest.mark.parametrize("spec", CALLS, ids=lambda c: c.label)
@pytest.mark.parametrize("credentials", UNAUTHENTICATED, ids=str)
def test_unauthenticated_is_401_and_changes_nothing(auth_app, admin_redis, module_prefix, spec,
                                                    credentials):
    client, store = auth_app
    method, path, kwargs = spec.prepare(store)
    before = key_contents(admin_redis, module_prefix)
    headers = dict(kwargs.pop("headers", {}))
    if UNAUTHENTICATED[credentials] is not None:
        headers["Authorization"] = UNAUTHENTICATED[credentials]
    response = client.simulate_request(method, path, headers=headers, **kwargs)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert key_contents(admin_redis, module_prefix) == before


@pytest.mark.parametrize("spec", CALLS, ids=lambda c: c.label)
def test_every_unauthenticated_case_gets_the_same_answer(auth_app, spec):
    """Nothing in a 401 tells a missing token from a wrong or malformed one."""
    client, store = auth_app
    answers = {(r.headers["content-type"], r.headers["www-authenticate"], r.text)
               for r in (call(client, store, spec, a) for a in UNAUTHENTICATED.values())}
    assert len(answers) == 1, answers
    content_type, _, body = answers.pop()
    if spec.label.split()[1] in ("/registerJob", "/jobState"):
        assert (content_type, body) == ("text/plain; charset=utf-8",
                                        "A valid bearer token is required.")
    else:
        assert content_type == "application/problem+json"
        assert '"code": "unauthorized"' in body


def batch_results(response) -> list | None:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json.get("results")
    return None


def assert_refused(response, code: str, before: dict, after: dict) -> None:
    """403 with ``code``, nothing written; in a batch, 200 with the item refused."""
    assert after == before
    if batch_results(response) is not None:
        assert response.status_code == 200, response.text
        [item] = batch_results(response)
        assert (item["status"], item["code"]) == (403, code), item
        return
    assert response.status_code == 403, response.text
    if response.headers["content-type"].startswith("text/plain"):  # the old API
        assert response.text.startswith("role" if code == "forbidden" else "worker")
    else:
        assert response.json["code"] == code


@pytest.mark.parametrize("spec", CALLS, ids=lambda c: c.label)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_allowed_or_forbidden(auth_app, admin_redis, module_prefix, spec, role):
    """On jobs with no owner: only operators and admins end them."""
    client, store = auth_app
    admin = admin_redis
    method, path, kwargs = spec.prepare(store)
    before = key_contents(admin, module_prefix)
    headers = {**kwargs.pop("headers", {}), **bearer(role)}
    response = client.simulate_request(method, path, headers=headers, **kwargs)
    if role in ALLOWED[spec.permission]:
        assert response.status_code == spec.success, response.text
        assert "code" not in (batch_results(response) or [{}])[0]
    elif role == "worker" and spec in OWNED_CALLS:  # allowed on its own jobs only
        assert_refused(response, "not_owner", before, key_contents(admin, module_prefix))
    else:
        assert_refused(response, "forbidden", before, key_contents(admin, module_prefix))
        assert f"role {role!r} may not " in response.text


@pytest.mark.parametrize("spec", OWNED_CALLS, ids=lambda c: c.label)
@pytest.mark.parametrize("role", [*ROLES, "other worker"])
def test_on_a_job_a_worker_owns(auth_app, admin_redis, module_prefix, spec, role):
    """Its worker may heartbeat and finish it; another worker gets not_owner and
    changes nothing; operators and admins keep their rights."""
    client, store = auth_app
    method, path, kwargs = spec.prepare(store, TOKENS["worker"][0])
    before = key_contents(admin_redis, module_prefix)
    token = OTHER_WORKER[1] if role == "other worker" else TOKENS[role][1]
    headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token}"}
    response = client.simulate_request(method, path, headers=headers, **kwargs)
    if role in ALLOWED_ON_OWN_JOB[spec.permission]:
        assert response.status_code == spec.success, response.text
        assert "code" not in (batch_results(response) or [{}])[0]
        assert key_contents(admin_redis, module_prefix) != before
    elif role == "other worker":
        assert_refused(response, "not_owner", before, key_contents(admin_redis, module_prefix))
        assert "'wendy' may heartbeat and finish only the jobs it registered" in response.text
    else:
        assert_refused(response, "forbidden", before, key_contents(admin_redis, module_prefix))


def test_the_matrix_covers_every_route_and_method(redis_url, module_prefix):
    config = Config(redis_url=redis_url, key_prefix=module_prefix)
    covered = {(c.label.split()[0], c.label.split()[1]) for c in CALLS}
    for route in inspect.inspect_routes(create_app(config, build_store(config, redis_url))):
        path = route.path.replace("{job_id}", "{id}")
        for method in route.methods:
            if method.internal or path in OPEN_ROUTES | DASHBOARD_ROUTES:
                continue
            assert (method.method, path) in covered, f"{method.method} {path} is not tested"


@pytest.mark.parametrize("path", sorted(OPEN_ROUTES))
def test_health_and_the_api_document_stay_open(auth_app, path):
    client, _ = auth_app
    for authorization in (None, "Bearer tok-nobody", "Basic eA=="):
        headers = {} if authorization is None else {"Authorization": authorization}
        assert client.simulate_get(path, headers=headers).status_code == 200


@pytest.mark.parametrize("parameter", ["access_token", "token"])
def test_tokens_in_the_query_string_are_refused(auth_app, parameter):
    client, store = auth_app
    job_id = new_job(store)
    for path in (f"/v1/jobs/{job_id}", "/jobState", "/metrics"):
        query = f"{parameter}={TOKENS['admin'][1]}&id={job_id}"
        for headers in ({}, bearer("admin")):
            response = client.simulate_get(path, query_string=query, headers=headers)
            assert response.status_code == 400, response.text
            assert "header" in response.text


def test_the_token_name_is_the_actor_in_history(auth_app):
    client, store = auth_app
    response = client.simulate_post("/v1/jobs", json={"type": "upload"},
                                    headers=bearer("worker"))
    job_id = response.json["id"]
    client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "pause"},
                         headers=bearer("admin"))
    client.simulate_post("/jobState", body=f"id={job_id}&command=start",
                         headers={"Content-Type": FORM, **bearer("operator")})
    client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "done"},
                         headers=bearer("worker"))
    history = client.simulate_get(f"/v1/jobs/{job_id}/history", headers=bearer("reader")).json
    assert [(e["to"], e["actor"]) for e in history["entries"]] == [
        ("start", "wim"), ("pause", "ada"), ("start", "otto"), ("done", "wim")]
    legacy = client.simulate_post("/registerJob", body="type=teams",
                                  headers={"Content-Type": FORM, **bearer("admin")})
    legacy_id = legacy.text.rsplit(" ", 1)[1]
    assert store.history(legacy_id)[0]["actor"] == "ada"


# -- job ownership --------------------------------------------------------------

def test_a_job_records_the_worker_that_registered_it(auth_app):
    """A worker token owns what it registers (old and v1 API); operators and
    admins register jobs with no owner."""
    client, store = auth_app
    owners = {}
    for role in ROLES[:3]:
        job = client.simulate_post("/v1/jobs", json={"type": "teams"}, headers=bearer(role))
        legacy = client.simulate_post("/registerJob", body="type=teams",
                                      headers={"Content-Type": FORM, **bearer(role)})
        legacy_id = legacy.text.rsplit(" ", 1)[1]
        read = client.simulate_get(f"/v1/jobs/{legacy_id}", headers=bearer("reader")).json
        owners[role] = (job.json["owner"], read["owner"], store.get(legacy_id).owner)
    assert owners == {"admin": (None, None, ""), "operator": (None, None, ""),
                      "worker": ("wim", "wim", "wim")}


def test_an_idempotency_key_is_the_tokens_own(auth_app):
    """One Idempotency-Key sent with another token registers that token's own job:
    nobody reads or replays another's registration (old and v1 API)."""
    client, _ = auth_app
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    other = {"Authorization": f"Bearer {OTHER_WORKER[1]}"}
    first = client.simulate_post("/v1/jobs", json={"type": "teams"},
                                 headers={**bearer("worker"), **key})
    assert first.status_code == 201 and first.json["owner"] == "wim"
    seen = {first.json["id"]}
    for headers in (other, bearer("operator"), bearer("admin")):
        answer = client.simulate_post("/v1/jobs", json={"type": "teams"},
                                      headers={**headers, **key})
        assert answer.status_code == 201 and answer.json["id"] not in seen
        seen.add(answer.json["id"])
        legacy = client.simulate_post("/registerJob", body="type=teams",
                                      headers={"Content-Type": FORM, **headers, **key})
        assert legacy.status_code == 200 and legacy.text.rsplit(" ", 1)[1] == answer.json["id"]
    again = client.simulate_post("/v1/jobs", json={"type": "teams"},
                                 headers={**bearer("worker"), **key})
    assert (again.status_code, again.json["id"]) == (200, first.json["id"])


def test_a_batch_heartbeat_is_refused_item_by_item(auth_app, admin_redis, module_prefix):
    client, store = auth_app
    mine, theirs, unowned = (new_job(store, owner="wim"), new_job(store, owner="wendy"),
                             new_job(store))
    unknown = "f" * 32
    before = {job_id: store.get(job_id) for job_id in (theirs, unowned)}
    response = client.simulate_post("/v1/heartbeats", headers=bearer("worker"), json={
        "heartbeats": [{"id": job_id, "progress": 50, "worker": "w1"}
                       for job_id in (theirs, mine, unknown, unowned)]})
    assert response.status_code == 200
    theirs_answer, mine_answer, unknown_answer, unowned_answer = response.json["results"]
    assert (mine_answer["found"], mine_answer["state"]) == (True, "start")
    assert unknown_answer == {"id": unknown, "found": False}
    for answer in (theirs_answer, unowned_answer):
        assert (answer["status"], answer["code"]) == (403, "not_owner")
        assert "state" not in answer
    assert store.get(mine).progress == 50
    assert {job_id: store.get(job_id) for job_id in before} == before


def test_a_worker_cannot_revive_anothers_stalled_job(auth_app):
    """The attack of issue 10: a heartbeat on a stalled job of another worker."""
    client, store = auth_app
    job_id = store.register("teams", heartbeat_timeout=1, owner="wendy")[0].id
    store.client.hset(store.keys.for_job(job_id).job(job_id), "updated_at", 1)  # long ago
    assert client.simulate_get(f"/v1/jobs/{job_id}", headers=bearer("worker")).json["stalled"]
    response = client.simulate_post(f"/v1/jobs/{job_id}/heartbeat", headers=bearer("worker"),
                                    json={"worker": "impostor", "progress": 99})
    assert response.status_code == 403
    assert response.json["code"] == "not_owner"
    job = client.simulate_get(f"/v1/jobs/{job_id}", headers=bearer("reader")).json
    assert (job["stalled"], job["worker"], job["progress"]) == (True, "", None)


@pytest.mark.parametrize("role,command,text", [
    ("reader", "pause", "role 'reader' may not command this job"),
    ("reader", "done", "role 'reader' may not command this job"),
    ("worker", "pause", "role 'worker' may not send pause to a job"),
    ("worker", "kill", "role 'worker' may not send kill to a job"),
    ("operator", None, "role 'operator' may not delete jobs"),
    ("reader", "register", "role 'reader' may not register jobs"),
    ("operator", "heartbeat", "role 'operator' may not send heartbeats"),
])
def test_a_refusal_names_the_action(auth_app, role, command, text):
    client, store = auth_app
    job_id = new_job(store, "kill" if command is None else None)
    if command is None:
        answers = [client.simulate_delete(f"/v1/jobs/{job_id}", headers=bearer(role))]
    elif command == "register":
        answers = [client.simulate_post("/v1/jobs", json={"type": "teams"},
                                        headers=bearer(role)),
                   client.simulate_post("/registerJob", body="type=teams",
                                        headers={"Content-Type": FORM, **bearer(role)})]
    elif command == "heartbeat":
        answers = [client.simulate_post(f"/v1/jobs/{job_id}/heartbeat", json={},
                                        headers=bearer(role))]
    else:
        answers = [client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                        json={"command": command}, headers=bearer(role)),
                   client.simulate_post("/jobState", body=f"id={job_id}&command={command}",
                                        headers={"Content-Type": FORM, **bearer(role)})]
    for answer in answers:
        assert answer.status_code == 403
        plain = answer.headers["content-type"].startswith("text/plain")
        assert (answer.text if plain else answer.json["detail"]) == text


@pytest.mark.parametrize("role", ["worker", "reader"])
def test_a_bulk_refusal_names_the_bulk_action(auth_app, admin_redis, module_prefix, role):
    client, store = auth_app
    job_id = new_job(store)
    before = key_contents(admin_redis, module_prefix)
    for body in ({"command": "done", "ids": [job_id]}, {"command": "kill", "where": {}}):
        answer = client.simulate_post("/v1/jobs/commands", json=body, headers=bearer(role))
        assert answer.status_code == 403
        assert answer.json["detail"] == f"role {role!r} may not send commands to many jobs"
    assert key_contents(admin_redis, module_prefix) == before


# -- the token registry ---------------------------------------------------------

def test_only_hashes_are_kept(tokens_file):
    registry = TokenRegistry.load(tokens_env("admin", "operator"), str(tokens_file))
    held = repr(vars(registry))
    for _, token in TOKENS.values():
        assert token not in held
    for role, (name, token) in TOKENS.items():
        principal = registry.authenticate(token)
        assert (principal.name, principal.role) == (name, role)
    assert registry.authenticate("") is None


def test_tokens_file_accepts_upper_case_hex_comments_and_blank_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"\n  # comment\n\tcarl  worker\t{sha256_hex('s3cret').upper()}  \n\n")
    assert TokenRegistry.load("", str(path)).authenticate("s3cret").name == "carl"


def test_a_token_may_contain_colons():
    registry = TokenRegistry.load("ci:operator:abc:def:ghi:jkl:mno")
    assert registry.authenticate("abc:def:ghi:jkl:mno").name == "ci"


@pytest.mark.parametrize("env_value", ["ada:admin", "ada::tok", ":admin:tok", "ada:root:tok",
                                       "ada:admin:"])
def test_malformed_token_entries_are_refused(env_value):
    with pytest.raises(TokenConfigError):
        TokenRegistry.load(env_value)


@pytest.mark.parametrize("line", ["ada admin", "ada admin abc", "ada admin " + "0" * 63,
                                  "ada superuser " + "0" * 64, "ada admin tok-admin-5d1e",
                                  "ada admin " + "0" * 64 + " extra"])
def test_malformed_tokens_file_lines_are_refused(tmp_path, line):
    path = tmp_path / "tokens"
    path.write_text(line + "\n")
    with pytest.raises(TokenConfigError):
        TokenRegistry.load("", str(path))


# -- karmchari serve: secure defaults ---------------------------------------------

def serve_and_wait(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``karmchari serve`` expecting it to refuse to start (on a port of
    its own should it not: never the default one, which a running service holds)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
    port = () if "--port" in args else ("--port", "0")
    return subprocess.run([*karmchari_command(), "serve", *port, *args], cwd=ROOT, timeout=60,
                          env={**clean, **(env or {})}, capture_output=True, text=True)


def test_no_tokens_and_a_public_host_refuses_to_start(redis_url):
    result = serve_and_wait("--host", "0.0.0.0", "--port", "0", "--redis-url", redis_url)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in result.stderr
    assert "--allow-unauthenticated" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_tokens_file_refuses_to_start_with_a_clear_message(redis_url, tmp_path):
    missing = tmp_path / "no-such-file"
    result = serve_and_wait("--tokens-file", str(missing), "--redis-url", redis_url)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    broken = tmp_path / "tokens"
    broken.write_text("ada admin not-a-hash\n")
    result = serve_and_wait("--tokens-file", str(broken), "--redis-url", redis_url)
    assert result.returncode == 2
    assert f"{broken}:1" in result.stderr
    assert "Traceback" not in result.stderr
    result = serve_and_wait("--redis-url", redis_url,
                            env={"KARMCHARI_TOKENS": "ada:root:" + TOKENS["admin"][1]})
    assert result.returncode == 2
    assert "unknown role 'root'" in result.stderr


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n   \n# ada admin x\n"],
                         ids=["empty", "a comment", "blanks and comments"])
def test_a_tokens_file_without_tokens_refuses_to_start(redis_url, tmp_path, text):
    """It would otherwise run without authentication, and say nothing."""
    path = tmp_path / "tokens"
    path.write_text(text)
    for env in ({}, {"KARMCHARI_TOKENS": tokens_env("admin")}):
        result = serve_and_wait("--tokens-file", str(path), "--redis-url", redis_url, env=env)
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"karmchari: cannot load tokens: {path}: no token in it (lines are 'name role "
            "sha256-hex'); the service would run without authentication")


@pytest.mark.parametrize("value", [",", " , ,"])
def test_a_tokens_variable_without_tokens_refuses_to_start(redis_url, value):
    result = serve_and_wait("--redis-url", redis_url, env={"KARMCHARI_TOKENS": value})
    assert result.returncode == 2
    assert "KARMCHARI_TOKENS is set but names no token" in result.stderr


def test_a_short_token_refuses_to_start_and_says_how_to_make_one(redis_url):
    result = serve_and_wait("--redis-url", redis_url,
                            env={"KARMCHARI_TOKENS": f"{tokens_env('admin')},ops:admin:short"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "karmchari: cannot load tokens: KARMCHARI_TOKENS: the token of 'ops' has 5 characters; "
        "at least 16 are needed. Make one with: "
        "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    made = subprocess.run(["python3", "-c", "import secrets; print(secrets.token_urlsafe(32))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert TokenRegistry.load(f"ops:admin:{made}").authenticate(made).name == "ops"


@pytest.mark.parametrize("token", ["x" * 15, "tok-admin-5d1e"])
def test_tokens_of_15_characters_or_fewer_are_refused(token):
    with pytest.raises(TokenConfigError, match="at least 16"):
        TokenRegistry.load(f"ada:admin:{token}")
    assert TokenRegistry.load(f"ada:admin:{token}xy").enabled


def _get(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_allow_unauthenticated_starts_on_a_public_host_with_a_warning(redis_url, key_prefix):
    service = ServiceProcess("--host", "0.0.0.0", "--allow-unauthenticated",
                             "--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix, "KARMCHARI_TOKENS": ""})
    service.start()
    try:
        assert _get(service.url + "/v1/jobs") == 200
        assert "WARNING" in service.log() and "WITHOUT authentication" in service.log()
    finally:
        service.stop()


def test_tokens_from_env_and_file_work_through_waitress(redis_url, key_prefix, tokens_file):
    service = ServiceProcess("--host", "0.0.0.0", "--redis-url", redis_url,
                             "--tokens-file", str(tokens_file),
                             env={"KARMCHARI_KEY_PREFIX": key_prefix,
                                  "KARMCHARI_TOKENS": tokens_env("admin")})
    service.start()
    try:
        assert "WITHOUT authentication" not in service.log()
        assert _get(service.url + "/v1/jobs") == 401
        assert _get(service.url + "/v1/jobs", bearer("admin")) == 200
        assert _get(service.url + "/v1/jobs", bearer("reader")) == 200
        assert _get(service.url + "/metrics", bearer("worker")) == 200
        assert _get(service.url + "/metrics") == 401
        assert _get(service.url + "/healthz") == 200
    finally:
        service.stop()


# -- the worker library with nothing but a worker token ----------------------------

# Each server `karmchari serve` can run on (--server), by its options.
SERVERS = {"waitress": ["--server", "waitress"], "granian": ["--server", "granian"]}


@pytest.fixture(params=list(SERVERS))
def secured_service(request, redis_url, key_prefix):
    service = ServiceProcess("--redis-url", redis_url, *SERVERS[request.param],
                             env={"KARMCHARI_KEY_PREFIX": key_prefix,
                                  "KARMCHARI_TOKENS": tokens_env("operator", "worker", "reader")
                                  + "," + OTHER_WORKER_ENV})
    service.start()
    yield service
    service.stop()


def test_the_worker_library_runs_on_a_worker_token(secured_service):
    """Register, heartbeats, pause, resume and done; and a kill, acknowledged;
    the worker holds only its worker token, an operator sends the commands."""
    url = secured_service.url
    operator = Client(url, token=TOKENS["operator"][1])
    other = Client(url, token=OTHER_WORKER[1])
    seen: list[str | None] = []
    worker = Worker.register("teams", url, token=TOKENS["worker"][1], heartbeat_timeout=3,
                             heartbeat_interval=0.2, on_state=seen.append)
    try:
        with worker:
            job_id = worker.job_id
            assert operator.get(job_id)["owner"] == "wim"
            worker.checkpoint(progress=10)
            eventually(lambda: operator.get(job_id)["progress"] == 10)
            with pytest.raises(ApiError) as refused:
                other.command(job_id, "fail")
            assert refused.value.code == "not_owner"

            operator.command(job_id, "pause")
            eventually(lambda: worker.state == "pause")
            paused = threading.Thread(target=worker.checkpoint, kwargs={"progress": 20})
            paused.start()
            eventually(lambda: operator.get(job_id)["observed_state"] == "pause")
            assert paused.is_alive()
            operator.command(job_id, "start")
            paused.join(30)
            assert not paused.is_alive()
            eventually(lambda: operator.get(job_id)["observed_state"] == "start")
        job = operator.get(job_id)
        assert (job["state"], job["progress"]) == ("done", 20)
        assert [(e["command"], e["actor"]) for e in operator.history(job_id)] == [
            ("register", "wim"), ("pause", "otto"), ("start", "otto"), ("done", "wim")]
        assert seen == ["pause", "start", "done"]

        killed = Worker.register("teams", url, token=TOKENS["worker"][1],
                                 heartbeat_interval=0.2)
        with pytest.raises(JobKilled), killed:
            operator.command(killed.job_id, "kill")
            eventually(lambda: killed.state == "kill")
            killed.checkpoint()
        job = operator.get(killed.job_id)
        assert (job["state"], job["observed_state"], job["owner"]) == ("kill", "kill", "wim")
    finally:
        operator.close()
        other.close()


# -- duplicates: refused, naming the lines -----------------------------------------

def test_one_name_with_two_roles_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"ada admin {sha256_hex('tok-admin-one-aaaa')}\n# rotated\n"
                    f"ada reader {sha256_hex('tok-reader-two-bbbb')}\n")
    with pytest.raises(TokenConfigError) as refused:
        TokenRegistry.load("", str(path))
    assert str(refused.value) == (f"{path}:3: 'ada' has role 'reader' here and 'admin' at "
                                  f"{path}:1; a name has one role")
    with pytest.raises(TokenConfigError, match="^KARMCHARI_TOKENS entry 2: 'ada' has role "
                                               "'worker' here and 'admin' at KARMCHARI_TOKENS "
                                               "entry 1"):
        TokenRegistry.load("ada:admin:tok-admin-one-aaaa,ada:worker:tok-worker-two-bbb")


def test_one_token_listed_twice_is_refused_naming_both_lines(tmp_path):
    token = "tok-shared-9a8b7c6d"
    with pytest.raises(TokenConfigError) as refused:
        TokenRegistry.load(f"ada:admin:{token},rea:reader:{token}")
    assert str(refused.value) == ("KARMCHARI_TOKENS entry 2: the same token as KARMCHARI_TOKENS "
                                  "entry 1; each token must be listed once")
    assert token not in str(refused.value)
    path = tmp_path / "tokens"
    path.write_text(f"rea reader {sha256_hex(token)}\n")
    with pytest.raises(TokenConfigError, match=f"^{path}:1: the same token as KARMCHARI_TOKENS "
                                               "entry 1;"):
        TokenRegistry.load(f"ada:admin:{token}", str(path))


def test_one_name_with_two_tokens_of_one_role_is_a_rotation_and_allowed():
    registry = TokenRegistry.load("ci:operator:tok-old-aaaa-bbbb-cc,ci:operator:tok-new-dddd-eeee")
    assert registry.authenticate("tok-old-aaaa-bbbb-cc").name == "ci"
    assert registry.authenticate("tok-new-dddd-eeee").role == "operator"


def test_a_duplicate_refuses_to_start_naming_the_line(redis_url, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"otto operator {sha256_hex(TOKENS['operator'][1])}\n")
    result = serve_and_wait("--tokens-file", str(path), "--redis-url", redis_url,
                            env={"KARMCHARI_TOKENS": f"otto:admin:{TOKENS['admin'][1]}"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"karmchari: cannot load tokens: {path}:1: 'otto' has role 'operator' here and 'admin' "
        "at KARMCHARI_TOKENS entry 1; a name has one role")
