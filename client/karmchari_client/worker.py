"""The worker side: run a job under Karmchari's control.

::

    from karmchari_client import JobKilled, Worker

    try:
        with Worker.register("export", heartbeat_timeout=30) as worker:
            for step in range(100):
                worker.checkpoint(progress=step)   # blocks while paused
                do_one_step()
    except JobKilled:
        clean_up()

The job's heartbeats (progress, message, and the state the worker is in) go
with those of every other Worker of the process, one ``POST /v1/heartbeats``
per interval from one thread (``karmchari_client.heartbeats``), and each
answer tells the Worker its job's state; and the job joins the process's one
watch (``POST /v1/watch``, shared by all the Workers of the process, see
``karmchari_client.watcher``), so that a command reaches the worker within
milliseconds rather than at the next heartbeat.
``checkpoint()`` is where the program obeys: it returns at once while the job
runs, blocks while it is paused (acknowledging the pause with
``observed_state=pause``) and raises ``JobKilled`` once it is killed. Leaving
the ``with`` block reports ``done``, or ``fail`` with the exception as reason,
or, after a kill, acknowledges it (``observed_state=kill``).

Ctrl-C and SIGTERM behave alike: either leaves the ``with`` block with a
``KeyboardInterrupt`` (``Interrupted`` for SIGTERM), and the job is marked
``failed`` with the reason ``interrupted by SIGINT (Ctrl-C)`` or
``interrupted by SIGTERM`` (see ``karmchari_client.interrupts``).

The service may restart at any time: every call is retried with exponential
backoff and jitter, honouring ``Retry-After``, and the worker keeps going on
what it last learned. A command sent meanwhile is not lost: it is the job's
state, and the first answer after the restart carries it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from karmchari_client import interrupts
from karmchari_client.backoff import Backoff
from karmchari_client.client import ApiError, Client, ServiceUnavailable
from karmchari_client.heartbeats import Heartbeater
from karmchari_client.states import (
    DONE,
    DONE_COMMAND,
    ENDED_STATES,
    FAIL_COMMAND,
    FAILED,
    KILLED,
    PAUSED,
    RUNNING,
)
from karmchari_client.watcher import Watcher

log = logging.getLogger(__name__)

# The states are this package's (karmchari_client.states), named here too for
# the programs that took them from this module.
__all__ = ["DONE", "DONE_COMMAND", "ENDED_STATES", "FAILED", "FAIL_COMMAND", "KILLED",
           "PAUSED", "RUNNING", "JobEnded", "JobKilled", "Worker"]

MAX_TEXT_CHARS = 1024  # the service's limit on message and reason
# Seconds the final report of an interrupted job is retried while the service
# is away (a supervisor's grace period before SIGKILL is often 10 s).
INTERRUPTED_GIVE_UP = 5.0


class JobEnded(Exception):
    """The job ended while this worker ran it: the program should stop.

    ``state`` is the job's state (``done`` or ``failed`` when someone else
    finished it), or None when the job no longer exists."""

    def __init__(self, job_id: str, state: str | None) -> None:
        self.job_id = job_id
        self.state = state
        super().__init__(f"job {job_id} " + (f"is {state}" if state else "no longer exists"))


class JobKilled(JobEnded):
    """The job was killed: clean up and stop. The worker acknowledges the kill
    when the ``with`` block is left (or on ``finish()``)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, KILLED)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 1] + "…"


class Worker:
    """Runs one job: heartbeats, obeys pause/resume/kill at ``checkpoint()``,
    and reports how the job ended. Thread-safe: any thread may call
    ``checkpoint()``; all of them block while the job is paused.

    ``heartbeat_interval`` defaults to a third of the job's
    ``heartbeat_timeout`` (so that two lost heartbeats do not make it look
    stalled), at most 10 s. The heartbeats go out with those of the
    process's other Workers of the same service and token: one thread and
    one ``POST /v1/heartbeats`` per interval for all of them.
    ``long_poll=False`` learns commands from the heartbeats alone; otherwise
    the job joins the process's shared watch, which waits at most
    ``long_poll_wait`` seconds per request.
    ``on_state(state)`` is called from a background thread each time the
    worker learns a new state. ``give_up_after`` bounds how long the start and
    the final report are retried while the service is away.
    ``handle_sigterm=False`` leaves SIGTERM's handling to the program (by
    default a Worker started in the main thread turns it into ``Interrupted``).
    """

    def __init__(self, url: str | None, job_id: str, *, token: str | None = None,
                 worker_name: str | None = None, heartbeat_interval: float | None = None,
                 long_poll: bool = True, long_poll_wait: float = 30.0,
                 on_state: Callable[[str | None], None] | None = None,
                 max_backoff: float = 30.0, give_up_after: float = 300.0,
                 handle_sigterm: bool = True, client: Client | None = None) -> None:
        self.job_id = job_id
        self.worker_name = worker_name or f"{socket.gethostname()}:{os.getpid()}"
        self._client = client or Client(url, token=token)
        self._interval = heartbeat_interval
        self._long_poll = long_poll
        self.long_poll_wait = long_poll_wait
        self._watcher: Watcher | None = None
        self._heartbeats: Heartbeater | None = None
        self._on_state = on_state
        self.max_backoff = max_backoff
        self._give_up_after = give_up_after
        self._handle_sigterm = handle_sigterm
        self._counted_in = False  # by interrupts.worker_started()
        # Everything below is guarded by _changed's lock.
        self._changed = threading.Condition()
        self._state: str | None = RUNNING
        self._version = 0
        self._observed = RUNNING
        self._progress: float | None = None
        self._message: str | None = None
        self._closing = False

    # -- starting a job -------------------------------------------------------

    @classmethod
    def register(cls, job_type: str, url: str | None = None, *, token: str | None = None,
                 name: str | None = None, labels: dict[str, str] | None = None,
                 heartbeat_timeout: int | None = None, **options: Any) -> Worker:
        """Register a new job of ``job_type`` and return a Worker for it (not
        started yet: use it in a ``with`` block). The registration is retried
        under one Idempotency-Key, so a retry never creates a second job."""
        client = options.pop("client", None) or Client(url, token=token)
        key = uuid.uuid4().hex
        job = _retrying(lambda: client.register(job_type, name=name, labels=labels,
                                                heartbeat_timeout=heartbeat_timeout,
                                                idempotency_key=key),
                        Backoff(cap=options.get("max_backoff", 30.0)),
                        options.get("give_up_after", 300.0))
        return cls(url, job["id"], client=client, **options)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.finish(exc)

    def start(self) -> None:
        """Send the first heartbeat (so that a wrong id or token fails here,
        not in the background), then join the process's shared heartbeats
        and watch."""
        if self._handle_sigterm and not self._counted_in:
            self._counted_in = interrupts.worker_started()
        try:
            self._join()
        except BaseException:
            if self._counted_in:  # no finish() follows a failed start
                self._counted_in = False
                interrupts.worker_finished()
            raise

    def _join(self) -> None:
        answer = self._retry(lambda: self._client.heartbeat(
            self.job_id, worker=self.worker_name, observed_state=RUNNING))
        self._learn(answer["state"], answer["version"])
        interval = self._interval
        if interval is None:
            job = self._retry(lambda: self._client.get(self.job_id))
            timeout = job["heartbeat_timeout"]
            interval = self._interval = min(10.0, max(0.2, timeout / 3)) if timeout else 10.0
        self._heartbeats = Heartbeater.shared(self._client.url, self._client.token)
        self._heartbeats.add(self, interval)
        if self._long_poll:
            self._watcher = Watcher.shared(self._client.url, self._client.token)
            self._watcher.add(self)

    # -- what the worker program calls --------------------------------------

    @property
    def state(self) -> str | None:
        """The job's state as last learned; None once the job no longer exists."""
        with self._changed:
            return self._state

    def checkpoint(self, progress: float | None = None, message: str | None = None) -> None:
        """Report progress (percent, 0 to 100) and obey the job's state: return
        while it runs, block while it is paused, raise ``JobKilled`` (or
        ``JobEnded``) once it is over."""
        if progress is not None and not 0 <= progress <= 100:
            raise ValueError(f"progress is a percentage from 0 to 100, not {progress!r}")
        with self._changed:
            if progress is not None:
                self._progress = float(progress)
            if message is not None:
                self._message = _clip(message)
            self._raise_if_ended()
            if self._state != PAUSED:
                return
            self._report_observed(PAUSED)
            while self._state == PAUSED:
                self._changed.wait()
            self._raise_if_ended()
            self._report_observed(RUNNING)

    def finish(self, error: BaseException | None = None) -> None:
        """Report how the job ended and stop the background threads: ``done``,
        ``fail`` with ``error`` as reason, or, if the job was killed, only the
        acknowledgement. Called by ``__exit__``."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._watcher is not None:
            self._watcher.remove(self)
        if self._heartbeats is not None:
            self._heartbeats.remove(self)  # waits, so that no heartbeat overtakes the last report
        try:
            if isinstance(error, JobEnded) or self.state in ENDED_STATES or self.state is None:
                self._acknowledge_end()
            elif error is None or isinstance(error, SystemExit) and not error.code:
                self._send_final(DONE_COMMAND, "")
            else:
                # A signal is not the work failing: the reason says which one.
                interrupted = interrupts.interruption(error)
                if interrupted:
                    # Whoever sent it waits for the process: retry briefly, not for minutes.
                    self._give_up_after = min(self._give_up_after, INTERRUPTED_GIVE_UP)
                reason = interrupted or f"{type(error).__name__}: {error}"
                self._send_final(FAIL_COMMAND, _clip(reason))
        finally:
            self._client.close()
            if self._counted_in:
                self._counted_in = False
                interrupts.worker_finished()

    # -- what the shared watch calls -------------------------------------------

    def known_version(self) -> int:
        with self._changed:
            return self._version

    def ended(self) -> bool:
        with self._changed:
            return self._closing or self._state is None or self._state in ENDED_STATES

    def learn_from_watch(self, state: str | None, version: int) -> None:
        self._learn(state, version)

    # -- what the shared heartbeats call ---------------------------------------

    def heartbeat_report(self) -> dict[str, Any] | None:
        """This job's part of the next heartbeat; None once it is over."""
        with self._changed:
            if self._closing or self._state is None or self._state in ENDED_STATES:
                return None
            report = {"id": self.job_id, "worker": self.worker_name,
                      "observed_state": self._observed, "progress": self._progress,
                      "message": self._message}
        return {k: v for k, v in report.items() if v is not None}

    def learn_from_heartbeat(self, state: str | None, version: int) -> None:
        self._learn(state, version)

    def _raise_if_ended(self) -> None:
        if self._state == KILLED:
            raise JobKilled(self.job_id)
        if self._state is None or self._state in ENDED_STATES:
            raise JobEnded(self.job_id, self._state)

    # -- internals ------------------------------------------------------------

    def _report_observed(self, observed: str) -> None:
        """Called with the lock held: have the shared heartbeats send it now."""
        self._observed = observed
        if self._heartbeats is not None:
            self._heartbeats.wake(self)

    def _learn(self, state: str | None, version: int) -> None:
        """Take a state from an answer; answers may come back out of order
        (heartbeat and long-poll threads), the version tells which is newer."""
        with self._changed:
            if state is not None and version < self._version:
                return
            changed = state != self._state
            self._state, self._version = state, max(version, self._version)
            if changed:
                self._changed.notify_all()
        if changed and self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # a faulty callback must not stop the heartbeats
                log.exception("on_state callback of job %s failed", self.job_id)

    def _retry(self, call: Callable[[], Any]) -> Any:
        return _retrying(call, Backoff(cap=self.max_backoff), self._give_up_after)

    def _send_final(self, command: str, reason: str) -> None:
        """The last progress and message, then ``done`` or ``fail``."""
        try:
            self._retry(lambda: self._client.heartbeat(
                self.job_id, worker=self.worker_name, observed_state=RUNNING,
                progress=self._progress, message=self._message))
            # One key for every attempt: a retry after an unknown outcome is applied once.
            key = uuid.uuid4().hex
            answer = self._retry(lambda: self._client.command(self.job_id, command,
                                                              reason=reason,
                                                              idempotency_key=key))
            self._learn(answer["job"]["state"], answer["job"]["version"])
        except ApiError as error:
            if error.status == 409 and error.current_state == KILLED:
                self._learn(KILLED, error.problem.get("version", self._version))
                self._acknowledge_end()
            elif error.status not in (404, 409):
                raise
            else:
                log.warning("job %s: could not report %s: %s", self.job_id, command, error)

    def _acknowledge_end(self) -> None:
        """Tell the service this worker has stopped on a kill; other endings
        (done or failed by someone else, deleted) need no answer."""
        if self.state != KILLED:
            return
        try:
            self._retry(lambda: self._client.heartbeat(self.job_id, observed_state=KILLED))
        except ApiError as error:  # ServiceUnavailable too: the kill stands anyway
            log.warning("job %s: could not acknowledge the kill: %s", self.job_id, error)


def _retrying(call: Callable[[], Any], backoff: Backoff, give_up_after: float) -> Any:
    """``call()``, retried while the service is unavailable, for at most
    ``give_up_after`` seconds (then the last ServiceUnavailable is raised)."""
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            return call()
        except ServiceUnavailable as error:
            delay = backoff.next(error.retry_after)
            if time.monotonic() + delay > deadline:
                raise
            log.info("%s; retrying in %.1fs", error, delay)
            time.sleep(delay)
