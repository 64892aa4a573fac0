"""A batch body (POST /v1/heartbeats) that the fast path of
``app.inputs.read_json_batch`` vouches for skips the per-object checks of
``read_json``; every other body takes ``read_json``'s path. The two must
agree on every body: the same data, or the same refusal."""

from __future__ import annotations

import json

import falcon
import pytest
from falcon import testing
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Config
from app.inputs import BatchShape, _fast_batch, read_json, read_json_batch
from app.problems import Problem
from app.schemas import request_schemas, validators

CONFIG = Config()
VALIDATOR = validators(CONFIG)["Heartbeats"]
SHAPE = BatchShape.of(request_schemas(CONFIG)["Heartbeats"])
JOB = "0123456789abcdef" * 2
OTHER = "f" * 32


def outcome(read, raw: bytes):
    req = testing.create_req(method="POST", path="/v1/heartbeats", body=raw,
                             headers={"Content-Type": "application/json"})
    try:
        return "ok", read(req)
    except Problem as problem:
        return problem.status, problem.problem_code, problem.description


def assert_same(raw: bytes) -> None:
    batch = outcome(lambda req: read_json_batch(req, VALIDATOR, CONFIG.max_body_bytes, SHAPE),
                    raw)
    reference = outcome(lambda req: read_json(req, VALIDATOR, CONFIG.max_body_bytes), raw)
    assert batch == reference, raw
    if batch[0] == "ok":
        assert json.dumps(batch[1]) == json.dumps(reference[1])  # same order, same types


BODIES = [
    b'{"heartbeats": [{"id": "%s", "progress": 5, "worker": "w", "message": "m", '
    b'"observed_state": "start"}]}' % JOB.encode(),
    # Repeated members, at either level, plain or hidden behind escapes.
    b'{"heartbeats": [{"id": "%s", "progress": 5, "progress": 6}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s"}], "heartbeats": [{"id": "%s"}]}' % (JOB.encode(),
                                                                      OTHER.encode()),
    b'{"heartbeats": [{"id": "%s", "progress": 5, "\\u0070rogress": 6}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "id": "%s"}]}' % (JOB.encode(), OTHER.encode()),
    # String values that look like member names, or end in an escaped quote.
    b'{"heartbeats": [{"id": "%s", "message": "progress", "worker": "id"}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "message": "say \\"id"}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "message": "\\u00e9t\\u00e9"}]}' % JOB.encode(),
    # What json.loads refuses, and values it can not carry.
    b'{"heartbeats": [{"id": "%s", "progress": NaN}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "progress": 1e400}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "message": "\\ud800"}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "message": "\xed\xa0\x80"}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "message": "a\x01"}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s",}]}' % JOB.encode(),
    b'\xef\xbb\xbf{"heartbeats": [{"id": "%s"}]}' % JOB.encode(),
    b'{"heartbeats": [[[[[[[[[[[]]]]]]]]]]]}',
    b'{"heartbeats": []}', b'{}', b'[]', b'', b'   ', b'null', b'{"heartbeats": [{}]}',
    b'{"heartbeats": [{"id": "%s", "progress": 101}]}' % JOB.encode(),
    b'{"heartbeats": [{"id": "%s", "extra": 1}]}' % JOB.encode(),
]


@pytest.mark.parametrize("raw", BODIES)
def test_the_fast_path_answers_as_read_json(raw):
    assert_same(raw)


def test_a_plain_batch_takes_the_fast_path():
    assert _fast_batch(BODIES[0], VALIDATOR, SHAPE) is not None
    for repeated in BODIES[1:5]:
        assert _fast_batch(repeated, VALIDATOR, SHAPE) is None


NAMES = ["id", "progress", "message", "worker", "observed_state", "heartbeats", "extra"]
VALUES = st.one_of(st.sampled_from([JOB, OTHER, "start", "kill", "", "id", "progress",
                                    'x"id', "é", "\\u0070"]),
                   st.integers(-1, 101), st.floats(allow_nan=False), st.text(max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6),
                min_size=1, max_size=4),
       st.booleans(), st.booleans())
def test_arbitrary_batches_answer_as_read_json(items, ascii_only, repeat_top):
    """Objects written member by member, so that names may repeat."""
    def obj(pairs) -> str:
        return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=ascii_only)}"
                               for k, v in pairs) + "}"
    members = f'"heartbeats": [{", ".join(obj(p) for p in items)}]'
    text = "{" + members + (", " + members if repeat_top else "") + "}"
    assert_same(text.encode())


def test_the_batch_answer_has_the_json_content_type(client):
    reply = client.simulate_post("/v1/heartbeats", json={"heartbeats": [{"id": JOB}]})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == falcon.MEDIA_JSON
    assert reply.json == {"results": [{"id": JOB, "found": False}]}
