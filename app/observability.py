"""Request ids, access logs and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import time

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

access_log = logging.getLogger("karmchari.access")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")
_QUOTED_METHODS = {method: json.dumps(method) for method in falcon.COMBINED_METHODS}


def new_request_id() -> str:
    """What ``uuid.uuid4().hex`` gives (random, with the version-4 and variant
    bits), without building a UUID object on every request."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def _quoted(text: str) -> str:
    """``json.dumps(text)``: quotes, with control characters, quotes,
    backslashes and non-ASCII escaped. Printable ASCII without quotes or
    backslashes (nearly every path) is only put in quotes, which is what
    json.dumps does with it, at a fraction of the cost."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("karmchari_http_requests", "HTTP requests",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("karmchari_http_request_duration_seconds",
                                 "Time to answer a request", ["route", "method"],
                                 registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                          5, 10, 30, 60))
        self.redis_errors = Counter("karmchari_redis_errors", "Redis calls that failed",
                                    registry=self.registry)
        self.jobs = Gauge("karmchari_jobs", "Jobs stored, by state", ["state"],
                          registry=self.registry)
        self.waiters = Gauge("karmchari_long_poll_waiters",
                             "Requests waiting in a long-poll or a watch",
                             registry=self.registry)
        self.watched = Gauge("karmchari_watched_jobs", "Jobs that waiting requests wait on",
                             registry=self.registry)


class ObservabilityMiddleware:
    """First in the chain: gives every request an id (``X-Request-ID`` kept when
    sane, else generated) and ``X-Content-Type-Options: nosniff``, marks the old
    endpoints for plain-text errors, and records one access-log line and the
    metrics when the response is done."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # The labelled children of the two metrics, by (route, method[, status]):
        # prometheus-client's labels() looks them up under a lock on every call.
        # Routes are URI templates and methods a fixed set: the dicts stay small.
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    def process_request(self, req, resp) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Request-ID")
        req.context.request_id = given if given and _REQUEST_ID_RE.match(given) \
            else new_request_id()
        resp.set_header("X-Request-ID", req.context.request_id)
        # Every answer: no browser may take an error's echoed text for HTML or script.
        resp.set_header("X-Content-Type-Options", "nosniff")

    def process_resource(self, req, resp, resource, params) -> None:
        req.context.plain_errors = getattr(resource, "plain_text_errors", False)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        route = req.uri_template or "unmatched"
        # Any token is a method on the wire: a label per made-up method would
        # let clients grow the metrics without bound.
        method = req.method if req.method in falcon.COMBINED_METHODS else "other"
        elapsed = time.perf_counter() - req.context.started
        status = resp.status_code
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters.setdefault(
                (route, method, status), self._metrics.requests.labels(route, method, str(status)))
        counter.inc()
        timer = self._timers.get((route, method))
        if timer is None:
            timer = self._timers.setdefault((route, method),
                                            self._metrics.latency.labels(route, method))
        timer.observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            principal = getattr(req.context, "principal", None)
            # One logfmt line; the path is quoted with its control characters
            # escaped, so a %0d%0a in a URL cannot forge a second line.
            line = (f"remote={req.remote_addr} "
                    f"method={_QUOTED_METHODS.get(req.method) or json.dumps(req.method)} "
                    f"path={_quoted(req.path)} status={status} ms={elapsed * 1000:.1f} "
                    f"request_id={req.context.request_id} "
                    f"actor={_quoted(principal.name) if principal and principal.name else '-'}")
            # handle(), not info(): the same record and handlers, without the
            # walk up the stack for a source line the format does not show.
            access_log.handle(access_log.makeRecord(
                access_log.name, logging.INFO, "(access log)", 0, line, (), None))
