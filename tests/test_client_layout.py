"""The client distribution's shape and its argument building, without a
service: modules under 400 lines with no import circle, one module of
states that agrees with the server's, and the requests and command lines the
newer options build."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from app import model
from app.cli import build_parser as server_parser
from karmchari_client import states
from karmchari_client.cli import build_parser
from karmchari_client.cli_common import BadInput
from karmchari_client.cli_jobs import list_filters, worker_row
from karmchari_client.cli_output import local_time
from karmchari_client.client import listing_query
from tests.servers import ROOT

PACKAGE = ROOT / "client" / "karmchari_client"


def imports_of(path: Path) -> set[str]:
    """The package's modules ``path`` imports, also those imported for type
    checking only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == "karmchari_client":
            found |= {alias.name for alias in node.names
                      if (PACKAGE / f"{alias.name}.py").exists()}
        elif node.module.startswith("karmchari_client."):
            found.add(node.module.split(".")[1])
    return found - {path.stem}


def test_no_client_module_is_over_400_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(lengths.values()) <= 400, lengths


def test_the_client_modules_import_no_circle():
    graph = {path.stem: imports_of(path) for path in PACKAGE.glob("*.py")
             if path.stem != "__init__"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for name in graph.get(start, ()):
            if name == goal or name not in seen and reaches(name, goal, seen | {name}):
                return True
        return False

    circles = [name for name in graph if reaches(name, name, {name})]
    assert circles == []


def test_the_client_states_are_the_servers():
    assert states.STATES == model.STATES
    assert states.ENDED_STATES == model.TERMINAL_STATES
    assert {states.DONE_COMMAND, states.FAIL_COMMAND} == model.FINISH_COMMANDS


def test_a_listing_query_has_the_filters_given():
    assert listing_query(state="pause", type=None, worker="host-7", name_prefix="night",
                         limit=20, cursor=None, stalled=False, labels={"team": "a"}) == [
        ("state", "pause"), ("worker", "host-7"), ("name_prefix", "night"), ("limit", "20"),
        ("stalled", "false"), ("label", "team:a")]
    assert listing_query(limit=None, cursor=None) == []


def parse(*argv: str):
    return build_parser({}).parse_args(list(argv))


def test_list_takes_the_worker_and_name_prefix_filters():
    args = parse("list", "--worker", "host-7", "--name-prefix", "nightly", "-o", "json")
    assert list_filters(args) == {"state": None, "type": None, "labels": {}, "stalled": None,
                                  "started": None, "worker": "host-7", "name_prefix": "nightly",
                                  "limit": None}
    assert args.output == "json"


def test_list_waiting_is_start_not_started_not_stalled():
    assert {k: v for k, v in list_filters(parse("list", "--waiting")).items()
            if v not in (None, {})} == {"state": "start", "started": False, "stalled": False}
    assert list_filters(parse("list", "--not-started"))["started"] is False
    assert list_filters(parse("list", "--started"))["started"] is True
    with pytest.raises(BadInput):
        list_filters(parse("list", "--waiting", "--state", "pause"))
    with pytest.raises(SystemExit):   # one of --started, --not-started, --waiting
        parse("list", "--waiting", "--started")


def test_rerun_and_workers_take_the_output_option():
    args = parse("rerun", "a" * 32, "--idempotency-key", "k1", "-o", "json")
    assert (args.job_id, args.idempotency_key, args.output) == ("a" * 32, "k1", "json")
    args = parse("workers", "--limit", "5", "--all", "--output", "text")
    assert (args.limit, args.all, args.output) == (5, True, "text")
    with pytest.raises(SystemExit):
        parse("rerun", "not-an-id")


@pytest.fixture
def zone(monkeypatch):
    """Sets the local time zone (``TZ``) of this process for one test."""
    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_a_worker_row_lists_its_jobs_by_state(zone):
    zone("Asia/Kolkata")
    row = worker_row({"name": "host-7", "last_heartbeat_at": "2026-01-01T00:00:00Z",
                      "jobs": {"start": 2, "pause": 0, "failed": 1}, "stalled": 1})
    assert row == ["host-7", "2026-01-01 05:30:00 +05:30", "1", "start 2, failed 1"]


@pytest.mark.parametrize(("name", "iso", "expected"), [
    ("Asia/Kolkata", "2026-12-05T08:08:10.120Z", "2026-12-05 13:38:10 +05:30"),
    ("Asia/Kolkata", "2026-12-05T23:59:59.999999+00:00", "2026-12-06 05:29:59 +05:30"),
    ("Europe/Berlin", "2026-12-05T08:08:10Z", "2026-12-05 09:08:10 +01:00"),
    ("Europe/Berlin", "2026-07-05T08:08:10Z", "2026-07-05 10:08:10 +02:00"),
    ("America/St_Johns", "2026-12-05T08:08:10.5+01:00", "2026-12-05 03:38:10 -03:30"),
    ("UTC", "2026-12-05T08:08:10.120Z", "2026-12-05 08:08:10 +00:00"),
    ("Asia/Kolkata", "not a time", "not a time"),
    ("Asia/Kolkata", "2026-12-05T08:08:10", "2026-12-05T08:08:10"),  # no zone: as given
    ("Asia/Kolkata", None, ""),
])
def test_times_are_local_iso_to_the_second_with_the_offset(zone, name, iso, expected):
    """The dashboard's convention (app/ui/dom.js localTime), in TZ's zone."""
    zone(name)
    assert local_time(iso) == expected


@pytest.mark.parametrize("option", [["-o", "json"], ["--output", "json"], ["--json"]])
def test_import_legacy_takes_the_output_option_like_the_other_commands(option):
    args = server_parser().parse_args(["import-legacy", *option])
    assert args.output == "json"
