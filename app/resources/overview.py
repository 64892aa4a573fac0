"""Many jobs at once: a command for a set of jobs, and the counts of an overview."""

from __future__ import annotations

import threading
from typing import Any

import falcon

from app.auth import require
from app.config import Config
from app.inputs import read_json
from app.model import format_time
from app.problems import Problem, bad_request
from app.schemas import Validators
from app.store import BulkInterrupted, JobFilter, JobStore

INTERRUPTED_DETAIL = (
    "Redis stopped answering during the bulk command. The counts are those of the batches "
    "it answered; in_doubt jobs of the batch in flight may have changed too. To go on, send "
    "the same command again with next_cursor as cursor (or remaining_ids as ids): a job "
    "already changed is then counted unchanged, never changed twice.")


class BulkCommands:
    """At most ``config.bulk_limit`` run at once in a process (429 past it), so that
    bulk commands never hold the threads ordinary requests need; each stops at a
    batch boundary when the service drains, or answers what it did if Redis goes."""

    permissions = {"POST": "command"}
    refusals = {"POST": "send commands to many jobs"}

    def __init__(self, store: JobStore, config: Config, validators: Validators,
                 draining: threading.Event | None = None) -> None:
        self._store = store
        self._config = config
        self._validator = validators["BulkCommand"]
        self._slots = threading.BoundedSemaphore(config.bulk_limit)
        self._stop = (draining or threading.Event()).is_set

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._validator, self._config.max_body_bytes)
        if not self._slots.acquire(blocking=False):
            raise Problem(falcon.HTTP_429, "too_many_bulk_commands", "Too many bulk commands",
                          f"{self._config.bulk_limit} bulk commands are running in this "
                          "process already; ask again after Retry-After",
                          headers={"Retry-After": str(max(1, self._config.retry_after_seconds))})
        try:
            self._run(req, resp, body)
        except BulkInterrupted as cut:
            retry = {"Retry-After": str(self._config.retry_after_seconds)}
            raise Problem(falcon.HTTP_503, "bulk_interrupted", "Bulk command interrupted",
                          INTERRUPTED_DETAIL, retry, **cut.result.as_dict(),
                          in_doubt=cut.result.in_doubt) from None
        finally:
            self._slots.release()

    def _run(self, req: falcon.Request, resp: falcon.Response, body: dict[str, Any]) -> None:
        if body["command"] == "delete":
            self._delete(req, resp, body)
            return
        options = {"actor": req.context.principal.name, "reason": body.get("reason", ""),
                   "stop": self._stop}
        if "ids" in body:
            result = self._store.bulk_command(body["command"], ids=body["ids"], **options)
        else:
            job_filter = _filter_of(body["where"])
            try:
                result = self._store.bulk_command(body["command"], where=job_filter,
                                                  cursor=body.get("cursor"), **options)
            except ValueError:
                raise bad_request("invalid_cursor",
                                  "the cursor is not one this service gave") from None
        resp.media = result.as_dict()


    def _delete(self, req: falcon.Request, resp: falcon.Response, body: dict[str, Any]) -> None:
        """Ended jobs, by ids or by a filter that names a final state (admin)."""
        require(req, "delete", "delete jobs")
        if "ids" in body:
            result = self._store.bulk_delete(ids=body["ids"])
        else:
            try:
                result = self._store.bulk_delete(where=_filter_of(body["where"]),
                                                 cursor=body.get("cursor"))
            except ValueError:
                raise bad_request("invalid_cursor",
                                  "the cursor is not one this service gave") from None
        resp.media = result.as_dict()


def _filter_of(where: dict[str, Any]) -> JobFilter:
    labels = tuple(item.partition(":")[::2] for item in where.get("label", []))
    return JobFilter(state=where.get("state"), type=where.get("type"), labels=labels,
                     stalled=where.get("stalled"), started=where.get("started"))


class Stats:
    permissions = {"GET": "read"}

    def __init__(self, store: JobStore, config: Config) -> None:
        self._store = store
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        stats = self._store.stats(self._config.job_types)
        resp.media = {
            "total": stats.total, "states": stats.states, "stalled": stats.stalled,
            "waiting": stats.waiting, "types": stats.types, "labels": stats.labels,
            "changes_per_minute": [{"minute": format_time(ms), "count": count}
                                   for ms, count in stats.changes_per_minute],
            "now": format_time(stats.now_ms),
            "run_times": {t: r.as_dict() for t, r in stats.run_times.items()}}
