"""Loads the Lua scripts of ``lua/`` and runs them, and names their return codes.

Files are named ``<verbNoun>-<numKeys>.lua`` (numKeys: the fixed keys; some
scripts take more after them); the loader reads the count from the name and
checks every call against it.

Includes (as BullMQ's ``src/commands/includes/``): a line
``--- @include "name"`` is replaced by ``lua/includes/name.lua``, itself
expanded the same way; each include goes in once per script, where it is
first named. ``stateMachine`` is no file: it is generated from ``app/model.py``,
the one definition of the states. Redis sees, and hashes, the expanded text.

Return codes: each script has its own set below, documented in its header
(tests/test_scripts.py checks that they agree). They follow one rule:
1 means this call wrote, 0 that nothing needed writing, 2 and up another
answer that writes nothing; a negative code is the error of
``app.errors.ScriptCode`` with that number.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.commands.core import Script

from app.errors import ScriptCode
from app.model import STATES, TARGET_STATE, TERMINAL_STATES

if TYPE_CHECKING:
    from app.store.connection import StoreClient


class RegisterJobCode(enum.IntEnum):
    CREATED = 1
    EXISTS = 0             # a retry of this very call: the job it created
    REPLAY = 2             # Idempotency-Key replay: the id of the first request's job
    IDEMPOTENCY_KEY_REUSED = ScriptCode.IDEMPOTENCY_KEY_REUSED


class ApplyCommandCode(enum.IntEnum):
    CHANGED = 1
    UNCHANGED = 0
    JOB_NOT_FOUND = ScriptCode.JOB_NOT_FOUND
    INVALID_COMMAND = ScriptCode.INVALID_COMMAND
    VERSION_MISMATCH = ScriptCode.VERSION_MISMATCH
    ILLEGAL_TRANSITION = ScriptCode.ILLEGAL_TRANSITION
    NOT_OWNER = ScriptCode.NOT_OWNER


class ApplyCommandsCode(enum.IntEnum):
    """A batch answers its counts instead of a code, unless the command is unknown."""

    INVALID_COMMAND = ScriptCode.INVALID_COMMAND


class DeleteJobCode(enum.IntEnum):
    DELETED = 1
    JOB_NOT_FOUND = ScriptCode.JOB_NOT_FOUND
    ILLEGAL_TRANSITION = ScriptCode.ILLEGAL_TRANSITION
    STALE_READ = ScriptCode.STALE_READ
    NOT_DUE = ScriptCode.NOT_DUE


class RecordHeartbeatsCode(enum.IntEnum):
    """Per job: a recorded heartbeat answers the job's state instead of a code."""

    JOB_NOT_FOUND = ScriptCode.JOB_NOT_FOUND
    NOT_OWNER = ScriptCode.NOT_OWNER


class ClearOrphansCode(enum.IntEnum):
    """Per job."""

    CLEARED = 1
    PRESENT = 0


class ImportLegacyJobsCode(enum.IntEnum):
    """Per job. UPDATED is the one code above 1 that writes: an import either
    creates a job or brings an imported one up to date, and the report tells
    the two apart."""

    IMPORTED = 1
    ALREADY = 0
    ID_TAKEN = 2
    CHANGED_HERE = 3
    UPDATED = 4
    INVALID_ARGUMENTS = ScriptCode.INVALID_ARGUMENTS   # the whole batch: nothing written


class RerunJobCode(enum.IntEnum):
    CREATED = 1
    EXISTS = 0             # a retry of this very call: the job it created
    REPLAY = 2             # Idempotency-Key replay: the id of the first request's job
    JOB_NOT_FOUND = ScriptCode.JOB_NOT_FOUND
    ILLEGAL_TRANSITION = ScriptCode.ILLEGAL_TRANSITION   # the old job has not ended
    STALE_READ = ScriptCode.STALE_READ
    IDEMPOTENCY_KEY_REUSED = ScriptCode.IDEMPOTENCY_KEY_REUSED


class DropWorkersCode(enum.IntEnum):
    DROPPED = 1


class DeleteLegacyJobCode(enum.IntEnum):
    DELETED = 1
    CHANGED = 0


# The code set of each script that has one (readJob answers data only).
RETURN_CODES: dict[str, type[enum.IntEnum]] = {
    "registerJob": RegisterJobCode,
    "applyCommand": ApplyCommandCode,
    "applyCommands": ApplyCommandsCode,
    "deleteJob": DeleteJobCode,
    "recordHeartbeats": RecordHeartbeatsCode,
    "clearOrphans": ClearOrphansCode,
    "importLegacyJobs": ImportLegacyJobsCode,
    "deleteLegacyJob": DeleteLegacyJobCode,
    "rerunJob": RerunJobCode,
    "dropWorkers": DropWorkersCode,
}

_NAME_RE = re.compile(r"(?P<name>[a-zA-Z]+)-(?P<keys>\d+)\.lua\Z")
INCLUDE_RE = re.compile(r'^--- @include "(?P<name>[A-Za-z]+)"[ \t]*$', re.M)
# Includes made from Python rather than read from lua/includes/.
GENERATED_INCLUDES = ("stateMachine",)


def script_dir() -> Path:
    """``lua/`` of a source checkout, or the copy installed as ``app/lua``."""
    installed = Path(str(resources.files("app"))) / "lua"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "lua"


def _lua_list(items: list[str]) -> str:
    return "{ " + ", ".join(f'"{i}"' for i in items) + " }"


def _lua_table(pairs: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {v}" for k, v in pairs.items()) + " }"


def state_machine_lua() -> str:
    """The ``stateMachine`` include: app/model.py's states, final states and
    command -> target state, as Lua tables."""
    return "\n".join((
        "-- Generated from app/model.py (app/store/scripts.py state_machine_lua):",
        "-- the states in the order of their index keys, the final states (no",
        "-- command leaves them) and the state each command leads to.",
        f"local STATES = {_lua_list(list(STATES))}",
        "local TERMINAL = " + _lua_table({s: "true" for s in STATES if s in TERMINAL_STATES}),
        "local TARGET = " + _lua_table({c: f'"{t}"' for c, t in TARGET_STATE.items()}),
        "",
    ))


def include_source(name: str) -> str:
    """One include as written (not expanded)."""
    if name == "stateMachine":
        return state_machine_lua()
    path = script_dir() / "includes" / f"{name}.lua"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such include")
    return path.read_text(encoding="utf-8")


def expand(source: str, included: set[str] | None = None) -> str:
    """``source`` with every include directive replaced by the include, once."""
    included = set() if included is None else included

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name in included:
            return f"-- (include {name}: above)"
        included.add(name)
        return expand(include_source(name), included).rstrip("\n")

    return INCLUDE_RE.sub(replace, source)


def load_source(name: str) -> str:
    """The text of script ``name`` as Redis runs it: includes expanded."""
    (path,) = script_dir().glob(f"{name}-*.lua")
    return expand(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class LuaScript:
    name: str
    num_keys: int
    source: str
    script: Script

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and EVAL when the server lost the script (a restart, SCRIPT
        FLUSH): EVAL loads and runs in one step, so no flush can come between
        (a SCRIPT LOAD then EVALSHA can meet a second NOSCRIPT)."""
        self.check(keys)
        client = self.script.registered_client
        try:
            return client.evalsha(self.script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    def check(self, keys: list[str]) -> None:
        if len(keys) < self.num_keys:
            raise ValueError(f"{self.name} takes at least {self.num_keys} keys, got {len(keys)}")

    def queue(self, pipe: Any, keys: list[str], args: list[Any], *,
              by_source: bool = False) -> None:
        self.check(keys)
        # execute_command, not pipe.evalsha(): redis-py's cluster pipeline blocks
        # that method, though it routes the command by its keys like any other.
        if by_source:
            pipe.execute_command("EVAL", self.source, len(keys), *keys, *args)
        else:
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)


class Scripts:
    """Every script of ``lua/``, registered once per client (redis-py's Script
    runs EVALSHA and reloads the source on NOSCRIPT), each one an attribute
    declared here, so a misspelt name fails the type check, not a request."""

    register_job: LuaScript
    apply_command: LuaScript
    apply_commands: LuaScript
    delete_job: LuaScript
    read_job: LuaScript
    record_heartbeats: LuaScript
    clear_orphans: LuaScript
    import_legacy_jobs: LuaScript
    delete_legacy_job: LuaScript
    rerun_job: LuaScript
    drop_workers: LuaScript
    index_waiting: LuaScript

    def __init__(self, client: StoreClient) -> None:
        self._client = client
        self.by_name: dict[str, LuaScript] = {}
        for path in sorted(script_dir().glob("*.lua")):
            match = _NAME_RE.match(path.name)
            if not match:
                raise ValueError(f"script file name must be <verbNoun>-<numKeys>.lua: {path.name}")
            source = expand(path.read_text(encoding="utf-8"))
            self.by_name[match["name"]] = LuaScript(
                match["name"], int(match["keys"]), source, client.register_script(source)
            )

        self.register_job = self._named("registerJob")
        self.apply_command = self._named("applyCommand")
        self.apply_commands = self._named("applyCommands")
        self.delete_job = self._named("deleteJob")
        self.read_job = self._named("readJob")
        self.record_heartbeats = self._named("recordHeartbeats")
        self.clear_orphans = self._named("clearOrphans")
        self.import_legacy_jobs = self._named("importLegacyJobs")
        self.delete_legacy_job = self._named("deleteLegacyJob")
        self.rerun_job = self._named("rerunJob")
        self.drop_workers = self._named("dropWorkers")
        self.index_waiting = self._named("indexWaiting")

    def _named(self, name: str) -> LuaScript:
        try:
            return self.by_name[name]
        except KeyError:
            raise FileNotFoundError(f"{script_dir()}: no script {name}-<numKeys>.lua") from None

    def load_all(self) -> None:
        for lua in self.by_name.values():
            self._client.script_load(lua.source)

    def all_loaded(self) -> bool:
        shas = [lua.script.sha for lua in self.by_name.values()]
        return all(self._client.script_exists(*shas))

    def run_pipeline(self, calls: list[tuple[LuaScript, list[str], list[Any]]]) -> list[Any]:
        """Run (script, keys, args) calls in one non-transactional pipeline (one
        round trip per node); if a script was missing from the server's cache,
        run the pipeline once more with EVAL. Scripts are idempotent for a replay."""
        for by_source in (False, True):
            pipe = self._client.pipeline(transaction=False)
            for lua, keys, args in calls:
                lua.queue(pipe, keys, args, by_source=by_source)
            results = pipe.execute(raise_on_error=False)
            if not by_source and any(isinstance(r, redis.exceptions.NoScriptError)
                                     for r in results):
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results
        raise AssertionError("unreachable")
