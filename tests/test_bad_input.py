"""Malformed input (issue 5, SPEC §7): every case is sent to every route that
reads that kind of input, and each gets a clear 4xx while Redis sees nothing:
no command at all (INFO commandstats of a server only this module uses) and
every key under the prefix exactly as it was."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
import redis

from app.app import build_store
from app.cli import main as cli_main
from app.config import SETTINGS, Config
from app.store import HeartbeatReport
from app.store.keys import KeySchema
from tests.live import SERVERS, LiveClient
from tests.servers import ROOT, RedisProcess, ServiceProcess, karmchari_command

PREFIX = "bad"
LIMITS = Config()
JOB = "JOBID"  # replaced by the id of a real job in state start
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# -- the routes, each with a valid request that the cases spoil ---------------

@dataclass(frozen=True)
class Route:
    method: str
    path: str
    query: dict = field(default_factory=dict)
    form: dict | None = None
    json: dict | None = None  # one string value is "SLOT", the place the JSON cases spoil
    required: str = ""  # a required body member (JSON) or parameter (form)
    plain: bool = False  # the old endpoints answer errors in plain text

    @property
    def template(self) -> bytes:
        return json.dumps(self.json).encode()

    @property
    def valid_body(self) -> bytes | None:
        if self.json is not None:
            return self.template.replace(b"SLOT", b"ok")
        return urlencode(self.form).encode() if self.form is not None else None

    @property
    def content_type(self) -> str | None:
        return JSON if self.json is not None else FORM if self.form is not None else None


ROUTES = {
    "POST /registerJob": Route("POST", "/registerJob", form={"type": "teams"},
                               required="type", plain=True),
    "GET /jobState": Route("GET", "/jobState", query={"id": JOB}, required="id", plain=True),
    "POST /jobState": Route("POST", "/jobState", form={"id": JOB, "command": "pause"},
                            required="command", plain=True),
    "POST /v1/jobs": Route("POST", "/v1/jobs", required="type",
                           json={"type": "teams", "name": "SLOT", "labels": {"a": "b"}}),
    "GET /v1/jobs": Route("GET", "/v1/jobs", query={"state": "start", "limit": "5"}),
    "GET /v1/jobs/{id}": Route("GET", f"/v1/jobs/{JOB}", query={"wait": "0"}),
    "DELETE /v1/jobs/{id}": Route("DELETE", f"/v1/jobs/{JOB}"),
    "POST /v1/jobs/{id}/commands": Route("POST", f"/v1/jobs/{JOB}/commands", required="command",
                                         json={"command": "pause", "reason": "SLOT"}),
    "GET /v1/jobs/{id}/history": Route("GET", f"/v1/jobs/{JOB}/history"),
    "POST /v1/jobs/{id}/heartbeat": Route("POST", f"/v1/jobs/{JOB}/heartbeat",
                                          required="observed_state",
                                          json={"progress": 5, "worker": "w1",
                                                "message": "SLOT"}),
    "POST /v1/heartbeats": Route("POST", "/v1/heartbeats", required="heartbeats",
                                 json={"heartbeats": [{"id": JOB, "progress": 5,
                                                       "message": "SLOT"}]}),
    "POST /v1/jobs/commands": Route("POST", "/v1/jobs/commands", required="command",
                                    json={"command": "pause", "reason": "SLOT", "ids": [JOB]}),
    "POST /v1/jobs/{id}/rerun": Route("POST", f"/v1/jobs/{JOB}/rerun"),
    "GET /v1/workers": Route("GET", "/v1/workers", query={"limit": "5"}),
    "POST /v1/jobs/commands delete": Route("POST", "/v1/jobs/commands", required="command",
                                           json={"command": "delete", "reason": "SLOT",
                                                 "ids": [JOB]}),
}
OPEN_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json")
JSON_ROUTES = [name for name, r in ROUTES.items() if r.json is not None]
FORM_ROUTES = [name for name, r in ROUTES.items() if r.form is not None]
ID_ROUTES = [name for name in ROUTES if "{id}" in name or "jobState" in name]


@dataclass(frozen=True)
class Case:
    route: str
    status: int
    code: str  # the problem's machine code, or a word of the plain-text answer
    query: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    headers: dict = field(default_factory=dict)
    path: str | None = None


def _form_body(route: Route, **changes) -> bytes:
    return urlencode({**route.form, **changes}).encode()


def _json_text(value: dict) -> bytes:
    return json.dumps(value).encode()


# -- the cases ----------------------------------------------------------------

# Each spoils one string value of a valid JSON body.
JSON_SLOT_CASES = {
    "invalid UTF-8": (b'"\xff\xfe"', "invalid_encoding"),
    "overlong UTF-8": (b'"\xc0\xaf"', "invalid_encoding"),
    "UTF-8 encoded surrogate": (b'"\xed\xa0\x80"', "invalid_encoding"),
    "lone high surrogate": (b'"\\ud800"', "invalid_encoding"),
    "lone low surrogate": (b'"x\\udfffx"', "invalid_encoding"),
    "surrogate then letter": (b'"\\ud800\\u0041"', "invalid_encoding"),
    "NaN": (b"NaN", "malformed_json"),
    "Infinity": (b"Infinity", "malformed_json"),
    "-Infinity": (b"-Infinity", "malformed_json"),
    "number overflowing to infinity": (b"1e999", "invalid_request"),
    "nested 20 deep": (b'{"a":' * 20 + b"1" + b"}" * 20, "malformed_json"),
    "nested 30000 deep": (b"[" * 30_000 + b"]" * 30_000, "malformed_json"),
    "huge integer": (b"9" * 5000, "malformed_json"),
}


def json_cases(name: str) -> list[tuple[str, Case]]:
    route = ROUTES[name]
    template = route.template
    cases = [(label, Case(name, 400, code, body=template.replace(b'"SLOT"', fragment),
                          content_type=JSON))
             for label, (fragment, code) in JSON_SLOT_CASES.items()]
    valid = route.valid_body
    first = next(iter(route.json))
    duplicated = b'{"%s": %s, ' % (first.encode(), json.dumps(route.json[first]).encode())
    cases += [
        ("duplicate JSON key", Case(name, 400, "malformed_json",
                                    body=duplicated + valid[1:], content_type=JSON)),
        ("empty required value", Case(name, 400, "invalid_request",
                                      body=_json_text({**route.json, route.required: ""}),
                                      content_type=JSON)),
        ("unknown JSON field", Case(name, 400, "invalid_request",
                                    body=_json_text({**route.json, "owner": "x"}),
                                    content_type=JSON)),
        ("not an object", Case(name, 400, "invalid_request", body=b"[]", content_type=JSON)),
        ("null", Case(name, 400, "invalid_request", body=b"null", content_type=JSON)),
        ("trailing garbage", Case(name, 400, "malformed_json", body=valid + b" x",
                                  content_type=JSON)),
        ("BOM", Case(name, 400, "malformed_json", body=b"\xef\xbb\xbf" + valid,
                     content_type=JSON)),
        ("text/plain", Case(name, 415, "unsupported_media_type", body=valid,
                            content_type="text/plain")),
        ("form Content-Type", Case(name, 415, "unsupported_media_type", body=valid,
                                   content_type=FORM)),
        ("no Content-Type", Case(name, 415, "unsupported_media_type", body=valid)),
        ("JSON in latin-1", Case(name, 415, "unsupported_charset", body=valid,
                                 content_type="application/json; charset=latin-1")),
        ("oversized body", Case(name, 413, "body_too_large",
                                body=template.replace(b"SLOT", b"a" * LIMITS.max_body_bytes),
                                content_type=JSON)),
    ]
    if name != "POST /v1/jobs/{id}/heartbeat":  # the one JSON body that may be absent
        cases.append(("empty body", Case(name, 400, "empty_body", body=b"",
                                         content_type=JSON)))
    if name == "POST /v1/heartbeats":
        cases.append(("unknown field in an item", Case(
            name, 400, "invalid_request", content_type=JSON,
            body=_json_text({"heartbeats": [{"id": JOB, "owner": "x"}]}))))
    return cases


def form_cases(name: str) -> list[tuple[str, Case]]:
    route = ROUTES[name]
    valid = _form_body(route)
    required = route.required.encode()

    def spoiled(value: bytes) -> bytes:
        return _form_body(route, **{route.required: ""}).replace(required + b"=",
                                                                 required + b"=" + value)

    return [
        ("invalid UTF-8 in form body", Case(name, 400, "UTF-8", body=spoiled(b"\xff\xfe"),
                                            content_type=FORM)),
        ("percent-encoded invalid UTF-8 in form body", Case(
            name, 400, "UTF-8", body=spoiled(b"%ff%fe"), content_type=FORM)),
        ("encoded surrogate in form body", Case(
            name, 400, "UTF-8", body=spoiled(b"%ed%a0%80"), content_type=FORM)),
        ("duplicate form parameter", Case(name, 400, "more than once",
                                          body=valid + b"&" + valid, content_type=FORM)),
        ("parameter in query and body", Case(name, 400, "more than once", body=valid,
                                             query=valid.decode(), content_type=FORM)),
        ("empty required value", Case(name, 400, "required",
                                      body=_form_body(route, **{route.required: ""}),
                                      content_type=FORM)),
        ("JSON Content-Type", Case(name, 415, "Content-Type", body=valid,
                                   content_type=JSON)),
        ("no Content-Type", Case(name, 415, "Content-Type", body=valid)),
        ("form in latin-1", Case(name, 415, "UTF-8", body=valid,
                                 content_type=FORM + "; charset=latin-1")),
        ("oversized body", Case(name, 413, "at most",
                                body=valid + b"&pad=" + b"a" * LIMITS.max_body_bytes,
                                content_type=FORM)),
    ]


INVALID_UTF8_QUERIES = {
    "0xff": "%ff",
    "truncated sequence": "%c3%28",
    "overlong": "%c0%af",
    "encoded surrogate": "%ed%a0%80",
}


def query_cases(name: str) -> list[tuple[str, Case]]:
    route = ROUTES[name]
    plain = route.plain
    bad_utf8 = "UTF-8" if plain else "invalid_encoding"
    cases = []
    for label, bad in INVALID_UTF8_QUERIES.items():
        key = next(iter(route.query), "q")
        cases.append((f"invalid UTF-8 in query ({label})",
                      Case(name, 400, bad_utf8, query=f"{key}=x{bad}",
                           body=route.valid_body, content_type=route.content_type)))
    for key, value in route.query.items():
        cases.append((f"duplicate query parameter {key}",
                      Case(name, 400, "more than once" if plain else "duplicate_parameter",
                           query=f"{key}={value}&{key}={value}")))
    if route.plain:
        params = {**(route.query or route.form), route.required: ""}
        cases.append(("empty value in query", Case(name, 400, "required",
                                                   query=urlencode(params))))
    return cases


BAD_IDS = {
    "star": "*",
    "hash tag": "{x}",
    "colon": ":",
    "key pattern": "kc:*",
    "CR LF": "\r\n",
    "id then CR LF": "0" * 32 + "\r\n",
    "id then LF": "0" * 32 + "\n",
    "LF then id": "\n" + "0" * 32,
    "NUL": "\x00",
    "id with NUL": "0" * 31 + "\x00",
    "31 hex": "0" * 31,
    "33 hex": "0" * 33,
    "very long": "0" * 10_000,
    "uppercase hex": "0123456789ABCDEF" * 2,
    "Lua": "redis.call('FLUSHALL')",
    "Lua in a hash tag": "{redis.call('FLUSHALL')}",
    "space padded": " " + "0" * 31,
    "Arabic-Indic digits": "\u0660" * 32,
    "fullwidth hex": "\uff10" * 32,
    "dot dot slash": "../" + "0" * 29,
    "percent": "%s" * 16,
}


def id_cases(name: str) -> list[tuple[str, Case]]:
    route = ROUTES[name]
    cases = []
    for label, bad in BAD_IDS.items():
        if route.plain:
            params = {**(route.form or route.query), "id": bad}
            case = Case(name, 404, "Job not available", query=urlencode(params)) \
                if route.method == "GET" else \
                Case(name, 404, "Job not available", body=urlencode(params).encode(),
                     content_type=FORM)
        elif name == "POST /v1/heartbeats":
            case = Case(name, 400, "invalid_request", content_type=JSON,
                        body=_json_text({"heartbeats": [{"id": bad, "progress": 5}]}))
        else:
            if "/" in bad:
                continue  # another path, not an id: routing answers 404 itself
            case = Case(name, 404, "job_not_found",
                        path=route.path.replace(JOB, quote(bad, safe="")),
                        body=route.valid_body, content_type=route.content_type)
        cases.append((f"id {label}", case))
    return cases


def limit_cases() -> list[tuple[str, Case]]:
    register = "POST /v1/jobs"
    labels = {f"k{i}": "v" for i in range(LIMITS.max_labels + 1)}
    batch = [{"id": f"{i:032x}"} for i in range(LIMITS.max_batch + 1)]

    def listing(query: str, code: str = "invalid_parameter") -> Case:
        return Case("GET /v1/jobs", 400, code, query=query)

    def long_poll(query: str) -> Case:
        return Case("GET /v1/jobs/{id}", 400, "invalid_parameter", query=query)

    cases = [
        ("labels over the count limit", Case(register, 400, "invalid_request", content_type=JSON,
                                             body=_json_text({"type": "teams",
                                                              "labels": labels}))),
        ("label value over the size limit", Case(
            register, 400, "invalid_request", content_type=JSON,
            body=_json_text({"type": "teams",
                             "labels": {"k": "v" * (LIMITS.max_label_chars + 1)}}))),
        ("label key too long", Case(register, 400, "invalid_request", content_type=JSON,
                                    body=_json_text({"type": "teams",
                                                     "labels": {"k" * 64: "v"}}))),
        ("label key with a colon", Case(register, 400, "invalid_request", content_type=JSON,
                                        body=_json_text({"type": "teams",
                                                         "labels": {"a:b": "v"}}))),
        ("label key ending in LF", Case(register, 400, "invalid_request", content_type=JSON,
                                        body=_json_text({"type": "teams",
                                                         "labels": {"a\n": "v"}}))),
        ("label value not a string", Case(register, 400, "invalid_request", content_type=JSON,
                                          body=_json_text({"type": "teams",
                                                           "labels": {"a": 1}}))),
        ("name over the size limit", Case(register, 400, "invalid_request", content_type=JSON,
                                          body=_json_text({"type": "teams", "name": "n" * 257}))),
        ("unknown job type", Case(register, 400, "invalid_request", content_type=JSON,
                                  body=_json_text({"type": "teamz"}))),
        ("heartbeat_timeout negative", Case(register, 400, "invalid_request", content_type=JSON,
                                            body=_json_text({"type": "teams",
                                                             "heartbeat_timeout": -1}))),
        ("empty Idempotency-Key", Case(register, 400, "invalid_idempotency_key",
                                       content_type=JSON, body=_json_text({"type": "teams"}),
                                       headers={"Idempotency-Key": ""})),
        ("Idempotency-Key too long", Case(register, 400, "invalid_idempotency_key",
                                          content_type=JSON, body=_json_text({"type": "teams"}),
                                          headers={"Idempotency-Key": "k" * 256})),
        ("Idempotency-Key with a tab", Case(register, 400, "invalid_idempotency_key",
                                            content_type=JSON,
                                            body=_json_text({"type": "teams"}),
                                            headers={"Idempotency-Key": "a\tb"})),
        *[(f"{label} on {where}", case)
          for label, key in (("empty Idempotency-Key", ""),
                             ("Idempotency-Key too long", "k" * 256),
                             ("Idempotency-Key with a tab", "a\tb"),
                             ("Idempotency-Key with a space", "a b"))
          for where, case in (
              ("a command", Case("POST /v1/jobs/{id}/commands", 400, "invalid_idempotency_key",
                                 content_type=JSON, body=_json_text({"command": "pause"}),
                                 headers={"Idempotency-Key": key})),
              ("the old register", Case("POST /registerJob", 400, "Idempotency-Key is invalid",
                                        content_type=FORM, body=b"type=teams",
                                        headers={"Idempotency-Key": key})),
              ("the old command", Case("POST /jobState", 400, "Idempotency-Key is invalid",
                                       content_type=FORM,
                                       body=_form_body(ROUTES["POST /jobState"]),
                                       headers={"Idempotency-Key": key})))],
        ("batch over the limit", Case("POST /v1/heartbeats", 400, "invalid_request",
                                      content_type=JSON, body=_json_text({"heartbeats": batch}))),
        ("empty batch", Case("POST /v1/heartbeats", 400, "invalid_request", content_type=JSON,
                             body=_json_text({"heartbeats": []}))),
        ("same job twice in a batch", Case("POST /v1/heartbeats", 400, "duplicate_job",
                                           content_type=JSON, body=_json_text(
                                               {"heartbeats": [{"id": JOB}, {"id": JOB}]}))),
        ("progress over 100", Case("POST /v1/jobs/{id}/heartbeat", 400, "invalid_request",
                                   content_type=JSON, body=_json_text({"progress": 101}))),
        ("progress true", Case("POST /v1/jobs/{id}/heartbeat", 400, "invalid_request",
                               content_type=JSON, body=_json_text({"progress": True}))),
        ("reason over the size limit", Case(
            "POST /v1/jobs/{id}/commands", 400, "invalid_request", content_type=JSON,
            body=_json_text({"command": "pause", "reason": "r" * (LIMITS.max_text_chars + 1)}))),
        ("unknown command", Case("POST /v1/jobs/{id}/commands", 400, "invalid_request",
                                 content_type=JSON, body=_json_text({"command": "explode"}))),
        ("If-Match not a version", Case("POST /v1/jobs/{id}/commands", 400, "invalid_if_match",
                                        content_type=JSON,
                                        body=_json_text({"command": "pause"}),
                                        headers={"If-Match": '"abc"'})),
        ("legacy unknown command", Case("POST /jobState", 400, "Command is invalid",
                                        content_type=FORM,
                                        body=_form_body(ROUTES["POST /jobState"],
                                                        command="explode"))),
        ("legacy unknown type", Case("POST /registerJob", 400, "Type is invalid",
                                     content_type=FORM, body=b"type=teamz")),
        ("long-poll wait over the limit",
         long_poll(f"wait={LIMITS.max_wait_seconds + 1:g}")),
        ("long-poll wait NaN", long_poll("wait=nan")),
        ("long-poll wait infinite", long_poll("wait=inf")),
        ("long-poll wait negative", long_poll("wait=-1")),
        ("long-poll wait in hex", long_poll("wait=0x10")),
        ("long-poll version not a number", long_poll("wait=1&version=v1")),
        ("long-poll version negative", long_poll("wait=1&version=-1")),
        ("too many label filters", listing("&".join(
            f"label=k{i}:v" for i in range(LIMITS.max_labels + 1)))),
        ("label filter value over the size limit",
         listing("label=k:" + "v" * (LIMITS.max_label_chars + 1))),
        ("label filter without a value", listing("label=k")),
        ("label filter with a bad key", listing("label=%7Bx%7D:v")),
        ("unknown state", listing("state=running")),
        ("unknown type", listing("type=teamz")),
        ("stalled not a boolean", listing("stalled=yes")),
        ("limit over the maximum", listing(f"limit={LIMITS.max_list_limit + 1}")),
        ("limit zero", listing("limit=0")),
        ("limit not a number", listing("limit=ten")),
        ("cursor not one of ours", listing("cursor=bm90LWEtY3Vyc29y", "invalid_cursor")),
        ("cursor with a bad id", listing("cursor=" + quote("MTIzLnt4fQ"), "invalid_cursor")),
        ("cursor of invalid base64", listing("cursor=%25%25%25", "invalid_cursor")),
        ("unknown parameter", listing("stat=done")),
        ("unknown parameter, blank", listing("state=done&sate=")),
        ("unknown parameter beside valid ones", listing("state=done&limit=5&names=x")),
        ("empty worker", listing("worker=")),
        ("worker over the size limit", listing("worker=" + "w" * 257)),
        ("empty name_prefix", listing("name_prefix=")),
        ("name_prefix over the size limit", listing("name_prefix=" + "n" * 201)),
        ("workers: unknown parameter", Case("GET /v1/workers", 400, "invalid_parameter",
                                            query="state=done")),
        ("workers: limit zero", Case("GET /v1/workers", 400, "invalid_parameter",
                                     query="limit=0")),
        ("workers: cursor not one of ours", Case("GET /v1/workers", 400, "invalid_cursor",
                                                 query="cursor=bm90LWEtY3Vyc29y")),
        ("rerun: empty Idempotency-Key", Case("POST /v1/jobs/{id}/rerun", 400,
                                              "invalid_idempotency_key",
                                              headers={"Idempotency-Key": ""})),
        ("delete by a filter without a final state",
         Case("POST /v1/jobs/commands delete", 400, "filter_not_final", content_type=JSON,
              body=_json_text({"command": "delete", "where": {"type": "teams"}}))),
        ("delete by a filter of unended jobs",
         Case("POST /v1/jobs/commands delete", 400, "filter_not_final", content_type=JSON,
              body=_json_text({"command": "delete", "where": {"state": "start"}}))),
    ]
    return cases


def all_cases() -> list:
    cases = []
    for name in JSON_ROUTES:
        cases += json_cases(name)
    for name in FORM_ROUTES:
        cases += form_cases(name)
    for name in ROUTES:
        cases += query_cases(name)
    for name in ID_ROUTES:
        cases += id_cases(name)
    cases += limit_cases()
    return [pytest.param(case, id=f"{case.route}: {label}") for label, case in cases]


# -- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def quiet_redis():
    """A server for this module alone, so that its command counters count only
    what these tests cause."""
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def admin(quiet_redis):
    client = quiet_redis.client()
    yield client
    client.close()


def wait_until_subscribed(admin: redis.Redis, prefix: str) -> None:
    """The app's change listener subscribes once, in the background, at the
    first long-poll: wait for it, so that no command of its own is counted
    during a case."""
    channels = [shard.channel for shard in KeySchema(prefix).shards.values()]
    deadline = time.monotonic() + 20
    while not all(count for _, count in admin.pubsub_shardnumsub(*channels)):
        assert time.monotonic() < deadline, "the change listener did not subscribe"
        time.sleep(0.05)


@pytest.fixture(scope="module", params=SERVERS)
def service(request, quiet_redis, admin):
    """``karmchari serve`` with each server in turn, on this module's Redis."""
    process = ServiceProcess("--server", request.param, "--redis-url", quiet_redis.url,
                             "--threads", "4",
                             env={"KARMCHARI_KEY_PREFIX": PREFIX,
                                  "KARMCHARI_SWEEP_INTERVAL": "3600"}).start()
    # /readyz loads the scripts; after it the service only talks to Redis when asked to.
    with urllib.request.urlopen(process.url + "/readyz", timeout=10) as response:
        assert response.status == 200
    register = urllib.request.Request(process.url + "/v1/jobs", data=b'{"type": "teams"}',
                                      headers={"Content-Type": JSON})
    with urllib.request.urlopen(register, timeout=10) as response:
        long_polled = json.loads(response.read())["id"]
    with urllib.request.urlopen(f"{process.url}/v1/jobs/{long_polled}?wait=0",
                                timeout=10) as response:
        assert response.status == 200
    wait_until_subscribed(admin, PREFIX)
    yield process
    process.stop()
    process.log_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def app_client(service, quiet_redis):
    """The service over real HTTP, and a store on its keys."""
    config = Config(redis_url=quiet_redis.url, key_prefix=PREFIX, threads=4)
    store = build_store(config, config.redis_url)
    yield LiveClient(service.url), store
    store.client.close()


@pytest.fixture(scope="module")
def job_id(app_client):
    """A job in state start that every case points at (none may change it)."""
    return app_client[1].register("teams")[0].id


def commands_served(admin: redis.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in admin.info("commandstats").items()
            if name != "cmdstat_info"}


def key_contents(admin: redis.Redis) -> dict:
    read = {"hash": admin.hgetall, "list": lambda k: admin.lrange(k, 0, -1),
            "zset": lambda k: admin.zrange(k, 0, -1, withscores=True), "string": admin.get,
            "set": admin.smembers}
    return {key: read[admin.type(key)](key) for key in admin.scan_iter(count=1000)}


def send(client: LiveClient, case: Case, job_id: str):
    route = ROUTES[case.route]
    path = (case.path or route.path).replace(JOB, job_id)
    query = case.query if case.query is not None else urlencode(route.query)
    headers = dict(case.headers)
    if case.content_type:
        headers["Content-Type"] = case.content_type
    body = case.body.replace(JOB.encode(), job_id.encode()) if case.body is not None else None
    return client.simulate_request(route.method, path, query_string=query.replace(JOB, job_id),
                                   headers=headers, body=body)


def assert_refused(response, case: Case) -> None:
    assert response.status_code == case.status, response.text
    if ROUTES[case.route].plain:
        assert response.headers["content-type"].startswith("text/plain")
        assert case.code in response.text
    else:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json["code"] == case.code, response.json


# -- the tests ----------------------------------------------------------------

@pytest.mark.parametrize("case", all_cases())
def test_malformed_input_is_refused_before_redis(case, app_client, job_id, admin):
    client, _ = app_client
    keys_before = key_contents(admin)
    calls_before = commands_served(admin)
    response = send(client, case, job_id)
    calls_after = commands_served(admin)
    assert_refused(response, case)
    assert calls_after == calls_before, "the request reached Redis"
    assert key_contents(admin) == keys_before


def test_the_valid_requests_the_cases_spoil_are_accepted(app_client):
    """The cases above fail for the reason they name, not because the request
    they start from was wrong."""
    client, store = app_client
    job_id = store.register("teams")[0].id
    expected = {"POST /v1/jobs": 201, "DELETE /v1/jobs/{id}": 409,
                "POST /v1/jobs/{id}/rerun": 409}
    for name, route in ROUTES.items():
        case = Case(name, 0, "", body=route.valid_body, content_type=route.content_type)
        response = send(client, case, job_id)
        assert response.status_code == expected.get(name, 200), (name, response.text)


@pytest.mark.parametrize("path", OPEN_ROUTES)
@pytest.mark.parametrize("bad", INVALID_UTF8_QUERIES.values())
def test_invalid_utf8_query_on_open_routes(app_client, path, bad):
    client, _ = app_client
    response = client.simulate_get(path, query_string=f"q={bad}")
    assert response.status_code == 400
    assert response.json["code"] == "invalid_encoding"


# -- raw bytes through each real server ----------------------------------------

def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library cleaning them) and read the
    whole answer; the request asks the server to close the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _post(path: str, body: bytes, content_type: str = JSON, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (path.encode(), content_type.encode(), len(body),
                                               extra) + body)


def _chunked(path: str, body: bytes) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192])
                      for i in range(0, len(body), 8192))
    return (b"POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % (path.encode(), JSON.encode())
            + chunks + b"0\r\n\r\n")


def _get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n" % (target, extra)


OVERSIZED = b'{"type": "teams", "name": "' + b"n" * LIMITS.max_body_bytes + b'"}'

SERVER_CASES = {
    "oversized JSON body": (_post("/v1/jobs", OVERSIZED), {413}),
    "oversized chunked JSON body": (_chunked("/v1/jobs", OVERSIZED), {413}),
    "chunked twice": (_chunked("/v1/jobs", b'{"type": "teams"}').replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, chunked"), {400}),
    "Transfer-Encoding other than chunked": (_chunked("/v1/jobs", b'{"type": "teams"}').replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked"), {400}),
    "two Transfer-Encoding lines": (_chunked("/v1/jobs", b'{"type": "teams"}').replace(
        b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: "
                                       b"chunked"), {400}),
    "Transfer-Encoding on HTTP/1.0": (_chunked("/v1/jobs", b'{"type": "teams"}').replace(
        b"HTTP/1.1", b"HTTP/1.0"), {400}),
    "missing Host on HTTP/1.1": (_get(b"/healthz").replace(b"Host: localhost\r\n", b""), {400}),
    "two Host headers": (_get(b"/healthz", b"Host: y\r\n"), {400}),
    "empty Host": (_get(b"/healthz").replace(b"Host: localhost", b"Host: "), {400}),
    "obs-fold": (_get(b"/healthz", b"X-A: a\r\n folded\r\n"), {400}),
    "oversized form body": (_post("/registerJob", b"type=teams&pad=" + b"p" * 70_000, FORM),
                            {413}),
    "Content-Length over the limit, body not sent": (
        b"POST /v1/heartbeats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{", {413}),
    "header over the limit": (_get(b"/v1/jobs", b"X-Padding: " + b"h" * (LIMITS.max_header_bytes
                                                                       + 1) + b"\r\n"),
                              {431}),
    "very long id in the path": (_get(b"/v1/jobs/" + b"0" * 100_000), {431, 414}),
    "raw invalid UTF-8 in the query": (_get(b"/v1/jobs?label=a:\xff\xfe"), {400}),
    "raw invalid UTF-8 in the legacy query": (_get(b"/jobState?id=\xff"), {400}),
    "raw invalid UTF-8 in the path": (_get(b"/v1/jobs/\xff\xfe"), {400, 404}),
    "percent-encoded NUL in the path": (_get(b"/v1/jobs/" + b"0" * 31 + b"%00"), {404}),
    "percent-encoded CR LF in the path": (_get(b"/v1/jobs/%0d%0aSet-Cookie:%20x=1"), {404}),
    "bad Content-Length": (b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                           b"Content-Type: application/json\r\nContent-Length: ten\r\n\r\n",
                           {400}),
    "invalid UTF-8 form body": (_post("/registerJob", b"type=\xff", FORM), {400}),
    "lone surrogate in JSON": (_post("/v1/jobs", b'{"type": "teams", "name": "\\udc00"}'),
                               {400}),
}


@pytest.mark.parametrize("request_bytes,statuses", SERVER_CASES.values(),
                         ids=SERVER_CASES.keys())
def test_malformed_requests_through_the_server(service, admin, request_bytes, statuses):
    keys_before = key_contents(admin)
    calls_before = commands_served(admin)
    answer = raw_exchange(service.port, request_bytes)
    calls_after = commands_served(admin)
    assert status_of(answer) in statuses, answer[:500]
    assert calls_after == calls_before, "the request reached Redis"
    assert key_contents(admin) == keys_before


def server_of(service: ServiceProcess) -> str:
    return service.args[service.args.index("--server") + 1]


def test_transfer_encoding_with_content_length_is_refused(service, admin):
    """RFC 9112 6.1: Content-Length with Transfer-Encoding may be read two ways by
    two servers in a row. Waitress: refused with 400, the connection not reused.
    Granian's parser (hyper) drops the Content-Length before the application sees
    the request, reads the body as chunked and closes the connection after the
    answer (RFC 9112 6.3): the request behind it is not served on either."""
    keys_before = key_contents(admin)
    request = _chunked("/v1/jobs", b'{"type": "teams"}').replace(
        b"Connection: close\r\n", b"").replace(b"Transfer-Encoding",
                                                 b"Content-Length: 17\r\nTransfer-Encoding")
    answer = raw_exchange(service.port, request + _get(b"/healthz"))  # ends when closed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert answer.count(b"HTTP/1.") == 1, "the request behind it was served"
    if server_of(service) == "granian":
        assert status_of(answer) == 201, answer
        return
    assert status_of(answer) == 400, answer
    assert json.loads(body)["code"] == "transfer_encoding_refused"
    assert key_contents(admin) == keys_before


def test_chunked_bodies_are_accepted_on_every_route(app_client, service):
    """curl -T -, http.client with an iterable body, requests with a generator:
    each route answers a chunked body as it answers the same body with
    Content-Length (a route without a body, an empty chunked one)."""
    _, store = app_client
    job_id = store.register("teams")[0].id
    expected = {"POST /v1/jobs": 201, "DELETE /v1/jobs/{id}": 409,
                "POST /v1/jobs/{id}/rerun": 409}
    for name, route in ROUTES.items():
        body = (route.valid_body or b"").replace(JOB.encode(), job_id.encode())
        target = route.path.replace(JOB, job_id)
        if route.query:
            target += "?" + urlencode(route.query).replace(JOB, job_id)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                          for part in (body[:5], body[5:]) if part)
        request = (b"%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                   b"%sTransfer-Encoding: "
                   b"chunked\r\n\r\n%s0\r\n\r\n" % (
                       route.method.encode(), target.encode(),
                       b"Content-Type: %s\r\n" % route.content_type.encode()
                       if route.content_type else b"", chunks))
        answer = raw_exchange(service.port, request)
        assert status_of(answer) == expected.get(name, 200), (name, answer[:300])


def test_oversized_body_is_the_apps_problem_document(service):
    answer = raw_exchange(service.port, _post("/v1/jobs", OVERSIZED))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 413
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["code"] == "body_too_large"
    assert problem["detail"] == f"the body may be at most {LIMITS.max_body_bytes} bytes"


def test_server_limits_come_from_the_configuration(quiet_redis, server):
    """KARMCHARI_MAX_BODY_BYTES and KARMCHARI_MAX_HEADER_BYTES set both the
    server's limits and the app's own."""
    process = ServiceProcess("--server", server, "--redis-url", quiet_redis.url,
                             env={"KARMCHARI_KEY_PREFIX": PREFIX + "l",
                                  "KARMCHARI_MAX_BODY_BYTES": "100",
                                  "KARMCHARI_MAX_HEADER_BYTES": "2048"}).start()
    try:
        fits = _post("/v1/jobs", b'{"type": "teams"}')
        assert status_of(raw_exchange(process.port, fits)) == 201
        body = b'{"type": "teams", "name": "' + b"n" * 100 + b'"}'
        answer = raw_exchange(process.port, _post("/v1/jobs", body))
        assert status_of(answer) == 413
        answer = raw_exchange(process.port, _get(b"/healthz", b"X-P: " + b"h" * 2100 + b"\r\n"))
        assert status_of(answer) == 431
        assert status_of(raw_exchange(process.port, _get(b"/healthz", b"X-P: h\r\n"))) == 200
    finally:
        process.stop()
        process.log_path.unlink(missing_ok=True)


# -- limits are configuration, and say which limit was hit ------------------------

LIMIT_ENV = {
    "KARMCHARI_MAX_BODY_BYTES": "300",
    "KARMCHARI_MAX_HEADER_BYTES": "4096",
    "KARMCHARI_MAX_LABELS": "2",
    "KARMCHARI_MAX_LABEL_CHARS": "5",
    "KARMCHARI_MAX_TEXT_CHARS": "10",
    "KARMCHARI_MAX_BATCH": "3",
    "KARMCHARI_MAX_LIST_LIMIT": "7",
    "KARMCHARI_MAX_WAIT_SECONDS": "2.5",
    "KARMCHARI_CONNECTION_LIMIT": "20",
    "KARMCHARI_IDLE_TIMEOUT": "9",
}


def test_every_limit_is_a_karmchari_variable():
    config = Config.from_env(LIMIT_ENV)
    for name, value in LIMIT_ENV.items():
        assert str(getattr(config, name.removeprefix("KARMCHARI_").lower())) == value


def test_limits_follow_the_configuration_and_name_the_limit(server, live_services, store):
    settings = {name.removeprefix("KARMCHARI_").lower(): value
                for name, value in LIMIT_ENV.items()}
    client = LiveClient(live_services(server, key_prefix=store.keys.prefix, **settings).url)
    job_id = store.register("teams")[0].id

    def refused(response, status: int, detail: str) -> None:
        assert response.status_code == status, response.text
        assert detail in response.json["detail"], response.json

    two = {"a": "12345", "b": "v"}
    assert client.simulate_post("/v1/jobs", json={"type": "teams", "labels": two}).status_code \
        == 201
    refused(client.simulate_post("/v1/jobs", json={"type": "teams", "labels": {**two, "c": ""}}),
            400, "labels: too many members, at most 2")
    refused(client.simulate_post("/v1/jobs", json={"type": "teams", "labels": {"a": "123456"}}),
            400, "labels/a: too long, at most 5 characters")
    refused(client.simulate_post(f"/v1/jobs/{job_id}/commands",
                                 json={"command": "pause", "reason": "r" * 11}),
            400, "reason: too long, at most 10 characters")
    batch = [{"id": f"{i:032x}"} for i in range(4)]
    refused(client.simulate_post("/v1/heartbeats", json={"heartbeats": batch}),
            400, "heartbeats: too many items, at most 3")
    assert client.simulate_post("/v1/heartbeats",
                                json={"heartbeats": batch[:3]}).status_code == 200
    refused(client.simulate_get(f"/v1/jobs/{job_id}", query_string="wait=2.6"),
            400, "wait must be 0 to 2.5 seconds")
    refused(client.simulate_get("/v1/jobs", query_string="limit=8"),
            400, "limit must be an integer from 1 to 7")
    refused(client.simulate_get("/v1/jobs", query_string="label=a:1&label=b:2&label=c:3"),
            400, "at most 2 label filters")
    refused(client.simulate_post("/v1/jobs", json={"type": "teams", "name": "n" * 300}),
            413, "the body may be at most 300 bytes")


# -- settings out of their range stop `karmchari serve` before it starts --------

NUMERIC_SETTINGS = [s for s in SETTINGS if s.range]


def out_of_range(setting) -> list[str]:
    low, high = setting.range
    below = low - 1 if setting.kind == "int" else low - abs(low) / 2 - 0.01
    above = high + 1 if setting.kind == "int" else high * 2
    return [str(below), str(above)]


def test_every_numeric_setting_has_a_range():
    numeric = {s.name for s in SETTINGS if s.kind in ("int", "float")}
    assert numeric == {s.name for s in NUMERIC_SETTINGS}
    for s in NUMERIC_SETTINGS:
        assert s.range[0] <= s.default <= s.range[1], s.name


@pytest.mark.parametrize("setting", NUMERIC_SETTINGS, ids=lambda s: s.name)
def test_a_setting_out_of_range_stops_serve_with_2(setting, capsys):
    """Through the flag and through the environment; nothing is started (main
    returns before it reaches the store)."""
    for value in [*out_of_range(setting), *(["nan"] if setting.kind == "float" else [])]:
        assert cli_main(["serve", f"{setting.option}={value}"]) == 2
        error = capsys.readouterr().err
        assert f"karmchari: {setting.option} ({setting.env}) must be from " \
               f"{setting.range_text}, not " in error, error
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(setting.env, value)
            assert cli_main(["serve"]) == 2
        assert setting.range_text in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--history-cap", "0"], ["--history-cap", "-3"],
                                  ["--threads", "0"], ["--retention-seconds", "-100"]],
                         ids=" ".join)
def test_the_reported_bad_settings_stop_the_real_command(args):
    run = subprocess.run([*karmchari_command(), "serve", "--port", "0", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    option = args[0]
    setting = next(s for s in SETTINGS if s.option == option)
    assert run.stderr.strip() == (f"karmchari: {option} ({setting.env}) must be from "
                                  f"{setting.range_text}, not {args[1]}")


def test_a_setting_that_does_not_parse_names_the_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["serve", "--history-cap", "many"])
    assert stop.value.code == 2
    assert "argument --history-cap: not a number: 'many'" in capsys.readouterr().err


# Control characters a worker token can store (name, labels, worker, message,
# reason): the CLI must show them escaped, never send them to the terminal.
NASTY = "a\x1b]0;owned\x07b\x1b[2J\x9b31m\x7fc"


def test_the_cli_never_prints_control_characters_it_read(app_client, service):
    _, store = app_client
    job = store.register("teams", name=NASTY, labels={"k": NASTY})[0]
    store.heartbeat(HeartbeatReport(job.id, worker=NASTY, message=NASTY))
    store.apply_command(job.id, "pause", actor="ops", reason=NASTY)
    env = {**os.environ, "KARMCHARI_URL": service.url}
    for args in (["get", job.id], ["history", job.id], ["list", "--type", "teams"],
                 ["get", "--json", job.id], ["history", "--json", job.id]):
        run = subprocess.run([*karmchari_command(), *args], capture_output=True, text=True,
                             env=env, timeout=60)
        assert run.returncode == 0, run.stderr
        assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", run.stdout), (args, run.stdout)
        shown = ("\\x1b]0;owned" if "--json" not in args else "\\u001b]0;owned")
        assert shown in run.stdout, (args, run.stdout)


@pytest.mark.parametrize("args", [["--threads", "4", "--max-waiters", "4"],
                                  ["--threads", "4", "--max-waiters", "100"]], ids=" ".join)
def test_waiters_that_could_hold_every_thread_stop_serve(args):
    """Long-polls past the threads would leave no thread for any other request
    (a reader token could hold the service)."""
    run = subprocess.run([*karmchari_command(), "serve", "--port", "0", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().startswith(
        "karmchari: --max-waiters (KARMCHARI_MAX_WAITERS) must be below --threads (4), not ")


def test_one_thread_keeps_long_polls_from_taking_it():
    assert Config(threads=1).waiter_limit == 0
    assert Config(threads=16).waiter_limit == 8
    assert Config(threads=16, max_waiters=15).waiter_limit == 15
