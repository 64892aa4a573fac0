"""Many jobs at once: a command for a set of jobs, and the counts of an overview."""

from __future__ import annotations

import falcon

from app.config import Config
from app.inputs import read_json
from app.model import format_time
from app.problems import bad_request
from app.store import JobFilter, JobStore


class BulkCommands:
    permissions = {"POST": "command"}
    refusals = {"POST": "send commands to many jobs"}

    def __init__(self, store: JobStore, config: Config, validators: dict) -> None:
        self._store = store
        self._config = config
        self._validator = validators["BulkCommand"]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._validator, self._config.max_body_bytes)
        options = {"actor": req.context.principal.name, "reason": body.get("reason", "")}
        if "ids" in body:
            result = self._store.bulk_command(body["command"], ids=body["ids"], **options)
        else:
            where = body["where"]
            labels = tuple(item.partition(":")[::2] for item in where.get("label", []))
            job_filter = JobFilter(state=where.get("state"), type=where.get("type"),
                                   labels=labels, stalled=where.get("stalled"))
            try:
                result = self._store.bulk_command(body["command"], where=job_filter,
                                                  cursor=body.get("cursor"), **options)
            except ValueError:
                raise bad_request("invalid_cursor",
                                  "the cursor is not one this service gave") from None
        resp.media = result.as_dict()


class Stats:
    permissions = {"GET": "read"}

    def __init__(self, store: JobStore, config: Config) -> None:
        self._store = store
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        stats = self._store.stats(self._config.job_types)
        resp.media = {
            "total": stats.total, "states": stats.states, "stalled": stats.stalled,
            "types": stats.types, "labels": stats.labels,
            "changes_per_minute": [{"minute": format_time(ms), "count": count}
                                   for ms, count in stats.changes_per_minute],
            "now": format_time(stats.now_ms)}
