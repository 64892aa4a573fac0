"""Request bodies are checked by jsonschema_rs first, and by the reference
validator (jsonschema, patterns read as JSON Schema reads them) only when
jsonschema_rs refuses them. That is right only if jsonschema_rs never accepts
a body the reference refuses: checked here on bodies built like the real ones,
each member valid or just past a limit, and on arbitrary JSON."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Config
from app.model import COMMANDS, STATES
from app.schemas import RequestValidator, request_schemas, validators

CONFIG = Config()
SCHEMAS = request_schemas(CONFIG)
VALIDATORS = validators(CONFIG)
HEX = "0123456789abcdef"


def _text(limit: int) -> st.SearchStrategy:
    return st.one_of(st.text(max_size=12), st.sampled_from(["x" * limit, "é" * limit,
                                                            "x" * (limit + 1), "😀" * limit]))


MEMBERS = {
    "type": st.one_of(st.sampled_from([*CONFIG.job_types, "", "Teams", "teams\n"]),
                      st.text(max_size=6), st.integers()),
    "name": _text(256),
    "labels": st.dictionaries(
        st.one_of(st.sampled_from(["team", "a.b/c-d_e", "-team", "", "é", "a:b", "x" * 63,
                                   "x" * 64, "team\n"]), st.text(max_size=5)),
        st.one_of(_text(CONFIG.max_label_chars), st.integers()),
        max_size=CONFIG.max_labels + 1),
    "heartbeat_timeout": st.one_of(st.integers(-2, 604801),
                                   st.sampled_from([604800, 604801, 5.0, 5.5, True, "5", None])),
    "command": st.one_of(st.sampled_from([*COMMANDS, "", "Pause", "pause "]), st.text(max_size=5)),
    "reason": _text(CONFIG.max_text_chars),
    "message": _text(CONFIG.max_text_chars),
    "worker": _text(256),
    "progress": st.one_of(st.floats(-1, 101), st.integers(-1, 101),
                          st.sampled_from([100, 100.0, 100.000001, -0.0, True, "5", None])),
    "observed_state": st.one_of(st.sampled_from([*STATES, "", "paused", "start\n"]),
                                st.text(max_size=5)),
    "jobs": st.dictionaries(
        st.one_of(st.text(alphabet=HEX, min_size=31, max_size=33),
                  st.sampled_from(["A" * 32, "a" * 32 + "\n", "{kc:a}:job:x", ""])),
        st.one_of(st.integers(-1, 3), st.sampled_from([2**53, 2**53 + 1, 1.0, 1.5, True, "1"])),
        max_size=3),
    "wait": st.one_of(st.floats(-1, 61), st.sampled_from([0, 60, 60.5, True, "1", None])),
    "id": st.one_of(st.text(alphabet=HEX, min_size=31, max_size=33),
                    st.sampled_from(["A" * 32, "g" * 32, "a" * 32 + "\n", "\n" + "a" * 32, ""]),
                    st.integers()),
    "where": st.fixed_dictionaries({}, optional={
        "state": st.one_of(st.sampled_from([*STATES, "", "paused"]), st.text(max_size=5)),
        "type": st.one_of(st.sampled_from([*CONFIG.job_types, "", "Teams"]), st.text(max_size=5)),
        "label": st.lists(st.one_of(st.sampled_from(["team:a", "team", ":a", "a:b:c",
                                                     "team:" + "x" * 300]),
                                    st.text(max_size=8)), max_size=CONFIG.max_labels + 1),
        "stalled": st.one_of(st.booleans(), st.sampled_from(["true", 1, None])),
        "unknown": st.integers()}),
    "cursor": st.one_of(st.text(max_size=12), st.sampled_from(["", "=" * 4, "a" * 300])),
}


def shaped(schema: dict) -> st.SearchStrategy:
    """Objects with the schema's members (the required ones sometimes left
    out, an unknown one sometimes added), each value valid or nearly so."""
    properties = schema["properties"]
    required = schema.get("required", [])
    members = {name: batch(sub) if sub.get("type") == "array" else MEMBERS[name]
               for name, sub in properties.items()}
    base = st.fixed_dictionaries({k: members[k] for k in required},
                                 optional={k: v for k, v in members.items() if k not in required})
    mutation = st.sampled_from(["none", "none", "none", "drop required", "unknown member"])
    return st.tuples(base, mutation).map(lambda pair: _mutate(*pair, required))


def _mutate(body: dict, mutation: str, required: list[str]) -> dict:
    if mutation == "drop required" and required:
        body.pop(required[0], None)
    elif mutation == "unknown member":
        body["unknown"] = 1
    return body


def batch(schema: dict) -> st.SearchStrategy:
    if schema["items"].get("type") != "object":  # a list of ids
        return st.lists(MEMBERS["id"], max_size=4) | st.sampled_from(
            [["a" * 32] * CONFIG.max_batch, ["a" * 32] * (CONFIG.max_batch + 1), []])
    item = shaped(schema["items"])
    full = {"id": "a" * 32, "progress": 1}
    return st.one_of(st.lists(item, max_size=4),
                     st.sampled_from([[full] * CONFIG.max_batch, [full] * (CONFIG.max_batch + 1)]))


any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False,
                                                                 allow_infinity=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_fast_path_accepts_nothing_the_reference_refuses(name, data):
    body = data.draw(st.one_of(shaped(SCHEMAS[name]), any_json))
    errors = [e.message for e in VALIDATORS[name].iter_errors(body)]
    expected = [e.message for e in RequestValidator(SCHEMAS[name]).iter_errors(body)]
    assert errors == expected, json.dumps(body)[:500]


def test_valid_bodies_take_the_fast_path():
    ids = [f"{n:032x}" for n in range(100)]
    bodies = {
        "RegisterJob": {"type": "teams", "name": "nightly", "labels": {"team": "a"},
                        "heartbeat_timeout": 300},
        "Command": {"command": "pause", "reason": "maintenance"},
        "Heartbeat": {"progress": 42.5, "message": "step 3", "worker": "host-1",
                      "observed_state": "start"},
        "Heartbeats": {"heartbeats": [{"id": i, "progress": 1} for i in ids]},
        "Watch": {"jobs": {i: 7 for i in ids}, "wait": 30},
        "BulkCommand": {"command": "pause", "reason": "maintenance", "ids": ids},
    }
    for name, body in bodies.items():
        assert VALIDATORS[name].fast_accepts(body), name
