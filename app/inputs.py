"""Strict reading of request input: malformed input becomes a clear 4xx here,
before anything reaches Redis."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast, overload
from urllib.parse import parse_qsl, unquote_to_bytes

import falcon
import orjson
from jsonschema.protocols import Validator

from app.problems import Problem, bad_request

if TYPE_CHECKING:
    from app.schemas import FastRequestValidator

MAX_JSON_DEPTH = 8


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate member {key!r}")
            seen.add(key)
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _check_values(value: object, depth: int = 0) -> None:
    """Nesting depth, and strings that UTF-8 can carry (no lone surrogates)."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError("JSON nested too deeply")
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def read_body(req: falcon.Request, max_bytes: int, media_types: tuple[str, ...]) -> bytes:
    media = (req.content_type or "").split(";")[0].strip().lower()
    if media not in media_types:
        raise Problem(falcon.HTTP_415, "unsupported_media_type", "Unsupported media type",
                      f"Content-Type must be {' or '.join(media_types)}")
    charset = (req.content_type or "").lower().partition("charset=")[2].strip(' "')
    if charset and charset not in ("utf-8", "utf8"):
        raise Problem(falcon.HTTP_415, "unsupported_charset", "Unsupported charset",
                      "the body must be UTF-8")
    if req.content_length is not None and req.content_length > max_bytes:
        raise too_large(max_bytes)
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    return raw


def too_large(max_bytes: int) -> Problem:
    return Problem(falcon.HTTP_413, "body_too_large", "Request body too large",
                   f"the body may be at most {max_bytes} bytes")


# jsonschema's messages begin with the offending value, which may be many
# kilobytes: over a limit, name the limit instead.
_LIMITS = {
    "maxLength": "too long, at most {} characters",
    "maxProperties": "too many members, at most {}",
    "maxItems": "too many items, at most {}",
    "minItems": "too few items, at least {}",
    "maximum": "must be at most {}",
    "minimum": "must be at least {}",
}


def read_json(req: falcon.Request, validator: Validator | FastRequestValidator, max_bytes: int,
              required: bool = True) -> dict[str, Any]:
    """The request's JSON object, validated against ``validator``'s schema."""
    if not required and not req.content_length and not req.content_type:
        return _validated({}, validator)
    raw = read_body(req, max_bytes, ("application/json",))
    if not raw.strip():
        if required:
            raise bad_request("empty_body", "a JSON body is required")
        return _validated({}, validator)
    return _validated(_parsed(raw), validator)


def read_json_batch(req: falcon.Request, validator: FastRequestValidator, max_bytes: int,
                    batch: BatchShape) -> dict[str, Any]:
    """``read_json`` (required) for a body that is one array of flat objects,
    such as 100 heartbeats: a body that ``_fast_batch`` vouches for skips the
    per-object checks; any other takes ``read_json``'s path and its answer."""
    raw = read_body(req, max_bytes, ("application/json",))
    data = _fast_batch(raw, validator, batch)
    if data is not None:
        return data
    if not raw.strip():
        raise bad_request("empty_body", "a JSON body is required")
    return _validated(_parsed(raw), validator)


@dataclass(frozen=True)
class BatchShape:
    """``{member: [{name: scalar, ...}, ...]}``: the only member names the
    schema allows, at both levels, as JSON string tokens."""

    member: str
    tokens: tuple[bytes, ...]

    @classmethod
    def of(cls, schema: dict[str, Any]) -> BatchShape:
        (member,) = schema["properties"]
        names = {member, *schema["properties"][member]["items"]["properties"]}
        return cls(member, tuple(f'"{name}"'.encode() for name in sorted(names)))


def _fast_batch(raw: bytes, validator: FastRequestValidator,
                batch: BatchShape) -> dict[str, Any] | None:
    """The body, if it is certainly one ``read_json`` accepts as it is; else
    None. orjson refuses what json.loads would (bad UTF-8, NaN, control
    characters, trailing commas), and a body the schema accepts is shallow;
    left are duplicate members, which orjson merges silently. Without a
    \\u escape, each member name appears in the bytes as its token, so the
    tokens counted at least equal the members sent, which at least equal the
    members parsed: if the count equals the members parsed, none was repeated
    (a string value that equals a name only sends a body the slow way)."""
    if b"\\u" in raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not validator.fast_accepts(data):
        return None
    members = len(data) + sum(map(len, data[batch.member]))
    if sum(map(raw.count, batch.tokens)) != members:
        return None
    return cast("dict[str, Any]", data)  # the schema accepted it: an object


def _parsed(raw: bytes) -> Any:
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_reject_constant)
        _check_values(data)
    except UnicodeError:
        raise bad_request("invalid_encoding", "the body is not valid UTF-8") from None
    except RecursionError:
        raise bad_request("malformed_json", "JSON nested too deeply") from None
    except ValueError as error:
        raise bad_request("malformed_json", f"malformed JSON: {error}") from None
    return data


def _validated(data: Any, validator: Validator | FastRequestValidator) -> dict[str, Any]:
    invalid = next(iter(validator.iter_errors(data)), None)
    if invalid is not None:
        where = "/".join(str(p) for p in invalid.absolute_path) or "body"
        limit = _LIMITS.get(str(invalid.validator))
        if limit:
            message = limit.format(invalid.validator_value)
        else:
            text = invalid.message
            message = text if len(text) <= 200 else text[:200] + "…"
        raise bad_request("invalid_request", f"{where}: {message}")
    return cast("dict[str, Any]", data)  # every request schema is an object


def read_form(req: falcon.Request, max_bytes: int) -> dict[str, str]:
    """Query-string and form-body parameters, as Go's ``FormValue`` sees them,
    but refusing duplicates and bytes that are not UTF-8."""
    pairs: list[tuple[str, str]] = []
    try:
        if req.query_string:
            pairs += parse_qsl(req.query_string, keep_blank_values=True, errors="strict")
        if req.method == "POST" and (req.content_length or req.content_type):
            raw = read_body(req, max_bytes, ("application/x-www-form-urlencoded",))
            pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeError:
        raise Problem(falcon.HTTP_400, "invalid_encoding", "Bad request",
                      "Parameters are not valid UTF-8") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise Problem(falcon.HTTP_400, "duplicate_parameter", "Bad request",
                          f"Parameter {key} is given more than once")
        form[key] = value
    return form


class QueryEncodingMiddleware:
    """Refuses a query string that is not UTF-8 on every route. Falcon would
    decode it with replacement characters, turning bad input into plausible
    values (a label filter, a cursor) that then reach Redis."""

    def process_resource(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, params: dict[str, Any]) -> None:
        if req.query_string and not _is_utf8(req.query_string):
            raise Problem(falcon.HTTP_400, "invalid_encoding", "Bad request",
                          "the query string is not valid UTF-8")


def _is_utf8(query_string: str) -> bool:
    if query_string.isascii() and "%" not in query_string:
        return True  # nothing escaped, and ASCII is UTF-8 (most queries)
    try:
        # WSGI servers pass the raw bytes of the query decoded as latin-1.
        raw = query_string.encode("latin-1")
    except UnicodeEncodeError:
        raw = query_string.encode("utf-8", "surrogatepass")
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def single_param(req: falcon.Request, name: str) -> str | None:
    """One query parameter; repeated ones are refused."""
    value = req.params.get(name)
    if isinstance(value, list):
        raise bad_request("duplicate_parameter", f"parameter {name} is given more than once")
    return value


@overload
def int_param(req: falcon.Request, name: str, *, minimum: int, maximum: int,
              default: int) -> int: ...


@overload
def int_param(req: falcon.Request, name: str, *, minimum: int, maximum: int,
              default: None = None) -> int | None: ...


def int_param(req: falcon.Request, name: str, *, minimum: int, maximum: int,
              default: int | None = None) -> int | None:
    raw = single_param(req, name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20 or not minimum <= int(raw) <= maximum:
        raise bad_request("invalid_parameter",
                          f"{name} must be an integer from {minimum} to {maximum}")
    return int(raw)
