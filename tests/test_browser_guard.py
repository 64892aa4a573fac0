"""DNS rebinding and cross-site requests (app/browser_guard.py), nosniff on every
answer and the wording of a read's 503, on both servers over real HTTP with a
real Redis; then a real Chromium page on another origin that submits forms.

curl and scripts send neither Origin nor Sec-Fetch-Site, and name the service
by its address: their requests are answered as before."""

from __future__ import annotations

import http.client
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from falcon.util import CaseInsensitiveDict

from app.browser_guard import host_name
from tests.browser import BrowserMissing, chromium_path
from tests.live import SERVERS
from tests.servers import RedisProcess, ServiceProcess

TOKEN = "tok-admin-guard-5e6f7a8b"
FORM = "application/x-www-form-urlencoded"


def send(service: ServiceProcess, method: str, path: str, *, host: str | None = None,
         headers: dict | None = None, body: bytes | None = None
         ) -> tuple[int, CaseInsensitiveDict, bytes]:
    """One request with exactly the Host given (None: the service's address)."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"127.0.0.1:{service.port}" if host is None else host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        answer = connection.getresponse()
        return answer.status, CaseInsensitiveDict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def keys(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{{{prefix}:*", count=1000))
    finally:
        client.close()


@pytest.fixture(params=SERVERS)
def open_service(request, live_services):
    """Without tokens (the default on loopback), a key prefix of its own."""
    service = live_services(request.param, key_prefix="bgopen" + request.param)
    service.prefix = "bgopen" + request.param
    return service


def test_host_names_of_the_service_are_answered(open_service):
    port = open_service.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"LOCALHOST.:{port}",
                 f"[::1]:{port}", f"127.0.0.2:{port}", "127.0.0.1"):
        status, headers, _ = send(open_service, "GET", "/v1/jobs", host=host)
        assert status == 200, host


# An empty Host is no Host: refused earlier, with 400 (tests/test_bad_input.py).
@pytest.mark.parametrize("host", ["rebind.test", "rebind.test:{port}", "127.0.0.1.nip.io",
                                  "10.0.0.1", "[::2]:{port}", "localhost.rebind.test"])
def test_another_host_is_refused_with_421_and_nothing_is_written(open_service, redis_url, host):
    host = host.format(port=open_service.port)
    before = keys(redis_url, open_service.prefix)
    for method, path, body, media in (
            ("GET", "/v1/jobs", None, None),
            ("POST", "/v1/jobs", b'{"type": "teams"}', "application/json"),
            ("POST", "/v1/jobs/commands", b'{"command": "kill", "where": {}}',
             "application/json")):
        status, headers, content = send(open_service, method, path, host=host,
                                        body=body, headers=media and {"Content-Type": media})
        assert status == 421, (host, path, content)
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(content)["code"] == "host_not_allowed"
        assert "--allowed-hosts" in json.loads(content)["detail"]
    # The old endpoints answer in plain text, as their other refusals.
    status, headers, content = send(open_service, "POST", "/registerJob", host=host,
                                    body=b"type=teams", headers={"Content-Type": FORM})
    assert status == 421 and headers["Content-Type"].startswith("text/plain")
    assert b"--allowed-hosts" in content
    assert keys(redis_url, open_service.prefix) == before


@pytest.mark.parametrize("server", SERVERS)
def test_allowed_hosts_adds_names_and_applies_with_tokens(live_services, server):
    named = live_services(server, key_prefix="bgnamed" + server,
                          allowed_hosts="jobs.example, Other.Example")
    for host in ("jobs.example", f"other.example:{named.port}", f"localhost:{named.port}"):
        assert send(named, "GET", "/v1/jobs", host=host)[0] == 200, host
    assert send(named, "GET", "/v1/jobs", host="rebind.test")[0] == 421

    auth = {"Authorization": f"Bearer {TOKEN}"}
    # With tokens a rebinding page has no token: the Host is not checked unless asked.
    tokens = live_services(server, key_prefix="bgtok" + server, tokens=f"ada:admin:{TOKEN}")
    assert send(tokens, "GET", "/v1/jobs", host="jobs.example", headers=auth)[0] == 200
    assert send(tokens, "GET", "/v1/jobs", host="jobs.example")[0] == 401
    both = live_services(server, key_prefix="bgtok" + server, tokens=f"ada:admin:{TOKEN}",
                         allowed_hosts="jobs.example")
    assert send(both, "GET", "/v1/jobs", host="jobs.example", headers=auth)[0] == 200
    assert send(both, "GET", "/v1/jobs", host="rebind.test", headers=auth)[0] == 421
    assert send(both, "GET", "/v1/jobs", host=f"127.0.0.1:{both.port}", headers=auth)[0] == 200
    # Any name at all, on the operator's word.
    anyhost = live_services(server, key_prefix="bgany" + server, allowed_hosts="*")
    assert send(anyhost, "GET", "/v1/jobs", host="rebind.test")[0] == 200


def test_a_state_change_from_another_origin_is_refused(open_service, redis_url):
    port = open_service.port
    prefix = open_service.prefix
    body, media = b'{"type": "teams"}', {"Content-Type": "application/json"}
    before = keys(redis_url, prefix)
    for foreign in ({"Origin": "http://evil.test"}, {"Origin": f"http://evil.test:{port}"},
                    {"Origin": "http://127.0.0.1:1"}, {"Origin": f"http://localhost:{port}"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site"}):
        status, headers, content = send(open_service, "POST", "/v1/jobs", body=body,
                                        headers={**media, **foreign})
        assert status == 403, (foreign, content)
        assert json.loads(content)["code"] == "cross_origin_refused"
        status, headers, content = send(open_service, "POST", "/registerJob", body=b"type=teams",
                                        headers={"Content-Type": FORM, **foreign})
        assert status == 403 and headers["Content-Type"].startswith("text/plain"), foreign
    assert keys(redis_url, prefix) == before
    # Reads from anywhere stay open (the Host check is what stops a rebinding page).
    assert send(open_service, "GET", "/v1/jobs", headers={"Origin": "http://evil.test",
                                                          "Sec-Fetch-Site": "cross-site"})[0] == 200


def test_same_origin_and_scripts_keep_working(open_service):
    port = open_service.port
    body, media = b'{"type": "teams"}', {"Content-Type": "application/json"}
    for same in ({}, {"Origin": f"http://127.0.0.1:{port}"},
                 {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
                 {"Sec-Fetch-Site": "none"}):
        status, _, content = send(open_service, "POST", "/v1/jobs", body=body,
                                  headers={**media, **same})
        assert status == 201, (same, content)
    status, _, _ = send(open_service, "POST", "/v1/jobs", host=f"localhost:{port}", body=body,
                        headers={**media, "Origin": f"http://localhost:{port}"})
    assert status == 201


def test_host_name_parsing():
    assert host_name("Example.COM.:8080") == "example.com"
    assert host_name("[::1]:80") == "::1"
    assert host_name("[::1]") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("host:notaport") == "host:notaport"


# -- nosniff, and a read's 503 ------------------------------------------------------

def test_every_answer_says_nosniff(open_service):
    port = open_service.port
    cases = [("GET", "/healthz", None, {}), ("GET", "/v1/jobs", None, {}),
             ("GET", "/v1/jobs/" + "0" * 32, None, {}), ("GET", "/no/such/path", None, {}),
             ("POST", "/registerJob", b"type=<script>alert(1)</script>", {"Content-Type": FORM}),
             ("GET", "/jobState?id=%3Cb%3Ex%3C/b%3E", None, {}), ("DELETE", "/healthz", None, {}),
             ("POST", "/v1/jobs", b"{", {"Content-Type": "application/json"}),
             ("GET", "/v1/jobs", None, {"Host": "rebind.test"}), ("GET", "/ui", None, {})]
    for method, path, body, headers in cases:
        host = headers.pop("Host", None)
        status, answer, _ = send(open_service, method, path, host=host, body=body,
                                 headers=headers)
        assert answer.get("X-Content-Type-Options") == "nosniff", (method, path, status)
    assert port


@pytest.mark.parametrize("server", SERVERS)
def test_answers_given_before_the_app_say_nosniff(live_services, server):
    """A head over the limit is refused by waitress itself, or on Granian (whose own
    limit is 8 KiB at least) by the guard in front of the app."""
    small = live_services(server, key_prefix="bgsmall" + server, max_header_bytes=4096)
    status, answer, _ = send(small, "GET", "/v1/jobs", headers={"X-Big": "x" * 6000})
    assert status == 431
    assert answer["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("server", SERVERS)
def test_a_reads_503_does_not_speak_of_a_change(server):
    store = RedisProcess().start()
    service = ServiceProcess("--server", server, "--redis-url", store.url,
                             "--redis-socket-timeout", "0.5").start()
    try:
        store.kill()
        status, headers, content = send(service, "GET", "/v1/jobs/" + "0" * 32)
        assert status == 503 and headers["Retry-After"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        detail = json.loads(content)["detail"]
        assert detail == "Redis is not answering now; retry shortly."
        status, _, content = send(service, "GET", "/jobState?id=" + "0" * 32)
        assert status == 503 and b"change" not in content
        status, _, content = send(service, "POST", "/v1/jobs", body=b'{"type": "teams"}',
                                  headers={"Content-Type": "application/json"})
        assert status == 503
        assert "the change was not applied" in json.loads(content)["detail"]
    finally:
        service.stop()
        store.close()


# -- a real browser on another origin -------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
        chromium_path()
    except (ImportError, BrowserMissing) as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no browser: {error}")
        pytest.skip(str(error))
    from tests.browser import CHROMIUM_ARGS
    with sync_playwright() as driver:
        # rebind.test resolves to this machine, as a rebinding name does once rebound.
        browser = driver.chromium.launch(
            executable_path=chromium_path(), headless=True,
            args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"])
        yield browser
        browser.close()


class _AttackerSite:
    """Another origin (another port) serving pages that post forms to the service."""

    def __init__(self, pages: dict[str, str]) -> None:
        def handler(*args):
            return _Page(pages, *args)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Page(BaseHTTPRequestHandler):
    def __init__(self, pages, *args) -> None:
        self.pages = pages
        super().__init__(*args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        page = self.pages.get(self.path, "").encode()
        self.send_response(200 if page else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args) -> None:
        pass


def _auto_form(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input name="{k}" value="{v}">' for k, v in fields.items())
    return (f'<form method="POST" action="{action}">{inputs}</form>'
            "<script>document.forms[0].submit()</script>")


@pytest.mark.browser
@pytest.mark.parametrize("server", SERVERS)
def test_a_page_on_another_origin_can_neither_post_forms_nor_rebind(chromium, redis_url,
                                                                    live_services, server):
    prefix = "bgweb" + server + uuid.uuid4().hex[:6]
    service = live_services(server, key_prefix=prefix)
    target = f"http://127.0.0.1:{service.port}"
    status, _, content = send(service, "POST", "/v1/jobs", body=b'{"type": "teams"}',
                              headers={"Content-Type": "application/json"})
    victim = json.loads(content)["id"]
    site = _AttackerSite({
        "/register": _auto_form(target + "/registerJob", {"type": "teams"}),
        "/kill": _auto_form(target + "/jobState", {"id": victim, "command": "kill"}),
    })
    page = chromium.new_page()
    try:
        before = keys(redis_url, prefix)
        for name, path in (("register", "/registerJob"), ("kill", "/jobState")):
            with page.expect_response(lambda r, p=path: r.url.startswith(target + p),
                                      timeout=15_000) as answer:
                page.goto(f"{site.url}/{name}")
            assert answer.value.status == 403, (name, answer.value.text())
            assert answer.value.headers["x-content-type-options"] == "nosniff"
        assert keys(redis_url, prefix) == before
        assert send(service, "GET", f"/jobState?id={victim}")[2].endswith(b" -- start")

        # Rebound: the attacker's name now leads here, and the browser names it.
        rebound = page.goto(f"http://rebind.test:{service.port}/v1/jobs", timeout=15_000)
        assert rebound.status == 421
        # The service's own name in the same browser: answered.
        own = page.goto(f"http://localhost:{service.port}/v1/jobs", timeout=15_000)
        assert own.status == 200
    finally:
        page.close()
        site.close()
