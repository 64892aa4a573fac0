"""One watch per process: every ``Worker`` of a process that talks to the same
service (URL and token) learns its commands through one ``POST /v1/watch``
request that waits on all their jobs, instead of a long-poll each. A service
process holds a thread for each waiting request; one per worker process lets
a few threads serve thousands of jobs.

A job that joins while a watch is in flight is covered from the next turn.
Turns are short while jobs come and go (the wait doubles from 1 s up to the
full wait with each turn the set of jobs stays the same), and the job's
heartbeats carry commands meanwhile. Past ``max_jobs`` jobs (the service's
limit, 1,000 by default) the jobs are split over several watches.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from karmchari_client.backoff import Backoff
from karmchari_client.client import ApiError, Client, ServiceUnavailable
from karmchari_client.shared import JobMember, PerProcess

log = logging.getLogger(__name__)

FIRST_WAIT = 1.0
# "jobs: too many members, at most 200": a service with a lower limit than ours.
_LIMIT_RE = re.compile(r"jobs: too many members, at most (\d+)")


class Watcher(PerProcess):
    """The shared watch of one service and token; get it with ``shared()``."""

    def __init__(self, url: str, token: str | None, max_jobs: int = 1000) -> None:
        self._client = Client(url, token=token)
        self.max_jobs = max_jobs
        self._lock = threading.Condition()
        self._workers: dict[str, JobMember] = {}
        self._lanes: dict[int, threading.Thread] = {}

    def add(self, worker: JobMember) -> None:
        with self._lock:
            self._workers[worker.job_id] = worker
            self._lock.notify_all()
            self._start_lanes()

    def remove(self, worker: JobMember) -> None:
        with self._lock:
            if self._workers.get(worker.job_id) is worker:
                del self._workers[worker.job_id]

    def jobs(self) -> int:
        with self._lock:
            return len(self._workers)

    def _start_lanes(self) -> None:
        """With the lock held: one lane (a thread with one watch in flight)
        per ``max_jobs`` jobs. A lane with nothing to watch ends."""
        needed = -(-len(self._workers) // self.max_jobs)
        for index in range(needed):
            lane = self._lanes.get(index)
            if lane is None or not lane.is_alive():
                lane = threading.Thread(target=self._run_lane, args=(index,),
                                        name=f"karmchari-watch-{index}", daemon=True)
                lane.start()
                self._lanes[index] = lane

    def _share(self, index: int) -> dict[str, JobMember] | None:
        """With the lock held: lane ``index``'s jobs; None when it should end
        (lane 0 stays, idle, while the process has no jobs)."""
        ids = sorted(self._workers)[index * self.max_jobs:(index + 1) * self.max_jobs]
        if not ids and index > 0:
            return None
        return {job_id: self._workers[job_id] for job_id in ids}

    def _run_lane(self, index: int) -> None:
        # At most 10 s: after a restart of the service, the watch should be back soon.
        backoff = Backoff(cap=10.0)
        watched: set[str] = set()
        wait = FIRST_WAIT
        while True:
            with self._lock:
                while (share := self._share(index)) == {}:
                    self._lock.wait()
                if share is None:
                    if self._lanes.get(index) is threading.current_thread():
                        del self._lanes[index]
                    return
            versions = {job_id: w.known_version() for job_id, w in share.items()
                        if not w.ended()}
            if not versions:
                # Their jobs ended; the Workers leave at finish(). Wait for that
                # or for a new job (add() notifies), rechecking now and then.
                with self._lock:
                    self._lock.wait(1.0)
                continue
            longest = min(w.long_poll_wait for w in share.values())
            # The wait grows while the set of jobs stays the same.
            wait = min(longest, wait * 2) if set(versions) == watched else FIRST_WAIT
            watched = set(versions)
            asked = time.monotonic()
            try:
                answer = self._client.watch(versions, wait=wait)
            except ServiceUnavailable as error:
                # Also 429 (every slot for waiting requests is taken): the
                # heartbeats carry the commands meanwhile.
                self._pause(backoff.next(error.retry_after))
                continue
            except ApiError as error:
                self._refused(error, backoff)
                continue
            for job in answer["changed"]:
                worker = share.get(job["id"])
                if worker is not None:
                    worker.learn_from_watch(job["state"], job["version"])
            for job_id in answer["missing"]:
                worker = share.get(job_id)
                if worker is not None:
                    worker.learn_from_watch(None, 0)
            if not answer["changed"] and not answer["missing"] \
                    and time.monotonic() - asked < wait / 2:
                # Answered early without a change (a service shutting down, a
                # proxy with a shorter timeout): do not ask again at once.
                self._pause(backoff.next())
            else:
                backoff.reset()

    def _refused(self, error: ApiError, backoff: Backoff) -> None:
        limit = _LIMIT_RE.search(error.problem.get("detail") or "")
        if error.status == 400 and limit and int(limit[1]) < self.max_jobs:
            with self._lock:
                self.max_jobs = max(1, int(limit[1]))
                self._start_lanes()
            log.info("the service watches at most %d jobs per request", self.max_jobs)
            return
        # A token without read permission, a service without /v1/watch: the
        # heartbeats carry the commands.
        log.warning("watch refused: %s", error)
        self._pause(backoff.next())

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)
