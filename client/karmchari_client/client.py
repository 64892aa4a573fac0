"""A small, thread-safe client of the JSON API (one keep-alive connection per
thread)."""

from __future__ import annotations

import builtins
import http.client
import json
import os
import socket
import threading
import urllib.parse
import uuid
from typing import Any, cast

from karmchari_client.states import DONE, FAILED, KILLED, PAUSED, RUNNING

# A JSON object as the service sends it.
Json = dict[str, Any]


class ApiError(Exception):
    """The service answered with an error (RFC 9457 problem)."""

    def __init__(self, status: int, problem: Json) -> None:
        self.status = status
        self.problem = problem
        self.code = problem.get("code", "")
        self.current_state = problem.get("current_state")
        super().__init__(f"{status} {problem.get('title', '')}: "
                         f"{problem.get('detail') or self.code}".rstrip(": "))


class ServiceUnavailable(ApiError):
    """The service cannot be reached, or answered 503/429: worth retrying.

    ``code`` is the service's: ``store_unavailable`` (nothing was applied),
    ``outcome_unknown`` (a change may have been applied: retry with the same
    ``idempotency_key``, which this client sent) or ``too_many_waiters``; or
    ``unavailable`` when the service itself could not be reached."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int = 0,
                 code: str = "unavailable") -> None:
        super().__init__(status, {"title": "Service unavailable", "detail": reason,
                                  "code": code})
        self.retry_after = retry_after
        self.idempotency_key: str | None = None  # the key of the write that got this


# GET /v1/workers's words for the states of a worker's jobs.
_STATE_OF_WORD = {"running": RUNNING, "paused": PAUSED, "killed": KILLED, "done": DONE,
                  "failed": FAILED}


class Client:
    """Thread-safe: each thread gets its own keep-alive connection; ``close()``
    closes them all."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 10.0) -> None:
        url = url or os.environ.get("KARMCHARI_URL") or "http://127.0.0.1:51463"
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._parts = parts
        self._host: str = parts.hostname
        self._token = token if token is not None else os.environ.get("KARMCHARI_TOKEN")
        self._timeout = timeout
        self._local = threading.local()
        # Every thread's connection, and those in a request now; close() uses both.
        self._connections: set[http.client.HTTPConnection] = set()
        self._in_flight: set[http.client.HTTPConnection] = set()
        self._connections_lock = threading.Lock()

    @property
    def url(self) -> str:
        return urllib.parse.urlunsplit(self._parts)

    @property
    def token(self) -> str | None:
        return self._token

    # -- jobs ---------------------------------------------------------------

    def register(self, job_type: str, *, name: str | None = None,
                 labels: dict[str, str] | None = None, heartbeat_timeout: int | None = None,
                 idempotency_key: str | None = None) -> Json:
        """Register a job. Sent with an Idempotency-Key (a new one unless given),
        so a retry, this client's or the caller's with the same key, never
        registers a second job."""
        body: dict[str, Any] = {"type": job_type}
        if name:
            body["name"] = name
        if labels:
            body["labels"] = labels
        if heartbeat_timeout is not None:
            body["heartbeat_timeout"] = heartbeat_timeout
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return self._json("POST", "/v1/jobs", body, headers=headers)

    def get(self, job_id: str, *, wait: float | None = None,
            version: int | None = None) -> Json:
        query = {}
        if wait is not None:
            query["wait"] = f"{wait:g}"
            if version is not None:
                query["version"] = str(version)
        timeout = self._timeout + (wait or 0)
        return self._json("GET", f"/v1/jobs/{job_id}", query=query, timeout=timeout)

    def watch(self, jobs: dict[str, int], *, wait: float) -> Json:
        """Wait up to ``wait`` seconds until a job's version differs from the
        one given; ``{"changed": [jobs], "missing": [ids]}``."""
        return self._json("POST", "/v1/watch", {"jobs": jobs, "wait": wait},
                            timeout=self._timeout + wait, retry_safe=True)

    def command(self, job_id: str, command: str, *, reason: str | None = None,
                if_match: int | None = None, idempotency_key: str | None = None) -> Json:
        """Send a command, with an Idempotency-Key (a new one unless given): a
        retry with the same key is applied once."""
        body = {"command": command, **({"reason": reason} if reason else {})}
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        return self._json("POST", f"/v1/jobs/{job_id}/commands", body, headers=headers)

    def command_many(self, command: str, *, ids: list[str] | None = None,
                     where: Json | None = None, reason: str | None = None,
                     cursor: str | None = None) -> Json:
        """One command for the jobs named by ``ids``, or for every job matching
        ``where`` (``state``, ``type``, ``label``: ["key:value", ...], ``stalled``).
        Answers the counts; a walk that stopped at the service's limit has a
        ``next_cursor`` to send back as ``cursor``, with the same ``where``."""
        body: dict[str, Any] = {"command": command, **({"reason": reason} if reason else {})}
        if ids is not None:
            body["ids"] = ids
        else:
            body["where"] = where or {}
            if cursor:
                body["cursor"] = cursor
        return self._json("POST", "/v1/jobs/commands", body, timeout=max(self._timeout, 60))

    def stats(self) -> Json:
        return self._json("GET", "/v1/stats")

    def history(self, job_id: str) -> list[Json]:
        entries = self._json("GET", f"/v1/jobs/{job_id}/history")["entries"]
        return cast(list[Json], entries)

    def list(self, *, state: str | None = None, type: str | None = None,
             labels: dict[str, str] | None = None, stalled: bool | None = None,
             started: bool | None = None, worker: str | None = None,
             name_prefix: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> Json:
        """A page of jobs, newest first; ``{"jobs": [...], "next_cursor": ...}``.
        ``started``: whether the job has had a heartbeat (``state="start",
        started=False, stalled=False``: the jobs waiting for a worker);
        ``worker``: jobs whose last heartbeat named it; ``name_prefix``: jobs
        whose name starts with it."""
        return self._json("GET", "/v1/jobs", query=listing_query(
            state=state, type=type, labels=labels, stalled=stalled, started=started,
            worker=worker, name_prefix=name_prefix, limit=limit, cursor=cursor))

    def workers(self, *, limit: int | None = None, cursor: str | None = None) -> Json:
        """Every worker seen in heartbeats, with its jobs by state:
        ``{"workers": [...], "next_cursor": ...}``. The service counts them by
        the dashboard's words ("running", "paused"); each worker's ``jobs`` here
        is keyed by the state names of the rest of this library ("start", "pause")."""
        page = self._json("GET", "/v1/workers", query=listing_query(limit=limit, cursor=cursor))
        for worker in page.get("workers", []):
            worker["jobs"] = {_STATE_OF_WORD.get(word, word): count
                              for word, count in worker.get("jobs", {}).items()}
        return page

    def rerun(self, job_id: str, *, idempotency_key: str | None = None) -> Json:
        """Register a new job like an ended one (its type, name, labels and
        heartbeat timeout; ``retry_of`` names the old one). Sent with an
        Idempotency-Key (a new one unless given), so a retry reruns once."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return self._json("POST", f"/v1/jobs/{job_id}/rerun", headers=headers)

    def delete_jobs(self, *, ids: builtins.list[str] | None = None,
                    where: Json | None = None) -> Json:
        """Delete the ended jobs named by ``ids``, or every job matching
        ``where``, which must name final states only (admin). The answer adds
        ``deleted`` and ``refused_ids`` to the counts of ``command_many``."""
        return self.command_many("delete", ids=ids, where=where)

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/v1/jobs/{job_id}")

    # Heartbeats set values, so a repeated one changes nothing: safe to retry.
    def heartbeat(self, job_id: str, **report: Any) -> Json:
        body = {k: v for k, v in report.items() if v is not None}
        return self._json("POST", f"/v1/jobs/{job_id}/heartbeat", body, retry_safe=True)

    # builtins.list: in the class body "list" names the method above.
    def heartbeats(self, reports: builtins.list[Json]) -> builtins.list[Json]:
        answer = self._json("POST", "/v1/heartbeats", {"heartbeats": reports}, retry_safe=True)
        return cast(builtins.list[Json], answer["results"])

    # -- transport ----------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *,
                query: dict[str, str] | builtins.list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None,
                timeout: float | None = None, retry_safe: bool | None = None) -> Any:
        """One request. On a kept-alive connection the server had closed, it is
        sent again once, but only if that cannot apply it twice: reads, deletes,
        requests with an Idempotency-Key, or ``retry_safe``."""
        if retry_safe is None:
            retry_safe = method in ("GET", "HEAD", "DELETE") or \
                "Idempotency-Key" in (headers or {})
        if query:
            path += "?" + urllib.parse.urlencode(query)
        sent_headers = {"Accept": "application/json", **(headers or {})}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
            sent_headers["Content-Type"] = "application/json"
        if self._token:
            sent_headers["Authorization"] = f"Bearer {self._token}"
        key = sent_headers.get("Idempotency-Key")
        try:
            status, response_headers, data = self._send(method, path, payload, sent_headers,
                                                        timeout or self._timeout, retry_safe)
        except ServiceUnavailable as error:
            error.idempotency_key = key
            raise
        parsed = json.loads(data) if data and response_headers.get(
            "content-type", "").startswith(("application/json", "application/problem+json")) \
            else None
        if status in (429, 503):
            retry_after = response_headers.get("retry-after")
            unavailable = ServiceUnavailable((parsed or {}).get("detail", f"HTTP {status}"),
                                             float(retry_after) if retry_after else None,
                                             status, (parsed or {}).get("code") or "unavailable")
            unavailable.idempotency_key = key
            raise unavailable
        if status >= 400:
            raise ApiError(status, parsed or {"title": data.decode("utf-8", "replace")})
        return parsed

    def _json(self, method: str, path: str, body: Any = None, **options: Any) -> Json:
        """``request()`` for the endpoints that answer a JSON object."""
        return cast(Json, self.request(method, path, body, **options))

    def _send(self, method: str, path: str, payload: bytes | None, headers: dict[str, str],
              timeout: float, retry_safe: bool) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2) if retry_safe else (2,):
            connection = self._connection(timeout)
            try:
                connection.request(method, self._parts.path.rstrip("/") + path, payload,
                                   headers)
                response = connection.getresponse()
                data = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as error:
                # A kept-alive connection the server had closed: reconnect once,
                # unless close() closed it.
                if not self._drop(connection) or attempt == 2:
                    raise ServiceUnavailable(str(error)) from error
            except (OSError, http.client.HTTPException) as error:
                self._drop(connection)
                raise ServiceUnavailable(f"{self.url}: {error}") from error
            finally:
                with self._connections_lock:
                    self._in_flight.discard(connection)
        raise AssertionError("unreachable")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (http.client.HTTPSConnection if self._parts.scheme == "https"
                    else http.client.HTTPConnection)
            connection = kind(self._host, self._parts.port, timeout=timeout)
            self._local.connection = connection
        with self._connections_lock:
            # Again after close(): http.client reopens a closed connection.
            self._connections.add(connection)
            self._in_flight.add(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _drop(self, connection: http.client.HTTPConnection) -> bool:
        """Forget a broken connection; False when close() had closed it."""
        connection.close()
        self._local.connection = None
        with self._connections_lock:
            registered = connection in self._connections
            self._connections.discard(connection)
        return registered

    def close(self) -> None:
        """Close the connections of every thread. A request in flight in
        another thread (a long-poll) fails at once with ServiceUnavailable."""
        with self._connections_lock:
            for connection in self._connections:
                if connection not in self._in_flight:
                    connection.close()
                elif connection.sock is not None:
                    # Wake the thread blocked reading it; that thread closes it
                    # (http.client objects are not for two threads at once).
                    try:
                        connection.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self._connections.clear()


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def listing_query(*, labels: dict[str, str] | None = None, stalled: bool | None = None,
                  started: bool | None = None,
                  **filters: str | int | None) -> list[tuple[str, str]]:
    """The query string of a listing: the filters given (None: not given),
    ``stalled`` and ``started`` as true or false, each label as ``label=key:value``."""
    query = [(name, str(value)) for name, value in filters.items() if value is not None]
    for flag, value in (("stalled", stalled), ("started", started)):
        if value is not None:
            query.append((flag, "true" if value else "false"))
    return query + [("label", f"{k}:{v}") for k, v in (labels or {}).items()]


__all__ = ["ApiError", "Client", "Json", "ServiceUnavailable", "listing_query",
           "new_idempotency_key"]
