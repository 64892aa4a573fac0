"""Errors as RFC 9457 ``application/problem+json`` (plain text on the old
endpoints), and the one mapping of domain errors to HTTP statuses."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeAlias

import falcon

from app.errors import (
    FilterNotFinal,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidCommand,
    JobNotFound,
    KarmchariError,
    NotDue,
    NotEnded,
    NotOwner,
    OutcomeUnknown,
    StaleRead,
    StoreUnavailable,
    VersionMismatch,
)

# Falcon's error handler for the domain errors (``App.add_error_handler``).
DomainErrorHandler: TypeAlias = Callable[
    [falcon.Request, falcon.Response, KarmchariError, dict[str, Any]], None]

_STATUS_OF = {
    JobNotFound: (falcon.HTTP_404, "Job not found"),
    InvalidCommand: (falcon.HTTP_400, "Invalid command"),
    IllegalTransition: (falcon.HTTP_409, "Transition not allowed"),
    VersionMismatch: (falcon.HTTP_412, "Version mismatch"),
    IdempotencyKeyReused: (falcon.HTTP_422, "Idempotency-Key reused"),
    StaleRead: (falcon.HTTP_503, "Job changed meanwhile"),
    NotDue: (falcon.HTTP_409, "Not due"),
    NotEnded: (falcon.HTTP_409, "Job has not ended"),
    FilterNotFinal: (falcon.HTTP_400, "Filter may match jobs that have not ended"),
    NotOwner: (falcon.HTTP_403, "Not the job's owner"),
    StoreUnavailable: (falcon.HTTP_503, "Store unavailable"),
    OutcomeUnknown: (falcon.HTTP_503, "Outcome unknown"),
}


READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Problem(falcon.HTTPError):
    """An HTTP error with a stable machine ``code`` and extra members."""

    def __init__(self, status: str, code: str, title: str, detail: str | None = None,
                 headers: dict[str, str] | None = None, **extra: object) -> None:
        super().__init__(status, title=title, description=detail, headers=headers)
        # Not falcon's ``code``, which is numeric.
        self.problem_code = code
        self.extra = extra


def bad_request(code: str, detail: str) -> Problem:
    return Problem(falcon.HTTP_400, code, "Bad request", detail)


def make_domain_error_handler(retry_after: int) -> DomainErrorHandler:
    def handle(req: falcon.Request, resp: falcon.Response, error: KarmchariError,
               params: dict[str, Any]) -> None:
        status, title = _STATUS_OF.get(type(error), (falcon.HTTP_500, "Internal error"))
        headers = {"Retry-After": str(retry_after)} if status == falcon.HTTP_503 else None
        if isinstance(error, OutcomeUnknown):
            detail: str | None = (
                "Redis did not answer after the change was sent: it may or may not "
                "have been applied. Retry with the same Idempotency-Key (it is then "
                "applied once), or read the job to find out.")
        elif isinstance(error, StoreUnavailable):
            # A read changes nothing: it must not speak of a change.
            detail = ("Redis is not answering now; retry shortly." if req.method in READS
                      else "Redis is not answering now; the change was not applied; retry "
                           "shortly.")
        elif isinstance(error, JobNotFound):
            detail = "No job with this id."
        else:
            detail = error.detail or None
        raise Problem(status, error.code, title, detail, headers, **error.extra)

    return handle


def _code_for(error: falcon.HTTPError) -> str:
    code = getattr(error, "problem_code", None)
    if isinstance(code, str):
        return code
    return re.sub(r"[^a-z0-9]+", "_", (error.title or "error").lower()).strip("_")


def serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    if getattr(req.context, "plain_errors", False):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = error.description or error.title
        return
    body = {"type": "about:blank", "title": error.title, "status": error.status_code}
    if error.description:
        body["detail"] = error.description
    body["code"] = _code_for(error)
    body.update(getattr(error, "extra", {}))
    resp.content_type = "application/problem+json"
    resp.text = json.dumps(body)


def too_many_waiters(retry_after_seconds: int) -> Problem:
    """429: every slot for waiting requests (long-polls, watches) is taken."""
    return Problem(falcon.HTTP_429, "too_many_waiters", "Too many waiting requests",
                   "the limit of waiting requests is reached; ask again after Retry-After",
                   headers={"Retry-After": str(retry_after_seconds)})
