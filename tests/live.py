"""Falcon's ``simulate_*`` interface over real HTTP to a running ``karmchari
serve``, so the HTTP-level suites run unchanged against each server
(``--server waitress`` and ``--server granian``)."""

from __future__ import annotations

import http.client
import json as jsonlib
import threading
import urllib.parse
from functools import cached_property

from falcon.util import CaseInsensitiveDict, to_query_str

SERVERS = ("waitress", "granian")


class Result:
    """The members of ``falcon.testing.Result`` the suites use."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]],
                 content: bytes) -> None:
        self.status_code = status
        self.status = f"{status} {reason}"
        self.headers = CaseInsensitiveDict(headers)
        self.content = content

    @cached_property
    def text(self) -> str:
        return self.content.decode()

    @cached_property
    def json(self):
        return jsonlib.loads(self.content) if self.content else None


class LiveClient:
    """One keep-alive connection per thread to ``base_url``."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.default_headers = dict(headers or {})
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def simulate_request(self, method: str = "GET", path: str = "/", query_string=None,
                         headers=None, content_type=None, body=None, json=None, params=None,
                         params_csv: bool = False, **unsupported) -> Result:
        assert not unsupported, f"not supported over real HTTP: {sorted(unsupported)}"
        if params:
            query_string = to_query_str(params, comma_delimited_lists=params_csv, prefix=False)
        target = path + ("?" + query_string if query_string else "")
        sent = dict(self.default_headers)
        sent.update(dict(headers.items() if hasattr(headers, "items") else headers or ()))
        if json is not None:
            body = jsonlib.dumps(json)
            content_type = content_type or "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        if isinstance(body, str):
            body = body.encode()
        if body is not None or method in ("POST", "PUT", "PATCH"):
            sent.setdefault("Content-Length", str(len(body or b"")))
        for attempt in (1, 2):
            reused = attempt == 1 and getattr(self._local, "connection", None) is not None
            connection = self._connection(fresh=attempt == 2)
            try:
                connection.putrequest(method, target, skip_accept_encoding=True)
                for name, value in sent.items():
                    connection.putheader(name, value)
                connection.endheaders(body)
                response = connection.getresponse()
                content = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed while it was idle: once
                # more on a new one, as HTTP clients do. A new connection: an error.
                if not reused:
                    raise
                continue
            if response.will_close:
                self._connection(fresh=True)
            return Result(response.status, response.reason, response.getheaders(), content)
        raise AssertionError("unreachable")

    def _method(name: str):  # noqa: N805 - builds the simulate_* methods below
        def simulate(self, path: str = "/", **kwargs) -> Result:
            return self.simulate_request(name, path, **kwargs)
        simulate.__name__ = f"simulate_{name.lower()}"
        return simulate

    simulate_get = _method("GET")
    simulate_head = _method("HEAD")
    simulate_post = _method("POST")
    simulate_put = _method("PUT")
    simulate_patch = _method("PATCH")
    simulate_delete = _method("DELETE")
    simulate_options = _method("OPTIONS")
