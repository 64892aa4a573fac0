"""Loads the Lua scripts of ``lua/`` and runs them.

Files are named ``<verbNoun>-<numKeys>.lua`` (numKeys: the fixed keys; some
scripts take more after them); the loader reads the count from the name and
checks every call against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import redis
from redis.commands.core import Script

_NAME_RE = re.compile(r"(?P<name>[a-zA-Z]+)-(?P<keys>\d+)\.lua\Z")


def script_dir() -> Path:
    """``lua/`` of a source checkout, or the copy installed as ``app/lua``."""
    installed = Path(str(resources.files("app"))) / "lua"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "lua"


@dataclass(frozen=True)
class LuaScript:
    name: str
    num_keys: int
    source: str
    script: Script

    def __call__(self, keys: list[str], args: list) -> list:
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

    def queue(self, pipe: redis.client.Pipeline, keys: list[str], args: list, *,
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
    runs EVALSHA and reloads the source on NOSCRIPT)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.by_name: dict[str, LuaScript] = {}
        for path in sorted(script_dir().glob("*.lua")):
            match = _NAME_RE.match(path.name)
            if not match:
                raise ValueError(f"script file name must be <verbNoun>-<numKeys>.lua: {path.name}")
            source = path.read_text(encoding="utf-8")
            self.by_name[match["name"]] = LuaScript(
                match["name"], int(match["keys"]), source, client.register_script(source)
            )

    def __getattr__(self, name: str) -> LuaScript:
        try:
            return self.by_name[name]
        except KeyError:
            raise AttributeError(name) from None

    def load_all(self) -> None:
        for lua in self.by_name.values():
            self._client.script_load(lua.source)

    def all_loaded(self) -> bool:
        shas = [lua.script.sha for lua in self.by_name.values()]
        return all(self._client.script_exists(*shas))

    def run_pipeline(self, calls: list[tuple[LuaScript, list[str], list]]) -> list:
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
