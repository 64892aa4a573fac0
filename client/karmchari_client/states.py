"""The service's job states and the commands this library sends, in one place
for the whole client (the worker library and the command line).

The client needs only the standard library, so it does not import the
service's ``app.model``; tests/test_transitions.py checks that they agree.
"""

from __future__ import annotations

RUNNING, PAUSED, KILLED, DONE, FAILED = "start", "pause", "kill", "done", "failed"
STATES = (RUNNING, PAUSED, KILLED, DONE, FAILED)
ENDED_STATES = frozenset({KILLED, DONE, FAILED})
DONE_COMMAND, FAIL_COMMAND = "done", "fail"

__all__ = ["DONE", "DONE_COMMAND", "ENDED_STATES", "FAILED", "FAIL_COMMAND", "KILLED", "PAUSED",
           "RUNNING", "STATES"]
