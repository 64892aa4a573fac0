"""The Falcon application factory."""

from __future__ import annotations

import threading
from typing import Any

import falcon
from falcon import Request, Response

from app.auth import AuthMiddleware, TokenRegistry
from app.browser_guard import BrowserGuard
from app.config import Config
from app.errors import KarmchariError, StoreUnavailable
from app.events import ChangeNotifier
from app.inputs import QueryEncodingMiddleware
from app.observability import Metrics, ObservabilityMiddleware
from app.openapi import OpenApiDocument
from app.problems import make_domain_error_handler, serialize_error
from app.resources.dashboard import (
    DashboardAssets,
    RootRedirect,
    WhoAmI,
    unknown_dashboard_path,
)
from app.resources.health import Healthz, MetricsResource, Readyz
from app.resources.jobs import JobCollection, JobCommands, JobHistory, JobItem
from app.resources.legacy import JobState, RegisterJob
from app.resources.operators import JobRerun, WorkerCollection
from app.resources.overview import BulkCommands, Stats
from app.resources.watch import Watch
from app.resources.workers import Heartbeats, JobHeartbeat
from app.schemas import validators
from app.store import JobStore
from app.store_setup import build_store

__all__ = ["build_store", "create_app", "get_app"]  # build_store: also for tests and bench


def create_app(config: Config | None = None, store: JobStore | None = None,
               tokens: TokenRegistry | None = None,
               notifier: ChangeNotifier | None = None,
               draining: threading.Event | None = None) -> falcon.App[Request, Response]:
    """``draining``: set when the service drains (bulk commands then stop early)."""
    config = config or Config()
    if store is None:
        store = build_store(config, config.store_url or "redis://127.0.0.1:6379/0")
    if tokens is None:
        tokens = TokenRegistry.load(config.tokens, config.tokens_file)
    metrics = Metrics()
    if notifier is None:
        notifier = ChangeNotifier(store, config.waiter_limit,
                                  per_holder=config.waiter_limit_per_client)
    notifier.start()
    metrics.waiters.set_function(notifier.waiting)
    metrics.watched.set_function(notifier.watched)
    checks = validators(config)

    middleware: list[Any] = [ObservabilityMiddleware(metrics, config.access_log),
                             BrowserGuard(config, tokens.enabled), QueryEncodingMiddleware(),
                             AuthMiddleware(tokens)]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(serialize_error)
    domain_errors = make_domain_error_handler(config.retry_after_seconds)

    def handle_domain_error(req: Request, resp: Response, error: KarmchariError,
                            params: dict[str, Any]) -> None:
        if isinstance(error, StoreUnavailable):
            metrics.redis_errors.inc()
        domain_errors(req, resp, error, params)

    app.add_error_handler(KarmchariError, handle_domain_error)

    app.add_route("/registerJob", RegisterJob(store, config))
    app.add_route("/jobState", JobState(store, config))
    app.add_route("/v1/jobs", JobCollection(store, config, checks))
    app.add_route("/v1/jobs/commands", BulkCommands(store, config, checks, draining))
    app.add_route("/v1/jobs/{job_id}", JobItem(store, config, notifier))
    app.add_route("/v1/jobs/{job_id}/commands", JobCommands(store, config, checks))
    app.add_route("/v1/jobs/{job_id}/history", JobHistory(store))
    app.add_route("/v1/jobs/{job_id}/rerun", JobRerun(store))
    app.add_route("/v1/workers", WorkerCollection(store, config))
    app.add_route("/v1/jobs/{job_id}/heartbeat", JobHeartbeat(store, config, checks))
    app.add_route("/v1/heartbeats", Heartbeats(store, config, checks))
    app.add_route("/v1/stats", Stats(store, config))
    app.add_route("/v1/watch", Watch(config, notifier, checks))
    app.add_route("/healthz", Healthz())
    app.add_route("/readyz", Readyz(store, config.retry_after_seconds))
    app.add_route("/metrics", MetricsResource(store, metrics))
    app.add_route("/openapi.json", OpenApiDocument(config))
    app.add_route("/v1/whoami", WhoAmI(tokens.enabled, config.job_types))
    dashboard = DashboardAssets()
    app.add_route("/", RootRedirect())
    app.add_route("/ui", dashboard)
    app.add_route("/ui/{name}", dashboard)
    app.add_sink(unknown_dashboard_path, "/ui/")
    return app


def get_app() -> falcon.App[Request, Response]:
    """For ``waitress-serve --call app.app:get_app``: settings from the environment."""
    return create_app(Config.from_env())
