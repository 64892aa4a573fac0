"""Ctrl-C and SIGTERM in a worker program stop the work the same way.

Python turns Ctrl-C (SIGINT) into ``KeyboardInterrupt``, but by default
SIGTERM (what ``kill``, systemd, Docker and Kubernetes send) ends the process
at once: no final report, and the job looks alive until it stalls. While a
Worker runs, SIGTERM raises ``Interrupted`` (a ``KeyboardInterrupt``) in the
main thread instead, so that both signals leave the ``with`` block alike and
the job is marked ``failed`` with the reason ``interrupted by SIGTERM`` or
``interrupted by SIGINT (Ctrl-C)``, never as if the work had failed on its own.

Only a default SIGTERM handler is replaced, only from the main thread (the
one Python delivers signals to), and it is put back when the last Worker of
the process has finished.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """The process got SIGTERM while a Worker ran. A ``KeyboardInterrupt``,
    so that a program handles it as it handles Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def interruption(error: BaseException | None) -> str | None:
    """The reason to report for a job left because of a signal, else None."""
    if isinstance(error, Interrupted):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted by SIGINT (Ctrl-C)"
    return None


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


_lock = threading.Lock()
_running = 0  # Workers between start() and finish() that counted themselves in
_installed = False


def worker_started() -> bool:
    """Counts a Worker in; True when it counted (it must call ``worker_finished``)."""
    global _running, _installed
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        _running += 1
        if _running == 1 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupted)
            _installed = True
    return True


def worker_finished() -> None:
    global _running, _installed
    with _lock:
        _running -= 1
        if _running == 0 and _installed:
            # Only if it is still ours: the program may have set its own since.
            if signal.getsignal(signal.SIGTERM) is _raise_interrupted and \
                    threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _installed = False
