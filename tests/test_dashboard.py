"""The dashboard's files and headers, and GET /v1/whoami (the browser tests
are in test_dashboard_browser.py)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
from falcon import testing

from app.app import create_app
from app.auth import TokenRegistry
from app.resources.dashboard import CONTENT_SECURITY_POLICY
from tests.servers import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "app" / "ui"


def test_root_redirects_to_the_dashboard(client):
    response = client.simulate_get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui/"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"


def test_the_redirect_leaves_no_location_on_the_page(client):
    """The redirect's headers must not leak into the page's answers."""
    client.simulate_get("/")
    for path in ("/ui/", "/ui/main.js", "/ui/nope.js"):
        assert "Location" not in client.simulate_get(path).headers, path


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
def test_page_is_served_with_a_strict_policy(client, path):
    response = client.simulate_get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<title>Karmchari</title>" in response.text


class _Page(HTMLParser):
    """Collects what the page loads, and anything inline the policy would block."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if "src" not in attrs:
                self.inline.append("script without src")
        if tag == "style":
            self.inline.append("<style>")
        for name in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}=")
        for name in ("src", "href"):
            if attrs.get(name, "").startswith("/"):
                self.sources.append(attrs[name])
            elif name == "src" and name in attrs:
                self.inline.append(f"non-local {tag} src")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append("inline script")


def test_page_has_nothing_inline_and_loads_only_local_files(client):
    page = _Page()
    page.feed(client.simulate_get("/ui/").text)
    assert page.inline == []
    assert page.sources, "the page loads its script and style"
    for source in page.sources:
        assert source.startswith("/ui/"), source
        assert client.simulate_get(source).status_code == 200, source


def test_every_module_import_is_a_shipped_file():
    for script in UI.glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', script.read_text()):
            assert (UI / name).is_file(), (script.name, name)


def test_every_module_is_preloaded(client):
    """The page names every module up front, so they load in parallel."""
    page = _Page()
    page.feed(client.simulate_get("/ui/").text)
    shipped = {f"/ui/{p.name}" for p in UI.glob("*.js")}
    assert shipped <= set(page.sources)


def test_scripts_never_build_html_from_strings():
    """Values from users reach the page as text only."""
    for script in UI.glob("*.js"):
        text = script.read_text()
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                      "eval(", "new Function"):
            assert risky not in text, (script.name, risky)


@pytest.mark.parametrize("name,content_type", [
    ("main.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
])
def test_assets_have_their_types_and_revalidate(client, name, content_type):
    response = client.simulate_get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    again = client.simulate_get(f"/ui/{name}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "%2E%2E", "dashboard.py",
                                  "index.html%00", "..%5Capp.py", "%00", "main.js%00.html",
                                  "%2Fetc%2Fpasswd"])
def test_unknown_files_are_not_found(client, name):
    response = client.simulate_get(f"/ui/{name}")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_package_data_ships_every_dashboard_file():
    """`pip install .` (not editable) must carry the dashboard: every file under
    app/ui matches a package-data pattern."""
    # (tomllib is Python 3.11+; the line is simple enough to read as it is.)
    line = re.search(r'^"app" = \[(.*)\]', (ROOT / "pyproject.toml").read_text(), re.M)
    patterns = re.findall(r'"([^"]+)"', line[1])
    files = [p.relative_to(ROOT / "app").as_posix() for p in UI.iterdir() if p.is_file()]
    assert files
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in patterns), name


def test_whoami_without_auth_is_an_anonymous_admin(client):
    response = client.simulate_get("/v1/whoami")
    assert response.status_code == 200
    assert response.json == {"name": "", "role": "admin", "auth": False,
                             "permissions": ["command", "delete", "finish", "heartbeat",
                                             "read", "register"],
                             "job_types": ["upload", "export", "teams"]}


@pytest.fixture
def auth_client(config, store):
    tokens = TokenRegistry.load(
        "ops:operator:op-secret-5f2a9c81,viewer:reader:read-secret-7d3e1b40")
    return testing.TestClient(create_app(config, store, tokens=tokens))


def test_whoami_tells_the_token_name_and_role(auth_client):
    reader = auth_client.simulate_get("/v1/whoami",
                                      headers={"Authorization": "Bearer read-secret-7d3e1b40"})
    assert reader.json == {"name": "viewer", "role": "reader", "auth": True,
                           "permissions": ["read"], "job_types": ["upload", "export", "teams"]}
    operator = auth_client.simulate_get("/v1/whoami",
                                        headers={"Authorization": "Bearer op-secret-5f2a9c81"})
    assert operator.json["role"] == "operator" and "command" in operator.json["permissions"]
    assert auth_client.simulate_get("/v1/whoami").status_code == 401
    # The page itself holds no data and loads without a token.
    assert auth_client.simulate_get("/ui/").status_code == 200


@pytest.mark.parametrize("server", ["waitress", "granian"])
def test_both_http_servers_serve_the_dashboard(redis_url, key_prefix, server):
    service = ServiceProcess("--redis-url", redis_url, "--server", server,
                             env={"KARMCHARI_KEY_PREFIX": key_prefix}).start()
    try:
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(f"{service.url}/")
        assert redirect.value.code == 302
        assert redirect.value.headers["Location"] == "/ui/"
        for path, content_type in [("/ui/", "text/html"), ("/ui/main.js", "text/javascript")]:
            with urllib.request.urlopen(f"{service.url}{path}") as response:
                assert response.headers["Content-Type"].startswith(content_type)
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert response.read() == (UI / (path[4:] or "index.html")).read_bytes()
    finally:
        service.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
