"""Request ids, access logs and Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from app import access_log as access_writer
from app.config import ACCESS_LOG_MODES
from app.request_metrics import RequestMetrics

access_log = logging.getLogger("karmchari.access")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}\Z")
_QUOTED_METHODS = {method: json.dumps(method) for method in falcon.COMBINED_METHODS}

# Request ids are made 64 at a time per thread: one os.urandom call and one
# big-integer operation setting the version-4 and variant bits of all of them.
_IDS_PER_BATCH = 64
_ID_MASK = sum((~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)) << (128 * i)
               for i in range(_IDS_PER_BATCH))
_ID_BITS = sum(((0x4 << 76) | (0x2 << 62)) << (128 * i) for i in range(_IDS_PER_BATCH))
_ids = threading.local()


def _forget_ids() -> None:
    """A forked child must not hand out the ids its parent still holds."""
    global _ids
    _ids = threading.local()


os.register_at_fork(after_in_child=_forget_ids)


def new_request_id() -> str:
    """What ``uuid.uuid4().hex`` gives (random, with the version-4 and variant
    bits), without building a UUID object or calling os.urandom every request."""
    try:
        batch: list[str] = _ids.batch
        return batch.pop()
    except (AttributeError, IndexError):
        size = 16 * _IDS_PER_BATCH
        text = (int.from_bytes(os.urandom(size), "big") & _ID_MASK | _ID_BITS).to_bytes(
            size, "big").hex()
        batch = _ids.batch = [text[i:i + 32] for i in range(0, 2 * size, 32)]
        return batch.pop()


def _quoted(text: str) -> str:
    """``json.dumps(text)``: quotes, with control characters, quotes,
    backslashes and non-ASCII escaped. Printable ASCII without quotes or
    backslashes (nearly every path) is only put in quotes, which is what
    json.dumps does with it, at a fraction of the cost."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)


class _AccessLogDrops:
    """``karmchari_access_log_dropped_total``: lines the batching writer had no
    room for (it is one per process, as standard error is)."""

    def collect(self) -> Iterable[Metric]:
        writer = access_writer.WRITER
        created = writer.created if prometheus_metrics._use_created else None
        return [CounterMetricFamily(
            "karmchari_access_log_dropped", "Access-log lines dropped: the writer fell behind",
            value=writer.dropped, created=created)]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # karmchari_http_requests{route,method,status} and
        # karmchari_http_request_duration_seconds{route,method}.
        self.http = RequestMetrics(("karmchari_http_requests", "HTTP requests"),
                                   ("karmchari_http_request_duration_seconds",
                                    "Time to answer a request"), LATENCY_BUCKETS)
        self.registry.register(self.http)
        self.redis_errors = Counter("karmchari_redis_errors", "Redis calls that failed",
                                    registry=self.registry)
        self.jobs = Gauge("karmchari_jobs", "Jobs stored, by state", ["state"],
                          registry=self.registry)
        self.waiters = Gauge("karmchari_long_poll_waiters",
                             "Requests waiting in a long-poll or a watch",
                             registry=self.registry)
        self.watched = Gauge("karmchari_watched_jobs", "Jobs that waiting requests wait on",
                             registry=self.registry)
        self.registry.register(_AccessLogDrops())


class ObservabilityMiddleware:
    """First in the chain: gives every request an id (``X-Request-ID`` kept when
    sane, else generated) and ``X-Content-Type-Options: nosniff``, marks the old
    endpoints for plain-text errors, and records one access-log line and the
    metrics when the response is done.

    ``access``: "stderr" queues the line for the batching writer
    (app/access_log.py), "logging" hands it to the ``karmchari.access`` logger
    (for an operator's own logging configuration), "off" makes none."""

    def __init__(self, metrics: Metrics, access: str = "stderr") -> None:
        if access not in ACCESS_LOG_MODES:
            raise ValueError(f"access log: one of {', '.join(ACCESS_LOG_MODES)}, not {access!r}")
        self._observe = metrics.http.observe
        self._access = access
        self._queue_line = access_writer.WRITER.write

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        given = req.get_header("X-Request-ID")
        req.context.request_id = given if given and _REQUEST_ID_RE.match(given) \
            else new_request_id()
        resp.set_header("X-Request-ID", req.context.request_id)
        # Every answer: no browser may take an error's echoed text for HTML or script.
        resp.set_header("X-Content-Type-Options", "nosniff")

    def process_resource(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, params: dict[str, Any]) -> None:
        req.context.plain_errors = getattr(resource, "plain_text_errors", False)

    def process_response(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, req_succeeded: bool) -> None:
        # Any token is a method on the wire: a label per made-up method would
        # let clients grow the metrics without bound. Routes are URI templates.
        method = req.method if req.method in falcon.COMBINED_METHODS else "other"
        elapsed = time.perf_counter() - req.context.started
        status = resp.status_code
        self._observe(req.uri_template or "unmatched", method, status, elapsed)
        if self._access == "off" or not access_log.isEnabledFor(logging.INFO):
            return
        principal = getattr(req.context, "principal", None)
        # One logfmt line; the path is quoted with its control characters
        # escaped, so a %0d%0a in a URL cannot forge a second line.
        line = (f"remote={req.remote_addr} "
                f"method={_QUOTED_METHODS.get(req.method) or json.dumps(req.method)} "
                f"path={_quoted(req.path)} status={status} ms={elapsed * 1000:.1f} "
                f"request_id={req.context.request_id} "
                f"actor={_quoted(principal.name) if principal and principal.name else '-'}")
        if self._access == "stderr":
            self._queue_line(time.time(), line)
        else:
            # handle(), not info(): the same record and handlers, without the
            # walk up the stack for a source line the format does not show.
            access_log.handle(access_log.makeRecord(
                access_log.name, logging.INFO, "(access log)", 0, line, (), None))
