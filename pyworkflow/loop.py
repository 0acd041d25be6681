"""One long-lived event loop per process, on a thread of its own.

Celery 5 tasks are plain functions, and ``asyncio.run()`` per task would close the loop
that pooled async clients (redis.asyncio, psycopg) are bound to ("Event loop is
closed"). So each process runs one loop forever on a daemon thread and tasks submit
coroutines to it. Any thread may submit (prefork, threads and solo pools alike), and so
may code that already runs inside another event loop (a FastAPI handler calling
``start()``): the work happens on this loop, never on the caller's, so nothing
deadlocks. After a fork the child starts a loop of its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class ProcessLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid() or self._loop is None:
            with self._lock:
                if self._pid != os.getpid() or self._loop is None:
                    self._start()
        assert self._loop is not None
        return self._loop

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="pyworkflow-loop", daemon=True)
        thread.start()
        self._loop, self._thread, self._pid = loop, thread, os.getpid()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on this process's loop and wait for its result."""
        loop = self.loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("ProcessLoop.run() called from its own loop thread; await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


PROCESS_LOOP = ProcessLoop()
