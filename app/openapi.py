"""The OpenAPI 3.1 document of every endpoint, built from the same schemas
that validate requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from app import __version__
from app.config import Config
from app.limits import MAX_DELETE_EXAMINED, MAX_EXAMINED
from app.model import COMMANDS, STATES
from app.schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    IF_MATCH_PATTERN,
    MAX_VERSION,
    RESPONSE_SCHEMAS,
    WORKER_CURSOR_PATTERN,
    label_filter_pattern,
    request_schemas,
)

_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_ASSET = {media: {"schema": {"type": "string"}}
          for media in ("text/html", "text/javascript", "text/css", "image/svg+xml")}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _ref("Problem")}}}


_COMMON = {
    "400": _problem("Malformed or invalid input"),
    "401": _problem("Missing or unknown bearer token"),
    "403": _problem("The token's role may not do this (forbidden), a worker token "
                    "touched a job it does not own (not_owner), or a state change came from "
                    "another origin (cross_origin_refused: Origin or Sec-Fetch-Site)"),
    "421": _problem("The Host header names no host of this service (host_not_allowed; "
                    "see --allowed-hosts)"),
    "503": _problem("Redis is unavailable; retry after Retry-After seconds. "
                    "store_unavailable: nothing was applied; outcome_unknown: a change was "
                    "sent and may have been applied (retry with the same Idempotency-Key)"),
}


def _idempotency_key(description: str) -> dict[str, Any]:
    return {"name": "Idempotency-Key", "in": "header", "required": False,
            "description": description,
            "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN}}


_REGISTER_KEY = _idempotency_key("Retrying with the same key returns the same job (for the "
                                 "idempotency TTL, 24 hours by default)")
_COMMAND_KEY = _idempotency_key("Retrying the same command with the same key applies it "
                                "once (while it is among the job's last 4 changes)")
# Bodies far over the limit are refused by the HTTP server itself, in plain text.
_BODY_ERRORS = {"413": {"description": "Body too large",
                        "content": {**_problem("")["content"], **_TEXT}},
                "415": _problem("Not JSON")}


def _responses(ok: dict[str, Any], **more: dict[str, Any]) -> dict[str, Any]:
    return {**ok, **_COMMON, **more}


def build_openapi(config: Config) -> dict[str, Any]:
    schemas = {**request_schemas(config), **RESPONSE_SCHEMAS}
    # Other fields are ignored, as the old service did; none may be repeated.
    legacy_form: Callable[[dict[str, Any], list[str]], dict[str, Any]] = lambda props, required: {  # noqa: E731
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": props, "required": required,
            "additionalProperties": {"type": "string"}}}}}
    legacy_id = {"type": "string", "minLength": 1}
    text_error = {"description": "Error, as plain text", "content": _TEXT}
    job_not_found = _problem("Job not found")
    paths = {
        "/registerJob": {"post": {
            "summary": "Register a job (old API)", "tags": ["old API"],
            "parameters": [_REGISTER_KEY],
            "requestBody": legacy_form({"type": {"type": "string",
                                                 "enum": list(config.job_types)}}, ["type"]),
            "responses": {"200": {"description": "`Created! id = <id>`", "content": _TEXT},
                          "400": text_error, "401": text_error, "403": text_error,
                          "404": text_error, "415": text_error, "413": text_error,
                          "422": text_error, "503": text_error}}},
        "/jobState": {
            "get": {"summary": "Read a job's state (old API)", "tags": ["old API"],
                    "parameters": [{"name": "id", "in": "query", "required": True,
                                    "schema": legacy_id}],
                    "responses": {"200": {"description": "`<id> -- <state>`", "content": _TEXT},
                                  "400": text_error, "401": text_error, "403": text_error,
                                  "404": text_error, "503": text_error}},
            "post": {"summary": "Send a command to a job (old API)", "tags": ["old API"],
                     "parameters": [_COMMAND_KEY],
                     "requestBody": legacy_form(
                         {"id": legacy_id,
                          "command": {"type": "string", "enum": list(COMMANDS)}},
                         ["id", "command"]),
                     "responses": {"200": {"description": "`<id> -- <command>`",
                                           "content": _TEXT},
                                   "400": text_error, "401": text_error, "403": text_error,
                                   "404": text_error, "409": text_error, "413": text_error,
                                   "415": text_error, "503": text_error}},
        },
        "/v1/jobs": {
            "post": {
                "summary": "Register a job", "tags": ["jobs"],
                "parameters": [_REGISTER_KEY],
                "requestBody": {"required": True, "content": _json("RegisterJob")},
                "responses": _responses(
                    {"201": {"description": "Registered", "content": _json("Job")},
                     "200": {"description": "Idempotency-Key replay: the job registered "
                                            "by the first request", "content": _json("Job")}},
                    **_BODY_ERRORS,
                    **{"404": _problem("Idempotency-Key replay: the job it registered "
                                       "has been deleted"),
                       "422": _problem("Idempotency-Key used for another request")})},
            "get": {
                "summary": "List jobs, newest first", "tags": ["jobs"],
                "parameters": [
                    {"name": "state", "in": "query", "schema": {"type": "string",
                                                                "enum": list(STATES)}},
                    {"name": "type", "in": "query",
                     "schema": {"type": "string", "enum": list(config.job_types)}},
                    {"name": "label", "in": "query", "style": "form", "explode": True,
                     "description": "key:value; repeat for jobs with all of these labels",
                     "schema": {"type": "array", "maxItems": config.max_labels,
                                "items": {"type": "string",
                                          "pattern": label_filter_pattern(config)}}},
                    {"name": "stalled", "in": "query",
                     "schema": {"type": "string", "enum": ["true", "false"]}},
                    {"name": "started", "in": "query", "description": "Whether the job "
                     "has had a heartbeat; state=start&started=false: waiting for a worker",
                     "schema": {"type": "string", "enum": ["true", "false"]}},
                    {"name": "worker", "in": "query", "description": "Jobs whose last "
                     "heartbeat named this worker",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 256}},
                    {"name": "name_prefix", "in": "query", "description": "Jobs whose name "
                     "starts with this text",
                     "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1,
                                "maximum": config.max_list_limit}},
                    {"name": "cursor", "in": "query", "description": "next_cursor of the "
                     "previous page", "schema": {"type": "string", "pattern": CURSOR_PATTERN}},
                ],
                "description": "Any other query parameter is refused (400 "
                               "invalid_parameter), so that a misspelt filter lists nothing "
                               "rather than everything.",
                "responses": _responses({"200": {"description": "A page of jobs",
                                                 "content": _json("JobList")}})},
        },
        "/v1/jobs/commands": {
            "post": {
                "summary": "Send a command to many jobs: by ids, or to every job matching a "
                           "filter", "tags": ["jobs"],
                "description": "Each job changes as with POST /v1/jobs/{job_id}/commands, with "
                               "its history entry. A filter is walked newest first, in batches "
                               f"of one script call per shard; after {MAX_EXAMINED} jobs the "
                               "answer carries next_cursor to continue from. The command "
                               "`delete` (admin only) deletes ended jobs, each as DELETE "
                               "/v1/jobs/{job_id} would; by ids, the others are listed in "
                               "refused_ids; its where must name a final state (400 "
                               "filter_not_final otherwise), and its walk stops after "
                               f"{MAX_DELETE_EXAMINED} jobs with next_cursor.",
                "requestBody": {"required": True, "content": _json("BulkCommand")},
                "responses": _responses(
                    {"200": {"description": "What the command did; cut short by a drain, "
                                            "next_cursor (or remaining_ids) says where to go "
                                            "on",
                             "content": _json("BulkCommandResult")}},
                    **_BODY_ERRORS,
                    **{"503": {"description": "Redis stopped answering mid-way (code "
                                            "bulk_interrupted): the counts of the batches it "
                                            "answered, in_doubt jobs that may have changed, "
                                            "and next_cursor or remaining_ids to resume at the "
                                            "batch in doubt; or, before any batch, "
                                            "store_unavailable",
                             "content": {"application/problem+json": {
                                 "schema": _ref("BulkInterrupted")}}},
                       "429": _problem("Too many bulk commands running in this process; "
                                       "retry after Retry-After")})},
        },
        "/v1/stats": {
            "get": {"summary": "Counts for an overview: per state, stalled, per type, per "
                               "label, and changes per minute over the last hour",
                    "tags": ["jobs"],
                    "responses": _responses({"200": {"description": "Counts",
                                                     "content": _json("Stats")}})},
        },
        "/v1/jobs/{job_id}": {
            "parameters": [_JOB_ID],
            "get": {
                "summary": "Read a job; with wait, long-poll for a change", "tags": ["jobs"],
                "parameters": [
                    {"name": "wait", "in": "query",
                     "schema": {"type": "number", "minimum": 0,
                                "maximum": config.max_wait_seconds}},
                    {"name": "version", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION}},
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": _responses(
                    {"200": {"description": "The job", "content": _json("Job")},
                     "304": {"description": "Not modified"}},
                    **{"404": job_not_found,
                       "429": _problem("Too many long-poll requests waiting")})},
            "delete": {"summary": "Delete a finished job", "tags": ["jobs"],
                       "responses": _responses({"204": {"description": "Deleted"}},
                                               **{"404": job_not_found,
                                                  "409": _problem("The job is not finished")})},
        },
        "/v1/jobs/{job_id}/commands": {
            "parameters": [_JOB_ID],
            "post": {
                "summary": "Send a command: start (resume), pause, kill, done, fail",
                "tags": ["jobs"],
                "parameters": [{"name": "If-Match", "in": "header",
                                "description": "Apply only if the job is at this version",
                                "schema": {"type": "string", "pattern": IF_MATCH_PATTERN}},
                               _COMMAND_KEY],
                "requestBody": {"required": True, "content": _json("Command")},
                "responses": _responses(
                    {"200": {"description": "The job after the command",
                             "content": _json("CommandResult")}},
                    **_BODY_ERRORS,
                    **{"404": job_not_found, "409": _problem("Transition not allowed"),
                       "412": _problem("If-Match names another version")})},
        },
        "/v1/jobs/{job_id}/history": {
            "parameters": [_JOB_ID],
            "get": {"summary": "The job's transitions", "tags": ["jobs"],
                    "responses": _responses({"200": {"description": "History",
                                                     "content": _json("History")}},
                                            **{"404": job_not_found})},
        },
        "/v1/jobs/{job_id}/rerun": {
            "parameters": [_JOB_ID],
            "post": {
                "summary": "Run an ended job again: a new job with its type, name, labels "
                           "and heartbeat timeout, owned by the caller, retry_of the old one",
                "tags": ["jobs"],
                "parameters": [_idempotency_key(
                    "Retrying with the same key (for the same job) returns the same new job "
                    "(for the idempotency TTL, 24 hours by default)")],
                "responses": _responses(
                    {"201": {"description": "The new job", "content": _json("Job")},
                     "200": {"description": "Idempotency-Key replay: the job made by the "
                                            "first request", "content": _json("Job")}},
                    **{"404": job_not_found,
                       "409": _problem("The job has not ended (not_ended)"),
                       "422": _problem("Idempotency-Key used for another request")})},
        },
        "/v1/workers": {
            "get": {
                "summary": "The workers seen in heartbeats, newest heartbeat first, with "
                           "their jobs by state; silent for the retention period, a worker "
                           "drops off", "tags": ["workers"],
                "parameters": [
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1,
                                "maximum": config.max_list_limit}},
                    {"name": "cursor", "in": "query", "description": "next_cursor of the "
                     "previous page",
                     "schema": {"type": "string", "pattern": WORKER_CURSOR_PATTERN}},
                ],
                "responses": _responses({"200": {"description": "A page of workers",
                                                 "content": _json("WorkerList")}})},
        },
        "/v1/jobs/{job_id}/heartbeat": {
            "parameters": [_JOB_ID],
            "post": {"summary": "Report liveness and progress; answers the job's state",
                     "tags": ["workers"],
                     "requestBody": {"required": False, "content": _json("Heartbeat")},
                     "responses": _responses(
                         {"200": {"description": "The job's state",
                                  "content": _json("HeartbeatAnswer")}},
                         **_BODY_ERRORS, **{"404": job_not_found})},
        },
        "/v1/heartbeats": {
            "post": {"summary": "Heartbeats of many jobs in one request", "tags": ["workers"],
                     "requestBody": {"required": True, "content": _json("Heartbeats")},
                     "responses": _responses(
                         {"200": {"description": "One answer per job, in order",
                                  "content": _json("HeartbeatAnswers")}}, **_BODY_ERRORS)},
        },
        "/v1/watch": {
            "post": {
                "summary": "Wait for a change of any of many jobs (one long-poll for all)",
                "tags": ["workers"],
                "description": "Answers as soon as a listed job's version differs from the "
                               "one given, or the job is gone; else after `wait` seconds, "
                               "with both lists empty. Each waiting request takes one of "
                               "the process's slots for waiting requests (`--max-waiters`).",
                "requestBody": {"required": True, "content": _json("Watch")},
                "responses": _responses(
                    {"200": {"description": "The jobs that changed, and those missing",
                             "content": _json("WatchResult")}},
                    **_BODY_ERRORS,
                    **{"429": _problem("Too many waiting requests; retry after "
                                       "Retry-After seconds")})},
        },
        "/v1/whoami": {"get": {
            "summary": "The caller's token name, role and permissions", "tags": ["operations"],
            "responses": _responses({"200": {"description": "Who is calling",
                                             "content": _json("WhoAmI")}})}},
        "/": {"get": {"summary": "Redirects to the dashboard", "tags": ["dashboard"],
                      "security": [],
                      "responses": {"302": {"description": "Location: /ui/"}}}},
        "/ui": {"get": {"summary": "The dashboard (also at /ui/)", "tags": ["dashboard"],
                        "security": [],
                        "responses": {"200": {"description": "The page", "content": _HTML},
                                      "304": {"description": "Not modified"}}}},
        "/ui/{name}": {"get": {
            "summary": "A file of the dashboard (scripts, styles)", "tags": ["dashboard"],
            "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": _ASSET},
                          "304": {"description": "Not modified"},
                          "404": _problem("No such file")}}},
        "/healthz": {"get": {"summary": "The process is up", "tags": ["operations"],
                             "security": [],
                             "responses": {"200": {"description": "ok", "content": _TEXT}}}},
        "/readyz": {"get": {"summary": "Redis answers and the scripts are loaded",
                            "tags": ["operations"], "security": [],
                            "responses": {"200": {"description": "ready", "content": _TEXT},
                                          "503": {"description": "not ready",
                                                  "content": _TEXT}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["operations"],
                             "responses": {"200": {"description": "Prometheus text format",
                                                   "content": _TEXT},
                                           "401": _COMMON["401"], "403": _COMMON["403"]}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["operations"],
                                  "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {
                                                            "schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Karmchari", "version": __version__,
                 "description": "Global state of long-running jobs: signal workers to pause, "
                                "resume or kill a job, and keep track of them."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }


class OpenApiDocument:
    def __init__(self, config: Config) -> None:
        self._document = build_openapi(config)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._document
