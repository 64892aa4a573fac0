"""One heartbeat thread per process: every ``Worker`` of a process that talks
to the same service (URL and token) heartbeats through one thread that sends
one ``POST /v1/heartbeats`` per interval for all their jobs, instead of a
thread and a request per job. 500 jobs cost one request per interval, not 500.

Jobs with the same interval share one schedule (a job that joins is sent
with the others at their next turn; its first heartbeat was sent when it
started). When one turn comes, the jobs whose own turn is less than half
their interval away go along, so jobs with different intervals still share
requests, and no job is heartbeated more than twice as often as it asked.
A pause or resume acknowledged at ``checkpoint()`` is sent at once, with
whatever else is waiting.

A batch is split only past the service's limits (``--max-batch`` items and
``--max-body-bytes``, 500 and 64 KiB by default; a lower limit is learned
from the service's 400 or 413). Errors stay per job: a job that no longer
exists or is refused in the answer concerns its own Worker only; a batch
refused as a whole for one job's report (400) is sent job by job once, and
the job refused then is sent on its own from then on. A service without
``POST /v1/heartbeats`` (404 or 405) gets one request per job, as before.
While the service is away, the thread backs off (honouring ``Retry-After``)
and sends what is then due in one batch.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from karmchari_client.backoff import Backoff
from karmchari_client.client import ApiError, Client, ServiceUnavailable
from karmchari_client.shared import JobMember, PerProcess

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500  # the service's --max-batch default
DEFAULT_MAX_BYTES = 64 * 1024  # its --max-body-bytes default
_ENVELOPE_BYTES = len('{"heartbeats":[]}')
# "heartbeats: too many items, at most 200" and "the body may be at most 8192 bytes":
# a service with lower limits than ours.
_ITEMS_RE = re.compile(r"too many items, at most (\d+)")
_BYTES_RE = re.compile(r"at most (\d+) bytes")

Report = dict[str, Any]


@dataclass(eq=False)
class _Member:
    worker: JobMember
    interval: float
    due: float  # time.monotonic() of its next heartbeat
    solo: bool = False  # its report was refused inside a batch: sent on its own
    refused: str = ""  # the refusal last logged, so that it is logged once

    @property
    def job_id(self) -> str:
        return self.worker.job_id


class Heartbeater(PerProcess):
    """The shared heartbeats of one service and token; get it with
    ``shared()``. ``client`` is the Client it sends with."""

    def __init__(self, url: str, token: str | None) -> None:
        self.client = Client(url, token=token)
        self.max_batch = DEFAULT_MAX_BATCH
        self.max_bytes = DEFAULT_MAX_BYTES
        self.batches = True  # False once the service turned out not to have them
        # Lock order: a Worker's lock may be held when this one is taken (wake()),
        # never the other way round: the thread reads Workers without this lock.
        self._lock = threading.Condition()
        self._members: dict[str, _Member] = {}
        self._urgent: set[str] = set()
        self._in_flight: set[str] = set()
        self._not_before = 0.0  # backing off until then
        self._backoff = Backoff()
        self._thread: threading.Thread | None = None

    # -- what Workers call --------------------------------------------------------

    def add(self, worker: JobMember, interval: float) -> None:
        """Heartbeat ``worker``'s job every ``interval`` seconds (its first
        heartbeat has just been sent)."""
        with self._lock:
            now = time.monotonic()
            # With the jobs of the same interval, at their next turn (unless that
            # turn is being sent now: then one interval on, near their next one).
            due = min((m.due for m in self._members.values() if m.interval == interval),
                      default=now)
            if due <= now:
                due = now + interval
            self._members[worker.job_id] = _Member(worker, interval, due)
            self._lock.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="karmchari-heartbeats",
                                                daemon=True)
                self._thread.start()

    def wake(self, worker: JobMember) -> None:
        """Send ``worker``'s report now (it acknowledged a pause or resume)."""
        with self._lock:
            if worker.job_id in self._members:
                self._urgent.add(worker.job_id)
                self._lock.notify_all()

    def remove(self, worker: JobMember) -> None:
        """Stop heartbeating ``worker``'s job; returns once no request with its
        report is in flight, so that no heartbeat overtakes its last report."""
        with self._lock:
            member = self._members.get(worker.job_id)
            if member is not None and member.worker is worker:
                del self._members[worker.job_id]
                self._urgent.discard(worker.job_id)
            if threading.current_thread() is not self._thread:
                while worker.job_id in self._in_flight:
                    self._lock.wait()

    def jobs(self) -> int:
        with self._lock:
            return len(self._members)

    # -- the thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                picked = self._next_turn()
                self._in_flight = {m.job_id for m in picked}
            try:
                self._send(picked)
            except Exception:  # a bug must not stop the heartbeats of every job
                log.exception("heartbeats failed")
                self._pause_for(picked, self._backoff.next())
            finally:
                with self._lock:
                    self._in_flight = set()
                    self._lock.notify_all()

    def _next_turn(self) -> list[_Member]:
        """With the lock held: wait until a job is due (or urgent), then the
        jobs to send now."""
        while True:
            now = time.monotonic()
            members = list(self._members.values())
            if members and now >= self._not_before and (
                    self._urgent or any(m.due <= now for m in members)):
                picked = [m for m in members
                          if m.job_id in self._urgent or m.due <= now + m.interval / 2]
                self._urgent.clear()
                return picked
            if not members:
                self._lock.wait()
            elif now < self._not_before:
                self._lock.wait(self._not_before - now)
            else:
                self._lock.wait(min(m.due for m in members) - now)

    def _send(self, picked: list[_Member]) -> None:
        self._backoff.cap = min((m.worker.max_backoff for m in picked), default=30.0)
        reports = [(m, report) for m in picked
                   if (report := m.worker.heartbeat_report()) is not None]
        try:
            for chunk in self._chunks([(m, r) for m, r in reports
                                       if self.batches and not m.solo]):
                self._send_batch(chunk)
            for m, report in reports:
                if m.solo or not self.batches:
                    self._send_one(m, report)
        except ServiceUnavailable as error:
            delay = self._backoff.next(error.retry_after)
            log.info("heartbeats: %s; retrying in %.1fs", error, delay)
            self._pause_for(picked, delay)
            return
        except ApiError as error:  # 401, 403, 5xx: the same for every job
            delay = self._backoff.next()
            log.warning("heartbeats refused: %s", error)
            self._pause_for(picked, delay)
            return
        self._backoff.reset()
        with self._lock:
            sent = time.monotonic()
            for m in picked:
                m.due = sent + m.interval

    def _pause_for(self, picked: list[_Member], delay: float) -> None:
        """Nothing until ``delay`` from now; then ``picked`` again, all at once."""
        with self._lock:
            now = time.monotonic()
            self._not_before = now + delay
            for m in picked:
                m.due = min(m.due, now)

    def _chunks(self, items: list[tuple[_Member, Report]]
                ) -> Iterator[list[tuple[_Member, Report]]]:
        """Batches within the service's limits: as few as they allow."""
        chunk: list[tuple[_Member, Report]] = []
        size = _ENVELOPE_BYTES
        for m, report in items:
            # The client sends compact JSON: this is the item's size in the body.
            item_bytes = len(json.dumps(report, separators=(",", ":"))) + 1
            if chunk and (len(chunk) >= self.max_batch or size + item_bytes > self.max_bytes):
                yield chunk
                chunk, size = [], _ENVELOPE_BYTES
            chunk.append((m, report))
            size += item_bytes
        if chunk:
            yield chunk

    def _send_batch(self, chunk: list[tuple[_Member, Report]]) -> None:
        try:
            results = self.client.heartbeats([report for _, report in chunk])
        except ServiceUnavailable:
            raise
        except ApiError as error:
            if error.status in (404, 405):
                log.info("the service has no POST /v1/heartbeats: one request per job")
                self.batches = False
            elif self._learn_limits(error):
                for smaller in self._chunks(chunk):
                    self._send_batch(smaller)
                return
            elif error.status not in (400, 413):
                raise
            # One job's report refused (400): job by job, to find it.
            for m, report in chunk:
                self._send_one(m, report, in_refused_batch=True)
            return
        by_id = {result.get("id"): result for result in results}
        for m, _ in chunk:
            self._answer(m, by_id.get(m.job_id, {"found": True, "code": "no_answer"}))

    def _learn_limits(self, error: ApiError) -> bool:
        """A lower limit than ours, named by the service's refusal: True when
        learned (the batch must be split again)."""
        detail = error.problem.get("detail") or ""
        items = _ITEMS_RE.search(detail) if error.status == 400 else None
        if items and int(items[1]) < self.max_batch:
            self.max_batch = max(1, int(items[1]))
            log.info("the service takes at most %d heartbeats per request", self.max_batch)
            return True
        body = _BYTES_RE.search(detail) if error.status == 413 else None
        if body and int(body[1]) < self.max_bytes:
            self.max_bytes = int(body[1])
            log.info("the service takes at most %d bytes per request", self.max_bytes)
            return True
        return False

    def _send_one(self, m: _Member, report: Report, in_refused_batch: bool = False) -> None:
        fields = {k: v for k, v in report.items() if k != "id"}
        try:
            answer = self.client.heartbeat(m.job_id, **fields)
        except ServiceUnavailable:
            raise
        except ApiError as error:
            if error.status == 404:
                answer = {"found": False}
            else:
                if in_refused_batch and error.status in (400, 413):
                    m.solo = True
                answer = {"found": True, "status": error.status, "code": error.code,
                          "detail": str(error)}
        self._answer(m, answer)

    def _answer(self, m: _Member, answer: dict[str, Any]) -> None:
        """One job's part of an answer, for its Worker alone."""
        if not answer.get("found"):
            m.worker.learn_from_heartbeat(None, 0)  # the job no longer exists
        elif "state" in answer:
            m.refused = ""
            m.worker.learn_from_heartbeat(answer["state"], answer["version"])
        elif m.refused != answer.get("code", ""):
            m.refused = answer.get("code", "")
            log.warning("heartbeat of job %s refused: %s", m.job_id,
                        answer.get("detail") or m.refused)
