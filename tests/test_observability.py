"""Metrics, request ids, access logs, /healthz and /readyz, scraped and read
from a real ``karmchari serve`` (and the Falcon app where waitress would
answer before it)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from falcon import testing
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app.app import create_app
from app.auth import TokenRegistry
from app.model import STATES
from app.observability import _quoted, new_request_id
from app.store.scripts import Scripts
from tests.live import SERVERS
from tests.servers import RedisProcess, ServiceProcess

GENERATED_ID = re.compile(r"[0-9a-f]{32}\Z")
JOB_ID = re.compile(r"[0-9a-f]{32}")


def fetch(url: str, method: str = "GET", json_body: str | None = None,
          headers: dict | None = None) -> tuple[int, dict, str]:
    """Status, headers (lower-case names) and body; HTTP errors are answers too."""
    data = json_body.encode() if json_body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, \
                response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, \
            error.read().decode()


def register(service: ServiceProcess) -> str:
    status, _, body = fetch(service.url + "/v1/jobs", "POST", '{"type": "teams"}')
    assert status == 201, body
    return JOB_ID.search(body).group()


def scrape(service: ServiceProcess) -> dict:
    status, headers, text = fetch(service.url + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str, **labels: str) -> float:
    found = [s.value for s in families[family].samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


def requests_counted(families: dict, route: str, method: str, status: int) -> float:
    return sample(families, "karmchari_http_requests", "karmchari_http_requests_total",
                  route=route, method=method, status=str(status))


# -- /metrics -----------------------------------------------------------------

def test_metrics_count_requests_by_route_and_status(live_service):
    url = live_service.url
    ids = [register(live_service) for _ in range(3)]
    assert fetch(f"{url}/v1/jobs/{ids[0]}/commands", "POST", '{"command": "kill"}')[0] == 200
    assert fetch(f"{url}/v1/jobs/{ids[1]}/commands", "POST", '{"command": "pause"}')[0] == 200
    assert fetch(f"{url}/v1/jobs/{ids[2]}")[0] == 200
    assert fetch(f"{url}/v1/jobs/{'0' * 32}")[0] == 404
    assert fetch(f"{url}/v1/jobs?state=running")[0] == 400
    assert fetch(f"{url}/no/such/route/{ids[2]}")[0] == 404
    assert fetch(f"{url}/jobState?id={ids[2]}")[0] == 200

    families = scrape(live_service)
    assert requests_counted(families, "/v1/jobs", "POST", 201) == 3
    assert requests_counted(families, "/v1/jobs/{job_id}/commands", "POST", 200) == 2
    assert requests_counted(families, "/v1/jobs/{job_id}", "GET", 200) == 1
    assert requests_counted(families, "/v1/jobs/{job_id}", "GET", 404) == 1
    assert requests_counted(families, "/v1/jobs", "GET", 400) == 1
    assert requests_counted(families, "unmatched", "GET", 404) == 1
    assert requests_counted(families, "/jobState", "GET", 200) == 1
    # Routes are templates: no job id (or any client text) becomes a label.
    for family in families.values():
        for s in family.samples:
            assert not any(JOB_ID.search(value) for value in s.labels.values()), s
    # The scrape itself is counted once it is answered.
    assert requests_counted(scrape(live_service), "/metrics", "GET", 200) == 1


def test_latency_histogram(live_service):
    for _ in range(4):
        register(live_service)
    families = scrape(live_service)
    histogram = "karmchari_http_request_duration_seconds"
    assert families[histogram].type == "histogram"
    labels = {"route": "/v1/jobs", "method": "POST"}
    count = sample(families, histogram, histogram + "_count", **labels)
    assert count == 4
    assert sample(families, histogram, histogram + "_sum", **labels) > 0
    buckets = sorted((float(s.labels["le"]), s.value) for s in families[histogram].samples
                     if s.name == histogram + "_bucket" and s.labels["route"] == "/v1/jobs"
                     and s.labels["method"] == "POST")
    assert len(buckets) > 5
    assert buckets[-1] == (float("inf"), count)
    values = [value for _, value in buckets]
    assert values == sorted(values)


def test_jobs_by_state(live_service):
    ids = [register(live_service) for _ in range(5)]
    for job_id, command in zip(ids[1:], ["pause", "kill", "done", "fail"], strict=True):
        status, _, _ = fetch(f"{live_service.url}/v1/jobs/{job_id}/commands", "POST",
                             f'{{"command": "{command}"}}')
        assert status == 200
    families = scrape(live_service)
    counts = {state: sample(families, "karmchari_jobs", "karmchari_jobs", state=state)
              for state in STATES}
    assert counts == {"start": 1, "pause": 1, "kill": 1, "done": 1, "failed": 1}
    assert sample(families, "karmchari_redis_errors", "karmchari_redis_errors_total") == 0


# -- Redis down: /readyz, 503 with Retry-After, the error counter, recovery ------

@pytest.fixture
def own_redis():
    server = RedisProcess().start()
    yield server
    server.close()


@pytest.fixture
def service_on_own_redis(own_redis, key_prefix):
    service = ServiceProcess("--redis-url", own_redis.url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    yield service
    service.stop()


def test_readyz_follows_redis(own_redis, service_on_own_redis):
    url = service_on_own_redis.url
    assert fetch(url + "/healthz")[::2] == (200, "ok")
    assert fetch(url + "/readyz")[::2] == (200, "ready")
    job_id = register(service_on_own_redis)
    errors_before = sample(scrape(service_on_own_redis), "karmchari_redis_errors",
                           "karmchari_redis_errors_total")

    own_redis.stop()
    status, headers, _ = fetch(url + "/readyz")
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    status, headers, body = fetch(f"{url}/v1/jobs/{job_id}", headers={"X-Request-ID": "down-1"})
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert headers["x-request-id"] == "down-1"
    assert '"code": "store_unavailable"' in body
    status, _, body = fetch(f"{url}/jobState?id={job_id}")
    assert status == 503, body
    assert fetch(url + "/healthz")[0] == 200  # the process is alive; only readiness fails
    # /metrics still answers, so the outage can be seen; the failed calls are counted.
    errors_during = sample(scrape(service_on_own_redis), "karmchari_redis_errors",
                           "karmchari_redis_errors_total")
    assert errors_during >= errors_before + 2

    own_redis.start()  # same port, empty: the scripts must be loaded again
    deadline = time.monotonic() + 30
    while fetch(url + "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "/readyz did not recover"
        time.sleep(0.2)
    admin = own_redis.client()
    shas = [lua.script.sha for lua in Scripts(admin).by_name.values()]
    assert all(admin.script_exists(*shas))
    admin.close()
    assert register(service_on_own_redis)


def test_readyz_reloads_flushed_scripts(own_redis, service_on_own_redis):
    admin = own_redis.client()
    assert fetch(service_on_own_redis.url + "/readyz")[0] == 200
    admin.script_flush()
    assert fetch(service_on_own_redis.url + "/readyz")[0] == 200
    assert admin.info("memory")["number_of_cached_scripts"] > 0
    admin.close()


# -- request ids and the access log -------------------------------------------

def test_request_id_is_honoured_generated_and_logged(live_service):
    url = live_service.url
    job_id = register(live_service)
    given = "deploy-42.retry:3_x"
    answers = [
        fetch(url + "/v1/jobs", "POST", '{"type": "teams"}', {"X-Request-ID": given}),
        fetch(f"{url}/v1/jobs/{job_id}", headers={"X-Request-ID": given}),
        fetch(f"{url}/v1/jobs/{job_id}", headers={"X-Request-ID": given,
                                                  "If-None-Match": '"1"'}),
        fetch(f"{url}/v1/jobs/{'f' * 32}", headers={"X-Request-ID": given}),
        fetch(f"{url}/v1/jobs", "POST", '{"type": 1}', {"X-Request-ID": given}),
        fetch(f"{url}/v1/jobs", "PUT", "{}", {"X-Request-ID": given}),
        fetch(f"{url}/jobState?id=x", headers={"X-Request-ID": given}),
        fetch(f"{url}/healthz", headers={"X-Request-ID": given}),
        fetch(f"{url}/metrics", headers={"X-Request-ID": given}),
    ]
    assert [status for status, _, _ in answers] == [201, 200, 304, 404, 400, 405, 404, 200, 200]
    assert all(headers["x-request-id"] == given for _, headers, _ in answers)

    generated = [fetch(f"{url}/v1/jobs/{job_id}")[1]["x-request-id"] for _ in range(3)]
    insane = ["", " ", "has space", "x" * 129, "semi;colon", "quote\"", "caf\u00e9",
              "new\tline"]
    for value in insane:
        generated.append(fetch(f"{url}/v1/jobs/{job_id}",
                               headers={"X-Request-ID": value})[1]["x-request-id"])
    assert all(GENERATED_ID.match(request_id) for request_id in generated), generated
    assert len(set(generated)) == len(generated)

    service_log = live_service.log_with(f"request_id={generated[-1]}")
    access = [line for line in service_log.splitlines() if "karmchari.access" in line]
    assert sum(f"request_id={given}" in line for line in access) == len(answers)
    for request_id in generated:
        assert sum(f"request_id={request_id}" in line for line in access) == 1
    assert any('method="POST" path="/v1/jobs" status=201' in line
               and f"request_id={given}" in line for line in access)


def test_access_log_cannot_be_forged_through_the_path(live_service):
    status, _, _ = fetch(live_service.url + "/v1/jobs/%0d%0aFORGED%20200%0a")
    assert status == 404
    lines = live_service.log_with("FORGED").splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert any('path="/v1/jobs/\\r\\nFORGED 200\\n"' in line for line in lines)


def test_access_log_names_the_actor(redis_url, key_prefix):
    service = ServiceProcess("--redis-url", redis_url,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix,
                                  "KARMCHARI_TOKENS": "ci-bot:operator:s3cr3t-token-9a8b7c6d"}
                             ).start()
    try:
        status, _, _ = fetch(service.url + "/v1/jobs", "POST", '{"type": "teams"}',
                             {"Authorization": "Bearer s3cr3t-token-9a8b7c6d",
                              "X-Request-ID": "r-1"})
        assert status == 201
        status, headers, _ = fetch(service.url + "/v1/jobs", headers={"X-Request-ID": "r-2"})
        assert (status, headers["x-request-id"]) == (401, "r-2")
    finally:
        service.stop()
    log = service.log()
    assert re.search(r'status=201 .*request_id=r-1 actor="ci-bot"', log)
    assert re.search(r"status=401 .*request_id=r-2 actor=-", log)
    assert "s3cr3t-token-9a8b7c6d" not in log


def test_request_id_on_answers_the_app_gives_before_any_resource(config, store):
    """413, 415, 401 and 403 come from checks ahead of the resource; they carry
    the id too (waitress's own 413/431 never reach the app)."""
    tokens = TokenRegistry.load("r:reader:read-token-0f1e2d3c,a:admin:admin-token-4b5a6978")
    client = testing.TestClient(create_app(config, store, tokens=tokens))
    admin = {"Authorization": "Bearer admin-token-4b5a6978", "X-Request-ID": "pre-1"}
    cases = [
        (401, client.simulate_get("/v1/jobs", headers={"X-Request-ID": "pre-1"})),
        (403, client.simulate_post("/v1/jobs", json={"type": "teams"},
                                   headers={"Authorization": "Bearer read-token-0f1e2d3c",
                                            "X-Request-ID": "pre-1"})),
        (413, client.simulate_post("/v1/jobs", body="x" * (config.max_body_bytes + 1),
                                   headers={**admin, "Content-Type": "application/json"})),
        (415, client.simulate_post("/v1/jobs", body="type=teams",
                                   headers={**admin, "Content-Type": "text/plain"})),
        (400, client.simulate_get("/v1/jobs", query_string="label=%ff", headers=admin)),
    ]
    for status, response in cases:
        assert response.status_code == status
        assert response.headers["x-request-id"] == "pre-1"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("trusted", [True, False])
def test_client_address_from_a_trusted_proxy_only(redis_url, key_prefix, trusted, server):
    """The access log's address, on each HTTP server."""
    env = {"KARMCHARI_KEY_PREFIX": key_prefix}
    if trusted:
        env["KARMCHARI_TRUSTED_PROXY"] = "127.0.0.1"
    service = ServiceProcess("--server", server, "--redis-url", redis_url, env=env).start()
    try:
        status, _, _ = fetch(service.url + "/v1/jobs",
                             headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "xff"})
        assert status == 200
    finally:
        service.stop()
    line = next(line for line in service.log().splitlines() if "request_id=xff" in line)
    assert ("remote=203.0.113.7 " if trusted else "remote=127.0.0.1 ") in line


def test_long_poll_waiters_gauge(live_service):
    job_id = register(live_service)

    def waiters() -> float:
        return sample(scrape(live_service), "karmchari_long_poll_waiters",
                      "karmchari_long_poll_waiters")

    assert waiters() == 0
    with ThreadPoolExecutor(2) as pool:
        polls = [pool.submit(fetch, f"{live_service.url}/v1/jobs/{job_id}?wait=30&version=1")
                 for _ in range(2)]
        deadline = time.monotonic() + 20
        while waiters() != 2:
            assert time.monotonic() < deadline, "the long-polls were not counted"
            time.sleep(0.05)
        status, _, _ = fetch(f"{live_service.url}/v1/jobs/{job_id}/commands", "POST",
                             '{"command": "pause"}')
        assert status == 200
        assert [poll.result()[0] for poll in polls] == [200, 200]
    assert waiters() == 0


@given(st.text() | st.sampled_from(["/jobState", '/a"b', "/a\\b", "/\x7f", "/\x1f", "/é", ""]))
def test_access_log_quoting_is_json_quoting(text):
    assert _quoted(text) == json.dumps(text)


def test_generated_request_ids_are_uuid4_hex():
    for _ in range(500):
        request_id = new_request_id()
        parsed = uuid.UUID(hex=request_id)
        assert GENERATED_ID.match(request_id)
        assert (parsed.hex, parsed.version, parsed.variant) == (request_id, 4, uuid.RFC_4122)


def test_a_forked_child_makes_request_ids_of_its_own():
    """Ids are made in batches; a child must not hand out its parent's next ones."""
    new_request_id()  # the parent now holds a batch
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, "".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as child:
        theirs = re.findall("[0-9a-f]{32}", child.read())
    ours = [new_request_id() for _ in range(3)]
    assert len(theirs) == 3 and not set(theirs) & set(ours)
