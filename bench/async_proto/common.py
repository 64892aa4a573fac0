"""What the ASGI prototype and its WSGI control share: the product's settings,
key names and registerJob call, the form rules and the plain-text answers of
``app/resources/legacy.py``. No I/O here."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl

from app.app import build_store
from app.config import Config
from app.model import is_job_id
from app.resources.jobs import register_fingerprint
from app.resources.legacy import old_state_name
from app.schemas import IDEMPOTENCY_KEY_PATTERN, matches
from app.store.scripts import RegisterJobCode, load_source

# The Redis URL; set by bench/async_proto/__main__.py for each server it starts.
URL_VARIABLE = "KARMCHARI_PROTO_REDIS_URL"
CONFIG = Config()
TEXT = "text/plain; charset=utf-8"
FORM = "application/x-www-form-urlencoded"
UNAVAILABLE = "Redis is not answering now; the change was not applied; retry shortly."
OUTCOME_UNKNOWN = ("Redis did not answer after the change was sent: it may or may not have "
                   "been applied. Retry with the same Idempotency-Key (it is then applied "
                   "once), or read the job to find out.")


def redis_url() -> str:
    return os.environ.get(URL_VARIABLE, "redis://127.0.0.1:6379")


# The product's store, never connected: it builds the key names and the
# registerJob KEYS and ARGV exactly as the product does (JobStore.register_call).
STORE = build_store(CONFIG, redis_url())


def register_source() -> str:
    return load_source("registerJob")


class Refused(Exception):
    """A plain-text answer other than 200."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def read_form(query: str, body: bytes) -> dict[str, str]:
    """As app.inputs.read_form: query and form body, no duplicates, UTF-8 only."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict") if query else []
        if body:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeError:
        raise Refused("400 Bad Request", "Parameters are not valid UTF-8") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise Refused("400 Bad Request", f"Parameter {key} is given more than once")
        form[key] = value
    return form


def check_body(content_type: str | None, length: int | None) -> int:
    """As app.inputs.read_body, before the body is read: the most bytes to read."""
    if (content_type or "").split(";")[0].strip().lower() != FORM:
        raise Refused("415 Unsupported Media Type", f"Content-Type must be {FORM}")
    charset = (content_type or "").lower().partition("charset=")[2].strip(' "')
    if charset and charset not in ("utf-8", "utf8"):
        raise Refused("415 Unsupported Media Type", "the body must be UTF-8")
    if length is not None and length > CONFIG.max_body_bytes:
        raise too_large()
    return CONFIG.max_body_bytes + 1


def too_large() -> Refused:
    return Refused("413 Payload Too Large",
                   f"the body may be at most {CONFIG.max_body_bytes} bytes")


def job_state_key(form: dict[str, str]) -> tuple[str, str]:
    """The job id and its hash key; refuses a missing or malformed id."""
    job_id = form.get("id", "")
    if not job_id:
        raise Refused("400 Bad Request", "ID is required")
    if not is_job_id(job_id):
        raise Refused("404 Not Found", "Job not available")
    return job_id, STORE.keys.for_job(job_id).job(job_id)


def job_state_answer(job_id: str, state: str | None) -> str:
    if state is None:
        raise Refused("404 Not Found", "Job not available")
    return f"{job_id} -- {old_state_name(state)}"


def register_call(form: dict[str, str], idempotency_key: str | None
                  ) -> tuple[str, list[str], list]:
    """The new id and the registerJob KEYS and ARGV, as the product sends them
    for an anonymous caller (the benchmark runs without tokens)."""
    job_type = form.get("type", "")
    if not job_type:
        raise Refused("400 Bad Request", "Type is required")
    if job_type not in CONFIG.job_types:
        raise Refused("400 Bad Request", "Type is invalid")
    if idempotency_key is not None and not matches(IDEMPOTENCY_KEY_PATTERN, idempotency_key):
        raise Refused("400 Bad Request", "Idempotency-Key is invalid")
    fingerprint = register_fingerprint({"type": job_type}) if idempotency_key is not None else ""
    job_id, call = STORE.register_call(job_type, "", {}, 0, "", idempotency_key, fingerprint, "")
    return job_id, call.keys, call.args


def registered_id(job_id: str, reply: list) -> str:
    """The id a registerJob reply names (a replay still has to be read: ``replay_key``)."""
    code = reply[0]
    if code == RegisterJobCode.IDEMPOTENCY_KEY_REUSED:
        raise Refused("422 Unprocessable Entity", "Idempotency-Key reused")
    return reply[1] if code == RegisterJobCode.REPLAY else job_id


def replay_key(job_id: str) -> str:
    return STORE.keys.for_job(job_id).job(job_id)


def register_answer(job_id: str) -> str:
    return f"Created! id = {job_id}"
