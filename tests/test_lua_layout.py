"""The Lua command layer shares instead of copying: what two scripts do alike
is an include of lua/includes/ (app/store/scripts.py expands them)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from app.store.scripts import (
    GENERATED_INCLUDES,
    INCLUDE_RE,
    expand,
    include_source,
    load_source,
    script_dir,
)

LUA = Path(__file__).resolve().parents[1] / "lua"
RUN = 6


def sources() -> list[Path]:
    return sorted(LUA.rglob("*.lua"))


def test_no_run_of_six_identical_lines_repeats_across_the_lua_sources():
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in sources():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line]
        for start in range(len(lines) - RUN + 1):
            seen[tuple(lines[start:start + RUN])].append(f"{path.name}:{start}")
    repeated = {run: where for run, where in seen.items() if len(where) > 1}
    assert not repeated, "\n\n".join(
        f"{', '.join(where)}:\n" + "\n".join(run) for run, where in repeated.items())


def test_every_include_is_used_and_every_directive_names_one():
    files = {p.stem for p in (LUA / "includes").glob("*.lua")}
    named = {m["name"] for path in sources()
             for m in INCLUDE_RE.finditer(path.read_text(encoding="utf-8"))}
    available = files | set(GENERATED_INCLUDES)
    assert named <= available, named - available
    assert available <= named, f"unused includes: {available - named}"


def test_includes_expand_once_and_leave_no_directive():
    for path in sorted(LUA.glob("*-*.lua")):
        name = path.name.split("-")[0]
        text = load_source(name)
        assert not INCLUDE_RE.search(text), name
        for include in GENERATED_INCLUDES + tuple(p.stem for p in (LUA / "includes").glob("*")):
            body = include_source(include).strip()
            assert text.count(body) <= 1, (name, include)


def test_a_missing_include_is_an_error():
    with pytest.raises(FileNotFoundError, match="noSuchInclude"):
        expand('--- @include "noSuchInclude"\n')


def test_the_state_machine_comes_from_the_model_and_no_script_spells_it():
    from app.model import STATES, TARGET_STATE, TERMINAL_STATES
    text = include_source("stateMachine")
    for state in STATES:
        assert f'"{state}"' in text
    for state in TERMINAL_STATES:
        assert f"{state} = true" in text
    for command, target in TARGET_STATE.items():
        assert f'{command} = "{target}"' in text
    final = "{ kill = true, done = true, failed = true }"
    for path in script_dir().rglob("*.lua"):
        assert final not in path.read_text(encoding="utf-8"), path.name


def test_package_data_ships_every_script_and_include():
    """`pip install .` (not editable) installs lua/ as app/lua: every file
    under it matches an "app.lua" package-data pattern."""
    import re
    from fnmatch import fnmatch
    pyproject = (LUA.parent / "pyproject.toml").read_text(encoding="utf-8")
    line = re.search(r'^"app\.lua" = \[(.*?)\]', pyproject, re.M)
    assert line
    patterns = re.findall(r'"([^"]+)"', line[1])
    for path in sources():
        name = path.relative_to(LUA).as_posix()
        assert any(fnmatch(name, pattern) for pattern in patterns), name
