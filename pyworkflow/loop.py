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
import atexit
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


class ThreadLoops:
    """A long-lived event loop per thread, run only while a coroutine runs on it.

    For Celery task bodies: the pool thread runs the activation on its own loop with
    ``run_until_complete`` (about 10 µs) instead of handing it to the process loop's
    thread and waiting (about 140 µs of thread handoff per task). The loop is never
    closed between tasks, so the async clients bound to it (one per loop in every
    backend) stay usable; it is made anew after a fork, and shut down at exit.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[asyncio.AbstractEventLoop] = []
        self._lock = threading.Lock()
        atexit.register(self._shutdown)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end on this thread's loop. A thread already inside a running
        event loop hands it to :data:`PROCESS_LOOP` instead."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return PROCESS_LOOP.run(coro)
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or self._local.pid != os.getpid() or loop.is_closed():
            loop = asyncio.new_event_loop()
            self._local.loop, self._local.pid = loop, os.getpid()
            with self._lock:
                self._all.append(loop)
        return loop.run_until_complete(coro)

    def _shutdown(self) -> None:
        with self._lock:
            loops, self._all = self._all, []
        for loop in loops:
            if loop.is_closed() or loop.is_running():
                continue
            try:  # lets clients bound to the loop close themselves (async generators)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


THREAD_LOOPS = ThreadLoops()


class UserBaseExceptionError(RuntimeError):
    """A task body ended with a ``BaseException`` that is not an ``Exception``
    (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a stray ``CancelledError``):
    reported as this ordinary error instead, with the original as its cause."""


async def contained(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; a ``BaseException`` it ends with comes out as
    :class:`UserBaseExceptionError`.

    asyncio re-raises ``KeyboardInterrupt`` and ``SystemExit`` from a task straight out of
    the event loop, which leaves the loop mid-iteration, and a Celery pool process takes
    them for its own end: user code's must never get that far. The engine records those of
    steps as step failures; this is the last line, at the task boundary.
    """
    try:
        return await coro
    except Exception:
        raise
    except BaseException as exc:
        cls = type(exc)
        raise UserBaseExceptionError(
            f"the task's coroutine ended with {cls.__module__}.{cls.__qualname__}({str(exc)!r}); "
            "a BaseException from user code never reaches the worker's event loop"
        ) from exc
