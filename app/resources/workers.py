"""Heartbeats: how workers report liveness and progress, and learn in the
answer which state their job should be in."""

from __future__ import annotations

import falcon

from app.config import Config
from app.errors import not_owner_detail
from app.inputs import read_json
from app.problems import bad_request
from app.resources.jobs import checked_id
from app.store import HeartbeatAnswer, HeartbeatReport, JobStore


def _report(job_id: str, body: dict) -> HeartbeatReport:
    return HeartbeatReport(job_id, worker=body.get("worker"), progress=body.get("progress"),
                           message=body.get("message"),
                           observed_state=body.get("observed_state"))


def _answer_json(answer: HeartbeatAnswer, owner: str) -> dict:
    if answer.not_owner:
        return {"id": answer.job_id, "found": True, "status": 403, "code": "not_owner",
                "detail": not_owner_detail(owner)}
    if not answer.found:
        return {"id": answer.job_id, "found": False}
    return {"id": answer.job_id, "found": True, "state": answer.state,
            "version": answer.version, "observed_state": answer.observed_state}


class JobHeartbeat:
    permissions = {"POST": "heartbeat"}

    def __init__(self, store: JobStore, config: Config, validators: dict) -> None:
        self._store = store
        self._config = config
        self._validator = validators["Heartbeat"]

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        checked_id(job_id)
        body = read_json(req, self._validator, self._config.max_body_bytes, required=False)
        owner = req.context.principal.owner
        answer = self._store.heartbeat(_report(job_id, body), owner=owner)
        resp.etag = str(answer.version)
        resp.media = _answer_json(answer, owner)


class Heartbeats:
    permissions = {"POST": "heartbeat"}

    def __init__(self, store: JobStore, config: Config, validators: dict) -> None:
        self._store = store
        self._config = config
        self._validator = validators["Heartbeats"]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = read_json(req, self._validator, self._config.max_body_bytes)["heartbeats"]
        if len({item["id"] for item in items}) != len(items):
            raise bad_request("duplicate_job", "each job may appear once per batch")
        owner = req.context.principal.owner
        answers = self._store.heartbeats([_report(item["id"], item) for item in items],
                                         owner=owner)
        resp.media = {"results": [_answer_json(a, owner) for a in answers]}
