"""The job state machine of SPEC §2, written out for the tests on its own (not
taken from ``app``), so that the service is checked against the spec rather
than against itself."""

from __future__ import annotations

STATES = ("start", "pause", "kill", "done", "failed")
TERMINAL = frozenset({"kill", "done", "failed"})
# The state each command leads to.
TARGET = {"start": "start", "pause": "pause", "kill": "kill", "done": "done", "fail": "failed"}
COMMANDS = tuple(TARGET)
# (current state, command) pairs that change the state; every other pair is a
# no-op (the command leads to the current state) or refused with 409.
ALLOWED = frozenset({("start", "pause"), ("start", "kill"), ("start", "done"), ("start", "fail"),
                     ("pause", "start"), ("pause", "kill"), ("pause", "done"), ("pause", "fail")})


def outcome(state: str, command: str) -> str:
    """"changed", "no-op" or "refused"."""
    if TARGET[command] == state:
        return "no-op"
    return "changed" if (state, command) in ALLOWED else "refused"
