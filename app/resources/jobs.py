"""JSON API v1: jobs as resources."""

from __future__ import annotations

import re
from typing import Any

import falcon
from falcon.uri import parse_query_string

from app.auth import require
from app.config import Config
from app.errors import JobNotFound
from app.events import ChangeNotifier, TooManyWaiters
from app.inputs import int_param, read_json, single_param
from app.model import FINISH_COMMANDS, STATES, Job, format_time
from app.problems import Problem, bad_request, too_many_waiters
from app.representation import etag, job_json
from app.resources.common import check_job_id, register_fingerprint
from app.resources.watch import waiting_client
from app.schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    IF_MATCH_PATTERN,
    MAX_VERSION,
    Validators,
    label_filter_pattern,
    matches,
)
from app.store import JobFilter, JobStore

# A query parameter of schema type number (no sign, no "inf", no "1_0").
_NUMBER_RE = re.compile(r"[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")


# The query parameters of GET /v1/jobs: any other is refused, so that a typo
# (?stat=done) does not list every job.
LIST_PARAMS = frozenset({"state", "type", "label", "stalled", "started", "worker",
                         "name_prefix", "limit", "cursor"})
MAX_WORKER_CHARS = 256          # as the heartbeat's "worker"
MAX_NAME_PREFIX_CHARS = 200


def flag_param(req: falcon.Request, name: str) -> bool | None:
    raw = single_param(req, name)
    if raw not in (None, "true", "false"):
        raise bad_request("invalid_parameter", f"{name} must be true or false")
    return None if raw is None else raw == "true"


def refuse_unknown_params(req: falcon.Request, known: frozenset[str]) -> None:
    # Blank ones too (?foo=): falcon's req.params leaves those out.
    names = parse_query_string(req.query_string, keep_blank=True)
    unknown = sorted(set(names) - known)
    if unknown:
        raise bad_request("invalid_parameter", f"unknown query parameter: {unknown[0]}")


def idempotency_key(req: falcon.Request) -> str | None:
    """The request's Idempotency-Key: absent, or 1 to 255 visible ASCII characters."""
    key = req.get_header("Idempotency-Key")
    if key is not None and not matches(IDEMPOTENCY_KEY_PATTERN, key):
        raise bad_request("invalid_idempotency_key",
                          "Idempotency-Key must be 1 to 255 visible ASCII characters")
    return key


def _set_job(resp: falcon.Response, job: Job, now_ms: int,
             body: dict[str, Any] | None = None) -> None:
    resp.etag = etag(job)
    resp.media = job_json(job, now_ms) if body is None else body


class JobCollection:
    permissions = {"POST": "register", "GET": "read"}

    def __init__(self, store: JobStore, config: Config, validators: Validators) -> None:
        self._store = store
        self._config = config
        self._validator = validators["RegisterJob"]
        self._label_pattern = label_filter_pattern(config)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, self._validator, self._config.max_body_bytes)
        key = idempotency_key(req)
        # Only an Idempotency-Key's record keeps the fingerprint (registerJob).
        fingerprint = register_fingerprint(body) if key is not None else ""
        try:
            job, created, now_ms = self._store.register_with_time(
                body["type"], name=body.get("name", ""), labels=body.get("labels", {}),
                heartbeat_timeout=body.get("heartbeat_timeout", 0),
                actor=req.context.principal.name, idempotency_key=key,
                fingerprint=fingerprint, owner=req.context.principal.owner)
        except JobNotFound:
            raise Problem(falcon.HTTP_404, "job_not_found", "Job not found",
                          "the job registered with this Idempotency-Key has been deleted") \
                from None
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.location = f"/v1/jobs/{job.id}"
        _set_job(resp, job, now_ms)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        refuse_unknown_params(req, LIST_PARAMS)
        # A parameter is absent or valid: an empty one is refused too.
        state = single_param(req, "state")
        if state is not None and state not in STATES:
            raise bad_request("invalid_parameter", f"state must be one of {', '.join(STATES)}")
        job_type = single_param(req, "type")
        if job_type is not None and job_type not in self._config.job_types:
            raise bad_request("invalid_parameter", "unknown job type")
        labels = []
        raw_labels = req.params.get("label", [])
        for item in [raw_labels] if isinstance(raw_labels, str) else raw_labels:
            if not matches(self._label_pattern, item):
                raise bad_request("invalid_parameter", "label must be key:value")
            key, _, value = item.partition(":")
            labels.append((key, value))
        if len(labels) > self._config.max_labels:
            raise bad_request("invalid_parameter",
                              f"at most {self._config.max_labels} label filters")
        stalled, started = flag_param(req, "stalled"), flag_param(req, "started")
        limit = int_param(req, "limit", minimum=1, maximum=self._config.max_list_limit,
                          default=50)
        cursor = single_param(req, "cursor")
        worker = single_param(req, "worker")
        if worker is not None and not 1 <= len(worker) <= MAX_WORKER_CHARS:
            raise bad_request("invalid_parameter",
                              f"worker must be 1 to {MAX_WORKER_CHARS} characters")
        name_prefix = single_param(req, "name_prefix")
        if name_prefix is not None and not 1 <= len(name_prefix) <= MAX_NAME_PREFIX_CHARS:
            raise bad_request("invalid_parameter",
                              f"name_prefix must be 1 to {MAX_NAME_PREFIX_CHARS} characters")
        where = JobFilter(state=state, type=job_type, labels=tuple(labels), stalled=stalled,
                          started=started, worker=worker, name_prefix=name_prefix)
        try:
            if cursor is not None and not matches(CURSOR_PATTERN, cursor):
                raise ValueError(cursor)
            page = self._store.list_jobs(where, limit=limit, cursor=cursor)
        except ValueError:
            raise bad_request("invalid_cursor", "the cursor is not one this service gave") \
                from None
        resp.media = {"jobs": [job_json(j, page.now_ms) for j in page.jobs],
                      "next_cursor": page.next_cursor}


@falcon.before(check_job_id)
class JobItem:
    permissions = {"GET": "read", "DELETE": "delete"}

    def __init__(self, store: JobStore, config: Config, notifier: ChangeNotifier) -> None:
        self._store = store
        self._config = config
        self._notifier = notifier

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        wait = single_param(req, "wait")
        version = int_param(req, "version", minimum=0, maximum=MAX_VERSION)
        if wait is not None:
            seconds = float(wait) if _NUMBER_RE.match(wait) else -1.0
            if not 0 <= seconds <= self._config.max_wait_seconds:
                raise bad_request("invalid_parameter",
                                  f"wait must be 0 to {self._config.max_wait_seconds:g} seconds")
            try:
                job, now_ms = self._notifier.wait_for_change(job_id, version, seconds,
                                                               **waiting_client(req))
            except TooManyWaiters:
                raise too_many_waiters(self._config.retry_after_seconds) from None
        else:
            job, now_ms = self._store.get_with_time(job_id)
        if wait is None and req.if_none_match and any(t == "*" or str(t) == etag(job)
                                                 for t in req.if_none_match):
            resp.status = falcon.HTTP_304
            resp.etag = etag(job)
            return
        _set_job(resp, job, now_ms)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        self._store.delete(job_id)
        resp.status = falcon.HTTP_204


@falcon.before(check_job_id)
class JobCommands:
    # Workers may send done/fail; other commands need the "command" permission.
    permissions = {"POST": "finish"}

    def __init__(self, store: JobStore, config: Config, validators: Validators) -> None:
        self._store = store
        self._config = config
        self._validator = validators["Command"]

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        body = read_json(req, self._validator, self._config.max_body_bytes)
        key = idempotency_key(req)
        if body["command"] not in FINISH_COMMANDS:
            require(req, "command", f"send {body['command']} to a job")
        expected = None
        if_match = req.get_header("If-Match")
        if if_match is not None:
            if not matches(IF_MATCH_PATTERN, if_match.strip()):
                raise bad_request("invalid_if_match", "If-Match must be one job version, or *")
            tag = (req.if_match or ["*"])[0]
            if isinstance(tag, falcon.ETag):  # not "*"
                # If-Match compares strongly (RFC 9110 §13.1.1): a weak tag never
                # matches, and no job has version 0.
                expected = 0 if tag.is_weak else int(str(tag))
        job, changed, now_ms = self._store.apply_command_with_time(
            job_id, body["command"], actor=req.context.principal.name,
            reason=body.get("reason", ""), expected_version=expected,
            owner=req.context.principal.owner, idempotency_key=key)
        _set_job(resp, job, now_ms, {"job": job_json(job, now_ms), "changed": changed})


@falcon.before(check_job_id)
class JobHistory:
    permissions = {"GET": "read"}

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        entries = self._store.history(job_id)
        for entry in entries:
            entry["at"] = format_time(entry["at"])
        resp.media = {"id": job_id, "entries": entries}
