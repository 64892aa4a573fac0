"""Waiting for a condition in tests without timed asserts: poll until it
holds, and fail only when it never does."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """``check()``'s first truthy result; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def long_polls_waiting(base_url: str, count: int = 1, timeout: float = 15.0,
                       headers: dict[str, str] | None = None) -> None:
    """Returns once ``count`` (or more) requests wait in a long-poll or a watch
    of the ``karmchari serve`` at ``base_url``, as its /metrics counts them:
    the condition a fixed pause before the change used to guess at."""
    def waiting() -> bool:
        request = urllib.request.Request(base_url + "/metrics", headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
        found = re.search(r"^karmchari_long_poll_waiters (\S+)$", text, re.M)
        assert found, "no karmchari_long_poll_waiters in /metrics"
        return float(found.group(1)) >= count

    eventually(waiting, timeout=timeout)
