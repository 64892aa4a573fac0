"""Heartbeats: how workers report liveness and progress, and learn in the
answer which state their job should be in."""

from __future__ import annotations

from typing import Any

import falcon
import orjson

from app.config import Config
from app.errors import not_owner_detail
from app.inputs import BatchShape, read_json, read_json_batch
from app.problems import bad_request
from app.resources.common import check_job_id
from app.schemas import Validators, request_schemas
from app.store import HeartbeatAnswer, HeartbeatReport, JobStore, heartbeat_args
from app.store.scripts import RecordHeartbeatsCode


def _report(job_id: str, body: dict[str, Any]) -> HeartbeatReport:
    return HeartbeatReport(job_id, worker=body.get("worker"), progress=body.get("progress"),
                           message=body.get("message"),
                           observed_state=body.get("observed_state"))


def _answer_json(answer: HeartbeatAnswer, owner: str) -> dict[str, Any]:
    if answer.not_owner:
        return {"id": answer.job_id, "found": True, "status": 403, "code": "not_owner",
                "detail": not_owner_detail(owner)}
    if not answer.found:
        return {"id": answer.job_id, "found": False}
    return {"id": answer.job_id, "found": True, "state": answer.state,
            "version": answer.version, "observed_state": answer.observed_state}


@falcon.before(check_job_id)
class JobHeartbeat:
    permissions = {"POST": "heartbeat"}

    def __init__(self, store: JobStore, config: Config, validators: Validators) -> None:
        self._store = store
        self._config = config
        self._validator = validators["Heartbeat"]

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        body = read_json(req, self._validator, self._config.max_body_bytes, required=False)
        owner = req.context.principal.owner
        answer = self._store.heartbeat(_report(job_id, body), owner=owner)
        resp.etag = str(answer.version)
        resp.media = _answer_json(answer, owner)


class Heartbeats:
    """A batch, the hot path of a worker fleet: no object per job on the way
    in or out, and the answer serialized with orjson."""

    permissions = {"POST": "heartbeat"}

    def __init__(self, store: JobStore, config: Config, validators: Validators) -> None:
        self._store = store
        self._config = config
        self._validator = validators["Heartbeats"]
        self._shape = BatchShape.of(request_schemas(config)["Heartbeats"])

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        items = read_json_batch(req, self._validator, self._config.max_body_bytes,
                                self._shape)["heartbeats"]
        job_ids = [item["id"] for item in items]
        if len(set(job_ids)) != len(items):
            raise bad_request("duplicate_job", "each job may appear once per batch")
        owner = req.context.principal.owner
        entries = self._store.record_heartbeats(
            job_ids, [heartbeat_args(item.get("worker"), item.get("progress"),
                                     item.get("message"), item.get("observed_state"))
                      for item in items], owner=owner)
        results = []
        for job_id, entry in zip(job_ids, entries, strict=True):
            state = entry[0]
            if type(state) is not int:  # recorded: the job's state
                results.append({"id": job_id, "found": True, "state": state,
                                "version": int(entry[1]), "observed_state": entry[2]})
            elif state == RecordHeartbeatsCode.JOB_NOT_FOUND:
                results.append({"id": job_id, "found": False})
            else:  # NOT_OWNER
                results.append(_answer_json(HeartbeatAnswer(job_id, True, not_owner=True),
                                            owner))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps({"results": results})
