"""JSON Schemas (2020-12) of request and response bodies: one source for
request validation and for the OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from app.config import Config
from app.model import COMMANDS, LABEL_KEY_RE, STATES
from app.schemas_operators import RUN_TIMES_SCHEMA, WORKER_LIST_SCHEMA

LABEL_KEY_PATTERN = "^" + LABEL_KEY_RE.pattern.replace("\\Z", "$")
# Visible ASCII: a key survives every HTTP stack unchanged (UUIDs fit).
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,255}$"
# The largest integer every JSON reader holds exactly.
MAX_VERSION = 2**53
JOB_ID_PATTERN = "^[0-9a-f]{32}$"
# An opaque listing cursor: base64url without padding.
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,200}$"
# The cursor of GET /v1/workers: a time and a worker's name (up to 256 characters).
WORKER_CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,1500}$"
# The cursor of a bulk command: where each shard's walk stopped.
BULK_CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,2000}$"
JOB_ID_PATTERN = "^[0-9a-f]{32}$"
# One job version (a strong or weak entity tag, quoted or not), or "*".
IF_MATCH_PATTERN = '^(\\*|(W/)?"[0-9]{1,15}"|[0-9]{1,15})$'


def label_filter_pattern(config: Config) -> str:
    """``label=key:value`` of the listing."""
    return LABEL_KEY_PATTERN[:-1] + f":[\\s\\S]{{0,{config.max_label_chars}}}$"


def _text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_chars}


def request_schemas(config: Config) -> dict[str, dict[str, Any]]:
    text = _text(config.max_text_chars)
    heartbeat_props = {
        "progress": {"type": "number", "minimum": 0, "maximum": 100,
                     "description": "Percent complete."},
        "message": text,
        "worker": _text(256),
        "observed_state": {"type": "string", "enum": list(STATES),
                           "description": "The state the worker says it is in."},
    }
    return {
        "RegisterJob": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "enum": list(config.job_types)},
                "name": _text(256),
                "labels": {
                    "type": "object",
                    "maxProperties": config.max_labels,
                    "propertyNames": {"pattern": LABEL_KEY_PATTERN},
                    "additionalProperties": _text(config.max_label_chars),
                },
                "heartbeat_timeout": {"type": "integer", "minimum": 0, "maximum": 7 * 24 * 3600,
                                      "description": "Seconds without a heartbeat after which "
                                                     "a running job counts as stalled; 0: never."},
            },
        },
        "Command": {
            "type": "object",
            "required": ["command"],
            "additionalProperties": False,
            "properties": {"command": {"type": "string", "enum": list(COMMANDS)},
                           "reason": text},
        },
        "BulkCommand": {
            "type": "object",
            "required": ["command"],
            "additionalProperties": False,
            "description": "A command for the jobs named by `ids`, or for every job that "
                           "matches `where` (the filters of GET /v1/jobs; {} matches all). "
                           "`delete` (admin only) deletes ended jobs; its `where` must name "
                           "a final state.",
            "properties": {
                "command": {"type": "string", "enum": [*COMMANDS, "delete"]},
                "reason": text,
                "ids": {"type": "array", "minItems": 1, "maxItems": config.max_batch,
                        "items": {"type": "string", "pattern": JOB_ID_PATTERN}},
                "where": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "state": {"type": "string", "enum": list(STATES)},
                        "type": {"type": "string", "enum": list(config.job_types)},
                        "label": {"type": "array", "maxItems": config.max_labels,
                                  "items": {"type": "string",
                                            "pattern": label_filter_pattern(config)}},
                        "stalled": {"type": "boolean"},
                        "started": {"type": "boolean",
                                    "description": "whether the job has had a heartbeat"},
                    },
                },
                "cursor": {"type": "string", "pattern": BULK_CURSOR_PATTERN,
                           "description": "With `where`: next_cursor of the previous answer, "
                                          "to continue a walk that stopped."},
            },
            "oneOf": [{"required": ["ids"]}, {"required": ["where"]}],
            "dependentRequired": {"cursor": ["where"]},
        },
        "Heartbeat": {"type": "object", "additionalProperties": False,
                      "properties": heartbeat_props},
        "Watch": {
            "type": "object",
            "required": ["jobs", "wait"],
            "additionalProperties": False,
            "properties": {
                "jobs": {"type": "object", "minProperties": 1,
                         "maxProperties": config.max_watch_jobs,
                         "description": "The version of each job as the caller knows it "
                                        "(0: any version counts as a change).",
                         "propertyNames": {"pattern": JOB_ID_PATTERN},
                         "additionalProperties": {"type": "integer", "minimum": 0,
                                                  "maximum": MAX_VERSION}},
                "wait": {"type": "number", "minimum": 0, "maximum": config.max_wait_seconds,
                         "description": "Seconds to wait for a change; 0 answers at once."},
            },
        },
        "Heartbeats": {
            "type": "object",
            "required": ["heartbeats"],
            "additionalProperties": False,
            "properties": {"heartbeats": {
                "type": "array", "minItems": 1, "maxItems": config.max_batch,
                "items": {"type": "object", "required": ["id"], "additionalProperties": False,
                          "properties": {"id": {"type": "string",
                                                "pattern": JOB_ID_PATTERN},
                                         **heartbeat_props}},
            }},
        },
    }


@cache
def _as_ecma(pattern: str) -> re.Pattern[str]:
    """A final ``$`` means the end of the text in ECMA-262 (the regex dialect of
    JSON Schema); in Python it also matches before a final newline, which would
    let "<32 hex>\\n" pass as a job id."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    return re.compile(pattern)


def matches(pattern: str, text: str) -> bool:
    """Whether ``text`` matches a schema ``pattern``, read as JSON Schema does."""
    return bool(_as_ecma(pattern).search(text))


def _pattern(validator: Validator, pattern: str, instance: Any,
             schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _as_ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# The stubs leave extend() unannotated; what it returns is a validator class.
RequestValidator: type[Validator] = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern})


class FastRequestValidator:
    """``jsonschema_rs`` (Rust) tells a valid body from an invalid one about a
    hundred times faster than ``jsonschema`` (a batch of 100 heartbeats: 20 µs
    instead of 2.5 ms); a body it refuses goes to ``RequestValidator``, which
    judges and explains. Verdicts and the 400's wording stay the reference's:
    tests/test_schemas_fast_path.py checks that the fast path accepts nothing
    the reference refuses."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._fast = jsonschema_rs.Draft202012Validator(schema)
        self._reference = RequestValidator(schema)

    def fast_accepts(self, instance: object) -> bool:
        try:
            return self._fast.is_valid(instance)
        except ValueError:  # a value it cannot take, such as a lone surrogate
            return False

    def iter_errors(self, instance: Any) -> Iterator[ValidationError]:
        if self.fast_accepts(instance):
            return iter(())
        return self._reference.iter_errors(instance)


# What validators() returns, as the resources take it.
Validators = dict[str, FastRequestValidator]


def validators(config: Config) -> dict[str, FastRequestValidator]:
    """Built once per app: compiling schemas per request would waste time."""
    return {name: FastRequestValidator(schema)
            for name, schema in request_schemas(config).items()}


_TIME = {"type": ["string", "null"], "format": "date-time"}

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Job": {
        "type": "object",
        "required": ["id", "type", "state", "version", "created_at", "updated_at", "stalled"],
        "properties": {
            "id": {"type": "string", "pattern": JOB_ID_PATTERN},
            "type": {"type": "string"},
            "state": {"type": "string", "enum": list(STATES)},
            "version": {"type": "integer", "minimum": 1},
            "name": {"type": "string"},
            "owner": {"type": ["string", "null"],
                      "description": "The worker token that registered the job, the only "
                                     "worker that may heartbeat and finish it; null: none "
                                     "(only operators and admins end it)."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "ended_at": _TIME,
            "started_at": {**_TIME, "description": "The first heartbeat; null: none yet."},
            "finished_at": {**_TIME, "description": "When the job reached a final state "
                                                    "(the same as ended_at); null: not yet."},
            "retry_of": {"type": ["string", "null"], "pattern": JOB_ID_PATTERN,
                         "description": "The job this one runs again (POST "
                                        "/v1/jobs/{id}/rerun); null: none."},
            "reruns": {"type": "array", "items": {"type": "string", "pattern": JOB_ID_PATTERN},
                       "description": "The jobs that run this one again, oldest first (the "
                                      "newest 100; a deleted one stays named)."},
            "heartbeat_timeout": {"type": "integer"},
            "heartbeat_at": _TIME,
            "worker": {"type": "string"},
            "progress": {"type": ["number", "null"]},
            "message": {"type": "string"},
            "observed_state": {"type": "string"},
            "stalled": {"type": "boolean"},
        },
    },
    "CommandResult": {
        "type": "object",
        "required": ["job", "changed"],
        "properties": {"job": {"$ref": "#/components/schemas/Job"},
                       "changed": {"type": "boolean"}},
    },
    "BulkCommandResult": {
        "type": "object",
        "required": ["matched", "changed", "unchanged", "refused", "not_found", "next_cursor"],
        "properties": {
            "matched": {"type": "integer", "minimum": 0,
                        "description": "Jobs found that match: changed + unchanged + refused"},
            "changed": {"type": "integer", "minimum": 0},
            "unchanged": {"type": "integer", "minimum": 0,
                          "description": "Already in the command's state"},
            "refused": {"type": "integer", "minimum": 0,
                        "description": "In a final state, which no command leaves"},
            "not_found": {"type": "integer", "minimum": 0,
                          "description": "Ids with no job (0 for a filter)"},
            "next_cursor": {"type": ["string", "null"],
                            "description": "Set when the walk of a filter stopped at its "
                                           "limit or at a drain: send it as cursor, with the "
                                           "same where"},
            "remaining_ids": {"type": "array", "items": {"type": "string"},
                              "description": "Only when the ids form was cut short: the ids "
                                             "not done, to send again as ids"},
            "deleted": {"type": "integer", "minimum": 0,
                        "description": "Only for delete: the jobs deleted"},
            "refused_ids": {"type": "array", "items": {"type": "string"},
                            "description": "Only for delete by ids: the ids not deleted "
                                           "(not ended, or no such job)"},
        },
    },
    "BulkInterrupted": {
        "description": "503 bulk_interrupted: a Problem with the counts of the batches "
                       "Redis answered and where to resume (at the batch in doubt)",
        "allOf": [{"$ref": "#/components/schemas/Problem"},
                  {"$ref": "#/components/schemas/BulkCommandResult"},
                  {"type": "object", "required": ["in_doubt"], "properties": {
                      "in_doubt": {"type": "integer", "minimum": 0,
                                   "description": "Jobs of the batch in flight when Redis "
                                                  "went: they may or may not have changed"}}}],
    },
    "Stats": {
        "type": "object",
        "required": ["total", "states", "stalled", "waiting", "types", "labels",
                     "changes_per_minute", "now"],
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "states": {"type": "object", "required": list(STATES),
                       "additionalProperties": {"type": "integer", "minimum": 0}},
            "stalled": {"type": "integer", "minimum": 0},
            "waiting": {"type": "integer", "minimum": 0,
                        "description": "Jobs waiting for a worker: state start, no heartbeat "
                                       "yet, not stalled (GET /v1/jobs?state=start"
                                       "&started=false&stalled=false)"},
            "types": {"type": "object", "additionalProperties": {"type": "integer"},
                      "description": "Jobs per configured type"},
            "labels": {"type": "object", "additionalProperties": {"type": "integer"},
                       "description": "Jobs per label key:value, the 50 largest, "
                                      "largest first"},
            "changes_per_minute": {"type": "array", "minItems": 60, "maxItems": 60, "items": {
                "type": "object", "required": ["minute", "count"],
                "properties": {"minute": {"type": "string", "format": "date-time"},
                               "count": {"type": "integer", "minimum": 0}}},
                "description": "Registrations and changes of state in each of the last 60 "
                               "minutes, oldest first (the last one is the current minute)"},
            "now": {"type": "string", "format": "date-time"},
            "run_times": RUN_TIMES_SCHEMA,
        },
    },
    "WorkerList": WORKER_LIST_SCHEMA,
    "JobList": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                       "next_cursor": {"type": ["string", "null"]}},
    },
    "WhoAmI": {
        "type": "object",
        "required": ["name", "role", "permissions", "auth", "job_types"],
        "properties": {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "operator", "worker", "reader"]},
            "permissions": {"type": "array", "items": {"type": "string"}},
            "auth": {"type": "boolean", "description": "false: no tokens configured, every "
                                                       "caller is an anonymous admin"},
            "job_types": {"type": "array", "items": {"type": "string"},
                          "description": "the job types this service accepts"},
        },
    },
    "History": {
        "type": "object",
        "required": ["id", "entries"],
        "properties": {
            "id": {"type": "string"},
            "entries": {"type": "array", "items": {
                "type": "object",
                "required": ["version", "at", "command", "from", "to", "actor", "reason"],
                "properties": {"version": {"type": "integer"},
                               "at": {"type": "string", "format": "date-time"},
                               "command": {"type": "string"}, "from": {"type": "string"},
                               "to": {"type": "string"}, "actor": {"type": "string"},
                               "reason": {"type": "string"}}}},
        },
    },
    "WatchResult": {
        "type": "object",
        "required": ["changed", "missing"],
        "properties": {
            "changed": {"type": "array", "items": {"$ref": "#/components/schemas/Job"},
                        "description": "Jobs whose version differs from the one given."},
            "missing": {"type": "array", "items": {"type": "string"},
                        "description": "Ids of jobs that do not exist (or no longer)."},
        },
    },
    "HeartbeatAnswer": {
        "type": "object",
        "required": ["id", "found"],
        "properties": {"id": {"type": "string"}, "found": {"type": "boolean"},
                       "state": {"type": "string", "enum": list(STATES)},
                       "version": {"type": "integer"},
                       "observed_state": {"type": "string"},
                       "status": {"type": "integer", "description": "403 for an item this "
                                  "batch may not heartbeat (nothing recorded for it)"},
                       "code": {"type": "string", "enum": ["not_owner"]},
                       "detail": {"type": "string"}},
    },
    "HeartbeatAnswers": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": {
            "$ref": "#/components/schemas/HeartbeatAnswer"}}},
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "code"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"},
                       "code": {"type": "string"}, "current_state": {"type": "string"},
                       "version": {"type": "integer"}},
    },
}
