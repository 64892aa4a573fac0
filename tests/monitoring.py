"""Reads what a Redis server really runs, through MONITOR: the commands each
client sends and, marked with the source ``lua``, the commands scripts run."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import redis

_LINE_RE = re.compile(rb"(?P<time>\d+\.\d+) \[(?P<db>\d+) (?P<source>[^\]]*)\] (?P<args>.*)\Z",
                      re.DOTALL)
# MONITOR quotes each argument the way sdscatrepr does.
_ARG_RE = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE_RE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unescape(raw: bytes) -> str:
    def replace(match: re.Match) -> bytes:
        code = match.group(1)
        if code.startswith(b"x") and len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _ESCAPES.get(code, code)

    return _ESCAPE_RE.sub(replace, raw).decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class SentCommand:
    source: str  # "lua" for a command run by a script, else the client's "ip:port"
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.args[0].upper()

    @property
    def from_script(self) -> bool:
        return self.source == "lua"


def parse_monitor_line(line: bytes) -> SentCommand:
    match = _LINE_RE.match(line)
    if match is None:
        raise ValueError(f"not a MONITOR line: {line[:200]!r}")
    args = tuple(_unescape(a) for a in _ARG_RE.findall(match["args"]))
    return SentCommand(match["source"].decode(), args)


class CommandMonitor:
    """MONITOR on a connection of its own. ``collect()`` returns what the
    server ran since the previous call: it sends a unique ECHO on another
    connection and reads up to it, so nothing is missed and nothing waits on a
    clock. The commands of that marker connection are left out."""

    def __init__(self, url: str) -> None:
        self._pool = redis.ConnectionPool.from_url(url)
        self._connection = self._pool.get_connection()
        self._connection.send_command("MONITOR")
        if self._connection.read_response() != b"OK":
            raise RuntimeError("MONITOR refused")
        self._marker = redis.Redis.from_url(url, socket_timeout=5)
        self._marker_source = self._marker.client_info()["addr"]
        self.collect()

    def collect(self) -> list[SentCommand]:
        token = f"monitor-mark-{uuid.uuid4().hex}"
        self._marker.echo(token)
        seen = []
        while True:
            command = parse_monitor_line(self._connection.read_response())
            if command.source == self._marker_source:
                if command.args == ("ECHO", token):
                    return seen
                continue
            seen.append(command)

    def close(self) -> None:
        self._marker.close()
        self._connection.disconnect()
        self._pool.disconnect()
