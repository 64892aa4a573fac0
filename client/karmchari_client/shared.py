"""What the process-wide helpers of the worker library share: one instance
per service (URL and token) and process, and what they need of a Worker.

``Heartbeater`` and ``Watcher`` each keep such a registry. They know a Worker
only through ``JobMember``, so neither imports ``worker.py`` (which imports
them).
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar, Protocol, TypeVar


class JobMember(Protocol):
    """A job's Worker, as the shared heartbeats and watch see it."""

    job_id: str
    long_poll_wait: float
    max_backoff: float

    def known_version(self) -> int: ...
    def ended(self) -> bool: ...
    def learn_from_watch(self, state: str | None, version: int) -> None: ...
    def heartbeat_report(self) -> dict[str, object] | None: ...
    def learn_from_heartbeat(self, state: str | None, version: int) -> None: ...


Shared = TypeVar("Shared", bound="PerProcess")


class PerProcess:
    """One instance per (url, token) and process: get it with ``shared()``.
    Each subclass has a registry of its own; a forked child starts with none,
    since the parent's threads do not exist there."""

    _all: ClassVar[dict[tuple[str, str | None], PerProcess]]
    _all_lock: ClassVar[threading.Lock]
    _kinds: ClassVar[list[type[PerProcess]]] = []

    def __init__(self, url: str, token: str | None) -> None:
        """What ``shared()`` calls: a subclass takes these two."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._all, cls._all_lock = {}, threading.Lock()
        PerProcess._kinds.append(cls)

    @classmethod
    def shared(cls: type[Shared], url: str, token: str | None) -> Shared:
        with cls._all_lock:
            found = cls._all.get((url, token))
            if found is None:
                found = cls._all[(url, token)] = cls(url, token)
            assert isinstance(found, cls)
            return found

    @classmethod
    def _forget_all(cls) -> None:
        cls._all, cls._all_lock = {}, threading.Lock()


def _forget_in_child() -> None:
    for kind in PerProcess._kinds:
        kind._forget_all()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
