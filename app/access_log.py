"""The access log's batching writer (``--access-log stderr``, the default).

A request only appends its line to a bounded queue; a thread of this process
writes what is queued every ``INTERVAL`` seconds (sooner when ``WAKE_AT`` lines
wait) in one write to standard error, each line with the prefix the logging
format of ``karmchari serve`` gives (``LOG_FORMAT``, kept here beside the
prefix that copies it), so the lines read as before. Going through ``logging``
cost about 50 µs a request: its handler lock, a LogRecord, the formatter and
one write and flush per line.

Nothing is lost on a clean exit: the queue is written at interpreter exit, at
the exit of a multiprocessing child (Granian's workers, which end with
``os._exit``), and by the servers when they stop. A queue that is full drops
the line and counts it (``karmchari_access_log_dropped_total``), as a request
must never wait for the log.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections import deque
from typing import TextIO

INTERVAL = 0.05
WAKE_AT = 1024
CAPACITY = 100_000
# The logging format of ``karmchari serve`` (both servers, every process).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class BatchWriter:
    def __init__(self, logger_name: str, stream: TextIO | None = None) -> None:
        # The part of LOG_FORMAT after the time: "%(levelname)s %(name)s: ".
        self._middle = f" INFO {logger_name}: "
        self._stream = stream  # None: sys.stderr as it is at each write
        self.dropped = 0
        self.created = time.time()
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        """A fresh queue, locks and no thread: also in a forked child, where the
        parent's thread does not run and the parent writes its own queue."""
        self._queue: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()  # one flush at a time: the lines keep their order
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._running = False
        self._second = -1
        self._second_text = ""

    def write(self, created: float, line: str) -> None:
        """Queue one line; ``created`` is its ``time.time()``. Never blocks."""
        queue = self._queue
        if len(queue) >= CAPACITY:
            with self._start_lock:  # seldom: only when the writer cannot keep up
                self.dropped += 1
            return
        queue.append((created, line))
        if not self._running:
            self._start()
        elif len(queue) >= WAKE_AT and not self._wake.is_set():
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._running:
                return
            self._running = True
            threading.Thread(target=self._run, name="karmchari-access-log", daemon=True).start()
        atexit.register(self.flush)
        import multiprocessing.util
        # A multiprocessing child ends with os._exit after its finalizers, not atexit.
        multiprocessing.util.Finalize(self, self.flush, exitpriority=0)

    def _run(self) -> None:
        while True:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            self.flush()

    def _prefix(self, created: float) -> str:
        """``%(asctime)s`` as logging.Formatter.formatTime makes it, and the rest."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
        return f"{self._second_text},{int((created - second) * 1000):03d}{self._middle}"

    def flush(self) -> None:
        """Write every queued line, in order, in one write."""
        with self._lock:
            queue = self._queue
            count = len(queue)
            if not count:
                return
            popleft, prefix = queue.popleft, self._prefix
            lines = []
            for _ in range(count):
                created, line = popleft()
                lines.append(f"{prefix(created)}{line}\n")
            stream = self._stream or sys.stderr
            try:
                stream.write("".join(lines))
                stream.flush()
            except (OSError, ValueError):  # closed or gone: as logging, carry on
                pass


WRITER = BatchWriter("karmchari.access")


def flush() -> None:
    """Write the queued access lines now (the servers call it when they stop)."""
    WRITER.flush()
