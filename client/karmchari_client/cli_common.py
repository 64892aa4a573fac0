"""What the ``karmchari`` command's modules share: exit codes, the states and
commands it names, and the reading of its arguments."""

from __future__ import annotations

import argparse
import re

from karmchari_client.states import (
    DONE,
    DONE_COMMAND,
    FAIL_COMMAND,
    FAILED,
    KILLED,
    PAUSED,
    RUNNING,
    STATES,
)

EXIT_OK = 0
EXIT_ERROR = 1        # any other refusal, e.g. a missing token or a role that may not
EXIT_BAD_INPUT = 2    # also argparse's code for a bad command line
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4      # a transition the job's state does not allow, or a stale --if-match
EXIT_UNAVAILABLE = 5  # the service cannot be reached, or it says to retry later

# ``karmchari heartbeat`` exits with the state the job should be in, so that a
# shell worker can act on it (examples/worker.sh); away from the codes above.
STATE_EXIT = {RUNNING: EXIT_OK, PAUSED: 10, KILLED: 11, DONE: 12, FAILED: 13}

EXIT_CODES_HELP = f"""exit codes:
  {EXIT_OK}  success
  {EXIT_ERROR}  other error (e.g. missing token, role not allowed)
  {EXIT_BAD_INPUT}  bad input
  {EXIT_NOT_FOUND}  no such job
  {EXIT_REFUSED}  refused: the job's state does not allow it, or --if-match is stale
  {EXIT_UNAVAILABLE}  service down or unavailable
heartbeat exits with the state the job should be in:
  {STATE_EXIT[RUNNING]}  start: carry on
  {STATE_EXIT[PAUSED]} pause: stop working, keep heartbeating
  {STATE_EXIT[KILLED]} kill: clean up and stop
  {STATE_EXIT[DONE]} done, {STATE_EXIT[FAILED]} failed: finished; nothing more to do"""

DEFAULT_PORT = 51463
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
# The server's job ids (app/model.py); the states come from karmchari_client.states.
JOB_ID_RE = re.compile(r"[0-9a-f]{32}\Z")

# The command sent by each subcommand that changes a job's state.
STATE_COMMANDS = {"pause": PAUSED, "resume": RUNNING, "kill": KILLED, "done": DONE_COMMAND,
                  "fail": FAIL_COMMAND}


class BadInput(Exception):
    pass


# -- input -------------------------------------------------------------------------


def job_id(value: str) -> str:
    if not JOB_ID_RE.match(value):
        raise argparse.ArgumentTypeError(
            f"not a job id: {value!r} (32 lowercase hexadecimal characters)")
    return value


def label(value: str) -> tuple[str, str]:
    """KEY=VALUE or KEY:VALUE: a label key holds neither "=" nor ":"."""
    found = re.match(r"([^=:]+)[=:](.*)\Z", value, re.DOTALL)
    if not found:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE or KEY:VALUE, not {value!r}")
    return found[1], found[2]


def labels(pairs: list[tuple[str, str]] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value in pairs or []:
        if key in labels:
            raise BadInput(f"label {key!r} given twice")
        labels[key] = value
    return labels


__all__ = ["STATES"]
