"""docs/redis-keys.md in step with the scripts' headers: every script has its
row, with every key its header declares; every key a script writes names
that script as a writer (or remover); every script that publishes is named
among the publishers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.store.scripts import load_source

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "redis-keys.md").read_text(encoding="utf-8")
SCRIPTS = sorted(p.stem for p in (ROOT / "lua").glob("*-*.lua"))
KEY_RE = re.compile(r"\{kc:s\}:([a-z]+(?::(?:all|state|type|label|name|worker|jobs|waiting))?)")
# Keys a script declares but only reads: applyCommands checks the filter's
# label indexes (ZSCORE); clearOrphans reads whether the job hash is there;
# indexWaiting reads the jobs and their deadlines.
READ_ONLY = {("applyCommands", "idx:label"), ("clearOrphans", "job"), ("indexWaiting", "deadline"),
             ("indexWaiting", "job")}


def header(stem: str) -> str:
    return (ROOT / "lua" / f"{stem}.lua").read_text(encoding="utf-8").split("]]", 1)[0]


def declared_keys(stem: str) -> set[str]:
    return set(KEY_RE.findall(header(stem)))


def table_rows(title: str) -> list[str]:
    section = DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def script_row(stem: str) -> str:
    (row,) = [r for r in table_rows("The scripts and their keys") if r.startswith(f"| `{stem}` ")]
    return row


def key_row(kind: str) -> str:
    (row,) = [r for r in table_rows("The keys")
              if re.match(rf"\| `\{{P:<s>\}}:{re.escape(kind)}(`|:<)", r)]
    return row


def test_every_script_has_a_row_and_every_row_a_script():
    rows = {re.match(r"\| `([^`]+)`", r)[1] for r in table_rows("The scripts and their keys")}
    assert rows == set(SCRIPTS)


@pytest.mark.parametrize("stem", SCRIPTS)
def test_the_row_of_a_script_names_every_key_its_header_declares(stem):
    row = script_row(stem)
    for kind in declared_keys(stem):
        # The job hash and its history are named in words ("job and hist of
        # each job"); the other keys by their name.
        pattern = rf"\b{kind}\b" if kind in ("job", "hist") else rf"`{re.escape(kind)}[:`]"
        assert re.search(pattern, row), f"{stem}: {kind}"


@pytest.mark.parametrize("stem", [s for s in SCRIPTS if "no-writes" not in header(s)])
def test_every_key_a_script_writes_names_it_in_the_keys_table(stem):
    name = stem.split("-")[0]
    for kind in declared_keys(stem):
        if (name, kind) in READ_ONLY:
            continue
        assert f"`{name}`" in key_row(kind), f"{kind} is written by {name}"


def test_every_publisher_is_named_with_the_channel():
    paragraph = DOC.split("sharded pub/sub channel", 1)[1].split("\n\n", 1)[0]
    for stem in SCRIPTS:
        name = stem.split("-")[0]
        if "SPUBLISH" in load_source(name):
            assert f"`{name}`" in paragraph, name


def test_every_key_of_the_schema_has_a_row():
    for kind in ("job", "hist", "idx:all", "idx:state", "idx:type", "idx:label", "deadline",
                 "expiry", "labels", "changes", "idem", "idx:waiting", "deadline:waiting",
                 "migrations"):
        key_row(kind)
