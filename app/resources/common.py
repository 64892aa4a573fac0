"""What several resources share: the job id check of every ``{job_id}`` route
and the fingerprint of a registration."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import falcon

from app.model import is_job_id
from app.problems import Problem


def check_job_id(req: falcon.Request, resp: falcon.Response, resource: object,
                 params: dict[str, Any]) -> None:
    """A class hook (``@falcon.before(check_job_id)``) of the ``{job_id}`` routes:
    ids are checked before any Redis call, as nothing else may reach a key name.

    A hook rather than a routing converter: a converter runs before the
    middleware, so a malformed id would be answered before the Host, origin
    and token checks (an unauthenticated caller would get 404, not 401), and a
    converter that declines gives Falcon's bare 404 instead of this problem."""
    if not is_job_id(params["job_id"]):
        raise Problem(falcon.HTTP_404, "job_not_found", "Job not found",
                      "a job id is 32 lowercase hexadecimal characters")


def register_fingerprint(body: dict[str, Any]) -> str:
    """What a replayed Idempotency-Key must match: the registration's body
    (the same for POST /v1/jobs and POST /registerJob: one key, one job)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
