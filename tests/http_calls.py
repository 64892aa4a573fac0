"""Plain HTTP calls to a running ``karmchari serve``: one fresh connection
per call, so concurrent callers really are concurrent clients."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    text: str
    elapsed: float = 0.0  # seconds from sending the request to the end of the answer

    def json(self):
        return json.loads(self.text)


def call(base_url: str, method: str, path: str, *, form: dict | None = None,
         body: dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> Reply:
    """``form`` is sent form-encoded (the old endpoints), ``body`` as JSON."""
    parts = urllib.parse.urlsplit(base_url)
    headers = dict(headers or {})
    payload = None
    if form is not None:
        payload = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        text = response.read().decode()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, text,
                     time.monotonic() - started)
    finally:
        connection.close()
