"""docs/api.md stays true: its curl examples run, in order, against a live
``karmchari serve``, and each answer must match the one the page shows.

The page is a sequence of fenced blocks:

- ``sh`` with one ``curl -i`` command, followed by an ``http`` block: the
  status line, some headers, and the body (JSON: only the members shown are
  compared, so the page may shorten a job to the fields that matter);
- ``sh`` with ``NAME=value`` lines: shell variables for the commands after it.

Ids, cursors and times differ from run to run. An id or a cursor in the page
stands for the one the service gave at that place, consistently: once the
page's id ``d6de…`` was matched to a real id, every later ``d6de…`` (and a
variable set to it) must be that same real id. Times only have to be times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import ROOT

API_DOC = ROOT / "docs" / "api.md"
DOC_URL = "http://localhost:51463"

FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
ASSIGNMENT_RE = re.compile(r"([A-Z][A-Z0-9_]*)=(\S+)\Z")
# Values that differ between runs: each is matched by its kind.
TOKEN_RE = re.compile(r"(?P<cursor>[A-Za-z0-9_-]{40,})|(?P<id>[0-9a-f]{32})"
                      r"|(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")
KIND_RE = {"cursor": r"[A-Za-z0-9_-]{40,}", "id": r"[0-9a-f]{32}",
           "time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"}


@dataclass
class Example:
    line: int
    command: str
    expected: str


@dataclass
class Assignment:
    line: int
    name: str
    value: str


def read_page(path: Path) -> list[Example | Assignment]:
    text = path.read_text(encoding="utf-8")
    steps: list[Example | Assignment] = []
    pending: Example | None = None
    for match in FENCE_RE.finditer(text):
        kind, body = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if kind == "sh":
            assert pending is None, f"{path.name}:{pending.line}: a command without its answer"
            lines = body.strip().splitlines()
            assignments = [ASSIGNMENT_RE.match(raw.split("#")[0].strip()) for raw in lines]
            if all(assignments):
                steps += [Assignment(line, a.group(1), a.group(2)) for a in assignments]
            else:
                assert body.lstrip().startswith("curl "), f"{path.name}:{line}: not a curl call"
                pending = Example(line, body.strip(), "")
        elif kind == "http":
            assert pending is not None, f"{path.name}:{line}: an answer without its command"
            pending.expected = body
            steps.append(pending)
            pending = None
    assert pending is None, f"{path.name}:{pending.line}: a command without its answer"
    return steps


@dataclass
class Response:
    status_line: str
    headers: dict[str, str]
    body: str


def parse_http(text: str) -> Response:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.strip("\n").splitlines()
    headers = {}
    for raw in header_lines:
        name, _, value = raw.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status_line.strip(), headers, body.strip())


@dataclass
class Tokens:
    """The page's ids and cursors, and the real ones they stand for."""

    real: dict[str, str] = field(default_factory=dict)

    def match_text(self, documented: str, actual: str, where: str) -> None:
        pattern, names, pos = [], [], 0
        for token in TOKEN_RE.finditer(documented):
            pattern.append(re.escape(documented[pos:token.start()]))
            pattern.append(f"({KIND_RE[token.lastgroup]})")
            names.append((token.lastgroup, token.group()))
            pos = token.end()
        pattern.append(re.escape(documented[pos:]))
        found = re.fullmatch("".join(pattern), actual)
        assert found, f"{where}: expected {documented!r}, got {actual!r}"
        for (kind, page_value), real_value in zip(names, found.groups(), strict=True):
            if kind == "time":
                continue
            known = self.real.setdefault(page_value, real_value)
            assert known == real_value, \
                f"{where}: {page_value} stood for {known} before, now for {real_value}"
        assert len(set(self.real.values())) == len(self.real), \
            f"{where}: two ids of the page stand for one real id"

    def match_json(self, documented, actual, where: str) -> None:
        if isinstance(documented, dict):
            assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
            for key, value in documented.items():
                assert key in actual, f"{where}: no member {key!r} in {actual!r}"
                self.match_json(value, actual[key], f"{where}.{key}")
        elif isinstance(documented, list):
            assert isinstance(actual, list) and len(actual) == len(documented), \
                f"{where}: expected {len(documented)} items, got {actual!r}"
            for index, (doc_item, item) in enumerate(zip(documented, actual, strict=True)):
                self.match_json(doc_item, item, f"{where}[{index}]")
        elif isinstance(documented, str):
            assert isinstance(actual, str), f"{where}: expected a string, got {actual!r}"
            self.match_text(documented, actual, where)
        else:  # numbers (50 is 50.0), booleans (never 0 or 1), null
            same = documented == actual and \
                isinstance(documented, bool) == isinstance(actual, bool)
            assert same, f"{where}: expected {documented!r}, got {actual!r}"


def check_answer(example: Example, output: str, tokens: Tokens) -> None:
    where = f"docs/api.md:{example.line}"
    expected, actual = parse_http(example.expected), parse_http(output)
    assert actual.status_line == expected.status_line, \
        f"{where}: expected {expected.status_line!r}, got {actual.status_line!r}\n{output}"
    for name, value in expected.headers.items():
        assert name in actual.headers, f"{where}: no {name} header in\n{output}"
        tokens.match_text(value, actual.headers[name], f"{where} {name}")
    if not expected.body:
        assert not actual.body, f"{where}: expected no body, got {actual.body!r}"
    elif expected.body.startswith(("{", "[")):
        tokens.match_json(json.loads(expected.body), json.loads(actual.body), where)
    else:
        tokens.match_text(expected.body, actual.body, where)


def test_page_has_every_kind_of_example():
    commands = " ".join(step.command for step in read_page(API_DOC)
                        if isinstance(step, Example))
    for call in ("/v1/jobs ", "If-None-Match", "If-Match", "/commands", "/history",
                 "label=", "cursor=$CURSOR", "-X DELETE", "/heartbeat ", "/v1/heartbeats",
                 "wait=", "/v1/watch", "/registerJob", "/jobState", "/v1/jobs/commands",
                 "/v1/stats", "/v1/workers", "worker=", "name_prefix=", "/rerun",
                 '"delete"'):
        assert call in commands, call


def test_every_example_answers_as_documented(live_service):
    assert shutil.which("curl"), "the examples need curl"
    tokens = Tokens()
    variables: dict[str, str] = {}
    for step in read_page(API_DOC):
        if isinstance(step, Assignment):
            assert step.value in tokens.real, \
                f"docs/api.md:{step.line}: {step.value} appears in no answer above"
            variables[step.name] = tokens.real[step.value]
            continue
        command = step.command.replace(DOC_URL, live_service.url)
        command = "curl --silent --show-error " + command.removeprefix("curl ")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            env={**os.environ, **variables}, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"docs/api.md:{step.line}: {result.stderr}"
        check_answer(step, result.stdout, tokens)


def test_the_checker_maps_each_page_id_to_one_real_id():
    tokens = Tokens()
    tokens.match_json({"id": "d6de6d338c4a21d3646f54c54beba498"}, {"id": "1" * 32}, "here")
    with pytest.raises(AssertionError):
        tokens.match_json({"id": "d6de6d338c4a21d3646f54c54beba498"}, {"id": "2" * 32}, "here")
    with pytest.raises(AssertionError):
        tokens.match_text("Created! id = 5c0e2b7a9d14f3e86a2b0c4d7e9f1a38",
                          "Created! id = " + "1" * 32, "here")


def test_the_checker_compares_values_and_members():
    tokens = Tokens()
    with pytest.raises(AssertionError):
        tokens.match_json({"state": "pause"}, {"state": "start"}, "here")
    with pytest.raises(AssertionError):
        tokens.match_json({"stalled": False}, {"stalled": 0}, "here")
    with pytest.raises(AssertionError):
        tokens.match_json({"jobs": []}, {"jobs": [{}]}, "here")
    with pytest.raises(AssertionError):
        tokens.match_json({"version": 2}, {}, "here")
    tokens.match_json({"progress": 50}, {"progress": 50.0}, "here")
