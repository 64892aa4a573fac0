"""app.model's state machine is the spec's, and the client library's own names
for states and commands are the service's."""

from __future__ import annotations

import itertools

import pytest

from app import model
from karmchari_client import worker
from tests import spec_table

_SPEC_WORDS = {"changed": model.Outcome.CHANGED, "no-op": model.Outcome.UNCHANGED,
               "refused": model.Outcome.REFUSED}


@pytest.mark.parametrize(("state", "command"),
                         list(itertools.product(spec_table.STATES, spec_table.COMMANDS)))
def test_model_table_is_the_spec_table(state, command):
    assert model.outcome(state, command) is _SPEC_WORDS[spec_table.outcome(state, command)]


def test_model_names_are_the_spec_names():
    assert model.STATES == spec_table.STATES
    assert model.COMMANDS == spec_table.COMMANDS
    assert model.TARGET_STATE == spec_table.TARGET
    assert model.TERMINAL_STATES == spec_table.TERMINAL


def test_the_client_library_names_the_states_and_commands_as_the_service():
    assert (worker.RUNNING, worker.PAUSED, worker.KILLED, worker.DONE, worker.FAILED) == (
        model.State.START.value, model.State.PAUSE.value, model.State.KILL.value,
        model.State.DONE.value, model.State.FAILED.value)
    assert worker.ENDED_STATES == model.TERMINAL_STATES
    assert {worker.DONE_COMMAND, worker.FAIL_COMMAND} == model.FINISH_COMMANDS
