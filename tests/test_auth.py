"""Bearer tokens and roles (SPEC §7) on every route and method: who gets 401,
403 or an answer, with tokens from KARMCHARI_TOKENS and from a tokens file;
and the refusal to listen beyond loopback without tokens."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from falcon import inspect, testing

from app.app import build_store, create_app
from app.auth import TokenConfigError, TokenRegistry
from app.config import Config
from app.store import JobStore
from tests.servers import ROOT, ServiceProcess, karmchari_command

TOKENS = {  # role: (name, token)
    "admin": ("ada", "tok-admin-5d1e"),
    "operator": ("otto", "tok-operator-77a0"),
    "worker": ("wim", "tok-worker-c3b9"),
    "reader": ("rea", "tok-reader-0f42"),
}
ROLES = tuple(TOKENS)
# SPEC §7, written out here rather than read from app.auth, so the code is checked against it.
ALLOWED = {
    "read": {"admin", "operator", "worker", "reader"},
    "register": {"admin", "operator"},
    "command": {"admin", "operator"},
    "finish": {"admin", "operator", "worker"},  # done and fail
    "heartbeat": {"admin", "worker"},
    "delete": {"admin"},
}
OPEN_ROUTES = {"/healthz", "/readyz", "/openapi.json"}
FORM = "application/x-www-form-urlencoded"


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_env(*roles: str) -> str:
    return ",".join(f"{TOKENS[r][0]}:{r}:{TOKENS[r][1]}" for r in roles)


def tokens_file_text(*roles: str) -> str:
    lines = ["# name role sha256-of-token", ""]
    lines += [f"{TOKENS[r][0]} {r} {sha256_hex(TOKENS[r][1])}" for r in roles]
    return "\r\n".join(lines) + "\n"


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[role][1]}"}


# -- one call per route, method and permission ----------------------------------

def new_job(store: JobStore, command: str | None = None) -> str:
    job_id = store.register("teams")[0].id
    if command:
        store.apply_command(job_id, command)
    return job_id


@dataclass(frozen=True)
class Call:
    label: str
    permission: str
    # Prepares what the call needs (a job in the right state) and returns
    # method, path and falcon simulate_request keyword arguments.
    prepare: Callable[[JobStore], tuple[str, str, dict]]
    success: int = 200


def _form(**values: str) -> dict:
    return {"body": "&".join(f"{k}={v}" for k, v in values.items()),
            "headers": {"Content-Type": FORM}}


CALLS = [
    Call("POST /registerJob", "register", lambda s: ("POST", "/registerJob", _form(type="teams"))),
    Call("GET /jobState", "read",
         lambda s: ("GET", "/jobState", {"query_string": f"id={new_job(s)}"})),
    Call("POST /jobState pause", "command",
         lambda s: ("POST", "/jobState", _form(id=new_job(s), command="pause"))),
    Call("POST /jobState start (resume)", "command",
         lambda s: ("POST", "/jobState", _form(id=new_job(s, "pause"), command="start"))),
    Call("POST /jobState kill", "command",
         lambda s: ("POST", "/jobState", _form(id=new_job(s), command="kill"))),
    Call("POST /jobState done", "finish",
         lambda s: ("POST", "/jobState", _form(id=new_job(s), command="done"))),
    Call("POST /jobState fail", "finish",
         lambda s: ("POST", "/jobState", _form(id=new_job(s), command="fail"))),
    Call("POST /v1/jobs", "register",
         lambda s: ("POST", "/v1/jobs", {"json": {"type": "teams"}}), 201),
    Call("GET /v1/jobs", "read", lambda s: ("GET", "/v1/jobs", {})),
    Call("GET /v1/jobs/{id}", "read", lambda s: ("GET", f"/v1/jobs/{new_job(s)}", {})),
    Call("GET /v1/jobs/{id} long-poll", "read",
         lambda s: ("GET", f"/v1/jobs/{new_job(s)}", {"query_string": "wait=0&version=0"})),
    Call("DELETE /v1/jobs/{id}", "delete",
         lambda s: ("DELETE", f"/v1/jobs/{new_job(s, 'kill')}", {}), 204),
    Call("POST /v1/jobs/{id}/commands pause", "command",
         lambda s: ("POST", f"/v1/jobs/{new_job(s)}/commands", {"json": {"command": "pause"}})),
    Call("POST /v1/jobs/{id}/commands start", "command",
         lambda s: ("POST", f"/v1/jobs/{new_job(s, 'pause')}/commands",
                    {"json": {"command": "start"}})),
    Call("POST /v1/jobs/{id}/commands kill", "command",
         lambda s: ("POST", f"/v1/jobs/{new_job(s)}/commands", {"json": {"command": "kill"}})),
    Call("POST /v1/jobs/{id}/commands done", "finish",
         lambda s: ("POST", f"/v1/jobs/{new_job(s)}/commands", {"json": {"command": "done"}})),
    Call("POST /v1/jobs/{id}/commands fail", "finish",
         lambda s: ("POST", f"/v1/jobs/{new_job(s)}/commands",
                    {"json": {"command": "fail", "reason": "disk full"}})),
    Call("GET /v1/jobs/{id}/history", "read",
         lambda s: ("GET", f"/v1/jobs/{new_job(s)}/history", {})),
    Call("POST /v1/jobs/{id}/heartbeat", "heartbeat",
         lambda s: ("POST", f"/v1/jobs/{new_job(s)}/heartbeat", {"json": {"progress": 10}})),
    Call("POST /v1/heartbeats", "heartbeat",
         lambda s: ("POST", "/v1/heartbeats", {"json": {"heartbeats": [{"id": new_job(s)}]}})),
    Call("POST /v1/watch", "read",
         lambda s: ("POST", "/v1/watch", {"json": {"jobs": {new_job(s): 0}, "wait": 0}})),
    Call("GET /metrics", "read", lambda s: ("GET", "/metrics", {})),
]

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


@pytest.fixture(scope="module")
def auth_app(redis_url, module_prefix, tokens_file):
    """The whole app with admin and operator tokens from KARMCHARI_TOKENS and
    worker and reader tokens (as hashes) from a tokens file."""
    config = Config.from_env({"KARMCHARI_TOKENS": tokens_env("admin", "operator"),
                              "KARMCHARI_TOKENS_FILE": str(tokens_file)},
                             redis_url=redis_url, key_prefix=module_prefix, threads=4)
    store = build_store(config, redis_url)
    app = create_app(config, store)
    yield testing.TestClient(app), store
    store.client.close()


def key_contents(client: redis.Redis, prefix: str) -> dict:
    read = {"hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True), "string": client.get}
    return {key: read[client.type(key)](key)
            for key in client.scan_iter(match=f"{{{prefix}:*", count=1000)}


def call(client: testing.TestClient, store: JobStore, spec: Call, authorization: str | None):
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


@pytest.mark.parametrize("spec", CALLS, ids=lambda c: c.label)
@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_allowed_or_forbidden(auth_app, admin_redis, module_prefix, spec, role):
    client, store = auth_app
    admin = admin_redis
    method, path, kwargs = spec.prepare(store)
    before = key_contents(admin, module_prefix)
    headers = {**kwargs.pop("headers", {}), **bearer(role)}
    response = client.simulate_request(method, path, headers=headers, **kwargs)
    if role in ALLOWED[spec.permission]:
        assert response.status_code == spec.success, response.text
    else:
        assert response.status_code == 403, response.text
        assert key_contents(admin, module_prefix) == before
        if path in ("/registerJob", "/jobState"):
            assert response.headers["content-type"].startswith("text/plain")
        else:
            assert response.json["code"] == "forbidden"
            assert role in response.json["detail"]


def test_the_matrix_covers_every_route_and_method(auth_app):
    client, _ = auth_app
    covered = {(c.label.split()[0], c.label.split()[1]) for c in CALLS}
    for route in inspect.inspect_routes(client.app):
        path = route.path.replace("{job_id}", "{id}")
        for method in route.methods:
            if method.internal or path in OPEN_ROUTES:
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
                                    headers=bearer("operator"))
    job_id = response.json["id"]
    client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "pause"},
                         headers=bearer("admin"))
    client.simulate_post("/jobState", body=f"id={job_id}&command=start",
                         headers={"Content-Type": FORM, **bearer("operator")})
    client.simulate_post(f"/v1/jobs/{job_id}/commands", json={"command": "done"},
                         headers=bearer("worker"))
    history = client.simulate_get(f"/v1/jobs/{job_id}/history", headers=bearer("reader")).json
    assert [(e["to"], e["actor"]) for e in history["entries"]] == [
        ("start", "otto"), ("pause", "ada"), ("start", "otto"), ("done", "wim")]
    legacy = client.simulate_post("/registerJob", body="type=teams",
                                  headers={"Content-Type": FORM, **bearer("admin")})
    legacy_id = legacy.text.rsplit(" ", 1)[1]
    assert store.history(legacy_id)[0]["actor"] == "ada"


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
    registry = TokenRegistry.load("ci:operator:abc:def:ghi")
    assert registry.authenticate("abc:def:ghi").name == "ci"


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
    """Runs ``karmchari serve`` expecting it to refuse to start."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KARMCHARI_")}
    return subprocess.run([*karmchari_command(), "serve", *args], cwd=ROOT, timeout=60,
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
    result = serve_and_wait("--redis-url", redis_url, env={"KARMCHARI_TOKENS": "ada:root:x"})
    assert result.returncode == 2
    assert "unknown role 'root'" in result.stderr


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
