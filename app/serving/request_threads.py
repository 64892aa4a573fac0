"""The request threads of ``--server granian``'s front: a fixed set of threads
taking calls from one queue, each call's result handed back to the event loop.

``loop.run_in_executor`` with a ``ThreadPoolExecutor`` does the same with more
machinery per call (a ``concurrent.futures.Future`` with its own lock and
condition, chained to an asyncio future by callbacks on both sides); on the
hot path of every request that machinery cost more than the handoff itself.
Here a call is one ``SimpleQueue.put`` (a C queue, no Python lock) and one
``call_soon_threadsafe`` when it is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

_STOP = object()


class RequestThreads:
    """``size`` daemon threads; ``await threads.run(loop, fn, arg)`` runs
    ``fn(arg)`` in one of them and gives its result (or raises its exception)."""

    def __init__(self, size: int, name: str = "karmchari-request") -> None:
        self._calls: SimpleQueue[Any] = SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
                         for n in range(size)]
        for thread in self._threads:
            thread.start()

    def run(self, loop: asyncio.AbstractEventLoop, fn: Callable[[Any], Any],
            arg: Any) -> asyncio.Future[Any]:
        future = loop.create_future()
        self._calls.put((loop, future, fn, arg))
        return future

    def shutdown(self) -> None:
        """Lets each thread end after the call it is in (queued calls first)."""
        for _ in self._threads:
            self._calls.put(_STOP)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is _STOP:
                return
            loop, future, fn, arg = call
            try:
                result = fn(arg)
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting coroutine
                loop.call_soon_threadsafe(_fail, future, error)
            else:
                loop.call_soon_threadsafe(_succeed, future, result)
            del call, future, arg  # hold nothing of a finished request while idle


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled meanwhile: its client is gone
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
