"""Liveness, readiness and metrics: open to all, like a load balancer expects."""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.errors import StoreUnavailable
from app.observability import Metrics
from app.store import JobStore


class Healthz:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "ok"


class Readyz:
    def __init__(self, store: JobStore, retry_after: int) -> None:
        self._store = store
        self._retry_after = retry_after

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        try:
            ready = self._store.ready()
        except StoreUnavailable:
            ready = False
        if ready:
            resp.text = "ready"
        else:
            resp.status = falcon.HTTP_503
            resp.set_header("Retry-After", str(self._retry_after))
            resp.text = "redis unavailable or scripts not loaded"


class MetricsResource:
    permissions = {"GET": "read"}

    def __init__(self, store: JobStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            for state, count in self._store.count_by_state().items():
                self._metrics.jobs.labels(state).set(count)
        except StoreUnavailable:
            self._metrics.redis_errors.inc()
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._metrics.registry)
