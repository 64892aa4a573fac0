"""What operators asked for in issue 20: run a job again, and the workers."""

from __future__ import annotations

from urllib.parse import quote

import falcon

from app.config import Config
from app.inputs import int_param, single_param
from app.model import format_time
from app.problems import bad_request
from app.representation import etag, job_json
from app.resources.common import check_job_id
from app.resources.jobs import idempotency_key, refuse_unknown_params
from app.schemas import WORKER_CURSOR_PATTERN, matches
from app.store import JobStore


@falcon.before(check_job_id)
class JobRerun:
    """POST /v1/jobs/{id}/rerun: a new job like an ended one, owned by the caller."""

    # The roles that may register may run a job again: it registers one.
    permissions = {"POST": "register"}

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        key = idempotency_key(req)
        job, created, now_ms = self._store.rerun(
            job_id, actor=req.context.principal.name, owner=req.context.principal.owner,
            idempotency_key=key)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.location = f"/v1/jobs/{job.id}"
        resp.etag = etag(job)
        resp.media = job_json(job, now_ms)


class WorkerCollection:
    """GET /v1/workers: every worker seen in heartbeats, newest heartbeat first."""

    permissions = {"GET": "read"}

    def __init__(self, store: JobStore, config: Config) -> None:
        self._store = store
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        refuse_unknown_params(req, frozenset({"limit", "cursor"}))
        limit = int_param(req, "limit", minimum=1, maximum=self._config.max_list_limit,
                          default=50)
        cursor = single_param(req, "cursor")
        try:
            if cursor is not None and not matches(WORKER_CURSOR_PATTERN, cursor):
                raise ValueError(cursor)
            workers, next_cursor, _ = self._store.workers(limit=limit, cursor=cursor)
        except ValueError:
            raise bad_request("invalid_cursor", "the cursor is not one this service gave") \
                from None
        resp.media = {"workers": [
            {"name": w.name, "last_heartbeat_at": format_time(w.last_heartbeat_at),
             "jobs": w.jobs, "stalled": w.stalled,
             "jobs_url": f"/v1/jobs?worker={quote(w.name, safe='')}"}
            for w in workers], "next_cursor": next_cursor,
            "stalled_exact": all(w.stalled_exact for w in workers)}
