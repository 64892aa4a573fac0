"""The web dashboard: static files shipped inside the package, served under a
strict Content-Security-Policy, and ``GET /v1/whoami`` that tells the page
which buttons the caller's role may use."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import falcon

from app.auth import ROLE_PERMISSIONS

# No inline script or style anywhere: every byte the page runs comes from /ui/.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def load_assets() -> dict[str, tuple[bytes, str, str]]:
    """Every file of the package's ``ui`` folder: name -> (body, type, ETag).
    Read once at start-up; only these names can ever be served."""
    assets = {}
    for item in resources.files("app").joinpath("ui").iterdir():
        suffix = item.name[item.name.rfind("."):]
        if item.is_file() and suffix in CONTENT_TYPES:
            body = item.read_bytes()
            assets[item.name] = (body, CONTENT_TYPES[suffix],
                                 hashlib.sha256(body).hexdigest()[:20])
    return assets


def not_found() -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not found", description="no such dashboard file",
                               code="not_found", headers=dict(SECURITY_HEADERS))


def unknown_dashboard_path(req: falcon.Request, resp: falcon.Response, **_: Any) -> None:
    """A sink under /ui/ for what no route matches (a name with a slash, such
    as a decoded ``..%2F``): the same 404, with the same headers."""
    raise not_found()


def _secure(resp: falcon.Response) -> None:
    resp.set_headers(SECURITY_HEADERS)


class DashboardAssets:
    """``/ui/`` is the page, ``/ui/<name>`` its scripts and styles. Open without a
    token: they hold no data; the page asks for a token before any API call."""

    def __init__(self) -> None:
        self._assets = load_assets()

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = "index.html") -> None:
        asset = self._assets.get(name)
        if asset is None:
            raise not_found()
        body, content_type, tag = asset
        _secure(resp)
        # Revalidated every time, so an upgrade is seen at once; unchanged files cost a 304.
        resp.cache_control = ["no-cache"]
        resp.etag = tag
        if req.if_none_match and any(str(t) == tag for t in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = content_type
        resp.data = body


class RootRedirect:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # A copy: Falcon adds Location to the dict it is given, and this one is
        # shared by every dashboard answer.
        raise falcon.HTTPFound("/ui/", headers=dict(SECURITY_HEADERS))


class WhoAmI:
    """The caller's name and role (anonymous admin when auth is off), so the
    dashboard shows only the actions the server would accept, and the job
    types this service knows, for its filter."""

    permissions = {"GET": "read"}

    def __init__(self, auth_enabled: bool, job_types: tuple[str, ...]) -> None:
        self._auth_enabled = auth_enabled
        self._job_types = list(job_types)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = req.context.principal
        resp.media = {"name": principal.name, "role": principal.role,
                      "permissions": sorted(ROLE_PERMISSIONS[principal.role]),
                      "auth": self._auth_enabled, "job_types": self._job_types}
