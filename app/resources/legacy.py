"""The old service's three endpoints, kept byte for byte: form in, text out.

They name states as the old service did, which stored the command itself: the
state that ``fail`` leads to is ``fail`` here (``failed`` in the JSON API), so
the answer to ``command=fail`` and a later ``GET /jobState`` say the same.
"""

from __future__ import annotations

import falcon

from app.auth import require
from app.config import Config
from app.errors import IllegalTransition, JobNotFound
from app.inputs import read_form
from app.model import COMMANDS, FINISH_COMMANDS, TARGET_STATE, Command, State, is_job_id
from app.resources.common import register_fingerprint
from app.schemas import IDEMPOTENCY_KEY_PATTERN, matches
from app.store import JobStore


def old_state_name(state: str) -> str:
    return Command.FAIL.value if state == State.FAILED.value else state


def _idempotency_key(req: falcon.Request) -> tuple[str | None, bool]:
    """The Idempotency-Key header (absent: None), and whether it is valid."""
    key = req.get_header("Idempotency-Key")
    return key, key is None or matches(IDEMPOTENCY_KEY_PATTERN, key)


def _text(resp: falcon.Response, status: str, body: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = body


class RegisterJob:
    permissions = {"POST": "register"}
    plain_text_errors = True

    def __init__(self, store: JobStore, config: Config) -> None:
        self._store = store
        self._config = config

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_type = read_form(req, self._config.max_body_bytes).get("type", "")
        if not job_type:
            return _text(resp, falcon.HTTP_400, "Type is required")
        if job_type not in self._config.job_types:
            return _text(resp, falcon.HTTP_400, "Type is invalid")
        key, valid = _idempotency_key(req)
        if not valid:
            return _text(resp, falcon.HTTP_400, "Idempotency-Key is invalid")
        try:
            # The same fingerprint as POST /v1/jobs {"type": ...}: one key, one job
            # (only an Idempotency-Key's record keeps it: registerJob).
            job, _ = self._store.register(job_type, actor=req.context.principal.name,
                                          owner=req.context.principal.owner,
                                          idempotency_key=key,
                                          fingerprint=register_fingerprint({"type": job_type})
                                          if key is not None else "")
        except JobNotFound:  # the job of this key has been deleted since
            return _text(resp, falcon.HTTP_404, "Job not available")
        _text(resp, falcon.HTTP_200, f"Created! id = {job.id}")


class JobState:
    permissions = {"GET": "read", "POST": "finish"}
    plain_text_errors = True

    def __init__(self, store: JobStore, config: Config) -> None:
        self._store = store
        self._config = config

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_id = read_form(req, self._config.max_body_bytes).get("id", "")
        if not job_id:
            return _text(resp, falcon.HTTP_400, "ID is required")
        if not is_job_id(job_id):
            return _text(resp, falcon.HTTP_404, "Job not available")
        try:
            state = self._store.state(job_id)
        except JobNotFound:
            return _text(resp, falcon.HTTP_404, "Job not available")
        _text(resp, falcon.HTTP_200, f"{job_id} -- {old_state_name(state)}")

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = read_form(req, self._config.max_body_bytes)
        job_id, command = form.get("id", ""), form.get("command", "")
        if not job_id:
            return _text(resp, falcon.HTTP_400, "ID is required")
        if not command:
            return _text(resp, falcon.HTTP_400, "Command is required")
        if command not in COMMANDS:
            return _text(resp, falcon.HTTP_400, "Command is invalid")
        if command not in FINISH_COMMANDS:
            require(req, "command", f"send {command} to a job")
        key, valid = _idempotency_key(req)
        if not valid:
            return _text(resp, falcon.HTTP_400, "Idempotency-Key is invalid")
        if not is_job_id(job_id):
            return _text(resp, falcon.HTTP_404, "Job not available")
        try:
            self._store.apply_command(job_id, command, actor=req.context.principal.name,
                                      owner=req.context.principal.owner, idempotency_key=key)
        except JobNotFound:
            return _text(resp, falcon.HTTP_404, "Job not available")
        except IllegalTransition as refused:
            state = old_state_name(str(refused.extra["current_state"]))
            return _text(resp, falcon.HTTP_409, f"Command refused: {job_id} -- {state}")
        # The state the job is now in, as GET /jobState names it.
        _text(resp, falcon.HTTP_200, f"{job_id} -- {old_state_name(TARGET_STATE[command])}")
