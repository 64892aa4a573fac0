"""The request counter and latency histogram, kept without locks on the
request path and exposed exactly as prometheus-client's own ``Counter`` and
``Histogram`` would expose them (tests/test_metrics_exposition.py compares the
two).

prometheus-client takes a lock in ``labels()`` and one in every ``inc()`` and
``observe()``: about 15 µs a request under contention. Here a request appends
``((route, method, status), seconds)`` to a deque (atomic, never waits); the
scrape, or a request that finds many waiting, folds the queue into the totals
under a lock that no request ever waits for. The fold adds the seconds in the
order they were queued, so ``_sum`` is the very float prometheus-client adds up.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

FOLD_AT = 4096  # queued observations a request folds itself, without waiting
# prometheus-client's own text of a bucket bound ("+Inf", "0.005"), which it
# leaves unannotated: the type is given here.
_go_string: Callable[[float], str] = floatToGoString


class RequestMetrics:
    """A collector for a ``CollectorRegistry``: ``<requests>_total`` by route,
    method and status, and the ``<latency>`` histogram by route and method."""

    def __init__(self, requests: tuple[str, str], latency: tuple[str, str],
                 buckets: Sequence[float]) -> None:
        self._requests_name, self._requests_help = requests
        self._latency_name, self._latency_help = latency
        self._bounds = [float(b) for b in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        self._le = [_go_string(b) for b in self._bounds]
        self._queue: deque[tuple[tuple[str, str, int], float]] = deque()
        self._fold_lock = threading.Lock()
        # The series in the order they first appeared, with the time they did
        # (prometheus-client's ``_created``); keys are routes (URI templates),
        # methods (a fixed set) and statuses: a bounded number.
        self._counters_created: dict[tuple[str, str, int], float] = {}
        self._timers_created: dict[tuple[str, str], float] = {}
        # Folded totals: the count by series; [sum, bucket counts...] by timer.
        self._counts: dict[tuple[str, str, int], int] = {}
        self._timers: dict[tuple[str, str], list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        if key not in self._counters_created:
            self._counters_created.setdefault(key, time.time())
            self._timers_created.setdefault((route, method), time.time())
        queue = self._queue
        queue.append((key, seconds))
        if len(queue) >= FOLD_AT and self._fold_lock.acquire(blocking=False):
            # (If another thread holds the lock, it folds: no request waits.)
            try:
                self._fold()
            finally:
                self._fold_lock.release()

    def _fold(self) -> None:
        """Move the queued observations into the totals; under ``_fold_lock``."""
        queue, counts, timers, bounds = self._queue, self._counts, self._timers, self._bounds
        popleft, empty = queue.popleft, [0.0] + [0] * len(bounds)
        for _ in range(len(queue)):
            key, seconds = popleft()
            counts[key] = counts.get(key, 0) + 1
            timer = timers.get(key[:2])
            if timer is None:
                timer = timers[key[:2]] = list(empty)
            timer[0] += seconds
            # The first bucket whose bound is >= seconds, as Histogram.observe.
            timer[1 + bisect_left(bounds, seconds)] += 1

    def describe(self) -> Iterable[Metric]:
        return [Metric(self._requests_name, self._requests_help, "counter"),
                Metric(self._latency_name, self._latency_help, "histogram")]

    def collect(self) -> Iterable[Metric]:
        with self._fold_lock:  # a consistent reading: no fold runs meanwhile
            self._fold()
            return self._families()

    def _families(self) -> list[Metric]:
        use_created = prometheus_metrics._use_created  # honours disable_created_metrics()
        requests, latency = self.describe()
        counts = self._counts
        total, created = self._requests_name + "_total", self._requests_name + "_created"
        for (route, method, status), since in self._counters_created.copy().items():
            labels = {"route": route, "method": method, "status": str(status)}
            requests.add_sample(total, labels, float(counts.get((route, method, status), 0)))
            if use_created:
                requests.add_sample(created, labels, since)
        name, zero = self._latency_name, [0.0] + [0] * len(self._bounds)
        timers = self._timers
        for (route, method), since in self._timers_created.copy().items():
            labels = {"route": route, "method": method}
            seconds_sum, *buckets = timers.get((route, method), zero)
            cumulative = 0.0
            for le, count in zip(self._le, buckets, strict=True):
                cumulative += count
                latency.add_sample(name + "_bucket", {**labels, "le": le}, cumulative)
            latency.add_sample(name + "_count", labels, cumulative)
            latency.add_sample(name + "_sum", labels, seconds_sum)
            if use_created:
                latency.add_sample(name + "_created", labels, since)
        return [requests, latency]
