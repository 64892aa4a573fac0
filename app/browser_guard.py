"""What a browser could be tricked into: DNS rebinding and cross-site requests.

A page on another site can make the browser send requests here: forms that
post to the old endpoints (CSRF), or, once its own name resolves to this
machine (DNS rebinding), any request at all, its answer readable. Two checks
refuse them, and leave curl and scripts alone, which send neither header:

- the ``Host`` must be one of the service's own names (its listening address,
  ``localhost``, a loopback address, or one of ``--allowed-hosts``) when the
  service runs without tokens, or when ``--allowed-hosts`` is set; else 421.
  A rebinding page is always reached through a name of the attacker's, which
  is not among them;
- a state-changing request (POST, PUT, PATCH, DELETE) that says it comes from
  another origin (``Origin``, or ``Sec-Fetch-Site: cross-site``) gets 403. The
  dashboard, served from the same origin, sends the service's own.

Both cost a few dict lookups a request: a Host header's verdict is kept.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import falcon

from app.config import Config
from app.problems import Problem

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# Verdicts kept, by Host header; past it, a Host is judged each time (made-up
# names cannot grow the memory).
MAX_VERDICTS = 256


def host_name(header: str) -> str:
    """The host of a ``Host`` header or an origin's authority, without its port,
    lower case, without the brackets of an IPv6 address or a final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    if not colon or not port.isdigit() or ":" in name:
        name = header
    return name.rstrip(".")


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class BrowserGuard:
    """Falcon middleware: the Host and Origin checks (see the module's text)."""

    def __init__(self, config: Config, tokens_enabled: bool) -> None:
        allowed = {host_name(h) for h in config.allowed_hosts}
        self._check_host = ("*" not in allowed) and (not tokens_enabled or bool(allowed))
        listening = host_name(config.host)
        self._names = frozenset({"localhost", listening, *allowed})
        # Listening on every address: any address of the machine may be named. An
        # address literal is never a rebinding (the page's name would be the attacker's).
        self._any_address = listening in WILDCARD_HOSTS
        self._origin_names = frozenset(allowed - {"*"})
        self._verdicts: dict[str, bool] = {}

    def _allowed_host(self, header: str) -> bool:
        name = host_name(header)
        if name in self._names:
            return True
        address = _ip(name)
        return address is not None and (address.is_loopback or self._any_address)

    def _same_origin(self, origin: str, host: str | None) -> bool:
        """``Origin`` is scheme://host[:port]: its authority must be the Host the
        request was sent to, or a name of --allowed-hosts (a proxy that rewrites Host)."""
        authority = origin.partition("://")[2].lower()
        if not authority:  # "null": a sandboxed page, a file, a redirect across sites
            return False
        return authority == (host or "").lower() or host_name(authority) in self._origin_names

    def process_resource(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, params: dict[str, Any]) -> None:
        env = req.env
        host = env.get("HTTP_HOST")
        if self._check_host and host is not None:
            verdict = self._verdicts.get(host)
            if verdict is None:
                verdict = self._allowed_host(host)
                if len(self._verdicts) < MAX_VERDICTS:
                    self._verdicts[host] = verdict
            if not verdict:
                raise Problem(
                    falcon.HTTP_421, "host_not_allowed", "Misdirected request",
                    "this service does not answer for the host named in the Host header; "
                    "if it is one of the service's names, add it to --allowed-hosts")
        if req.method in STATE_CHANGING:
            origin = env.get("HTTP_ORIGIN")
            if (origin is not None and not self._same_origin(origin, host)) \
                    or env.get("HTTP_SEC_FETCH_SITE") == "cross-site":
                raise Problem(
                    falcon.HTTP_403, "cross_origin_refused", "Forbidden",
                    "a request that changes something must come from this service's own "
                    "origin (its Origin header names another)")
