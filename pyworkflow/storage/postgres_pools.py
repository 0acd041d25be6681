"""One ``AsyncConnectionPool`` per event loop, for one backend object used from any loop
and thread.

A pool (its connections, its worker tasks) belongs to the loop that opened it, so
:class:`LoopPools` keeps one per running loop, opened lazily by the first call made in
that loop. Pools are let go without a warning in every way a process can end:

* :meth:`LoopPools.close` closes every pool: on its own loop directly, on a loop running
  in another thread through that loop, and a pool whose loop is closed is dropped quietly
  (``asyncio.run`` has already cancelled its tasks; its idle connections are closed
  without the loop).
* A pool whose loop was closed is dropped the next time any backend opens a pool.
* At exit, an ``atexit`` hook closes the pools still open: through their loop when it
  still runs in another thread (the Celery runtime's process loop), by running an idle
  loop once, or quietly when the loop is gone. Without it, the interpreter destroys the
  pools' pending worker tasks ("Task was destroyed but it is pending!").
* In a forked child (Celery prefork) the parent's pools are left untouched: their sockets
  are the parent's sessions, and closing them here would end the parent's connections.
  The child keeps them referenced, silences their tasks and opens its own pools.

The pool's attributes read here (``_workers``, ``_sched_runner``, ``_sched``, ``_pool``)
are psycopg_pool internals, read defensively: if they change, dropping a pool whose loop
is gone loses its quietness, nothing else.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from pyworkflow.errors import StorageError

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]
Loop = asyncio.AbstractEventLoop

#: How long closing pools through other loops may take (each in close(), all at exit).
CLOSE_TIMEOUT: Final = 5.0

_lock = threading.Lock()
#: Every LoopPools holding or opening a pool, for pruning, the exit hook and forks.
_live: set[LoopPools] = set()
#: Pools to close at exit: their backend was closed while their loop sat idle.
_orphans: list[tuple[Loop, Pool]] = []
#: Pools a forked child inherited: kept referenced, never closed, never collected.
_inherited: list[object] = []


class LoopPools:
    """The pools of one backend, one per event loop; ``open_pool`` opens a new one."""

    def __init__(self, open_pool: Callable[[], Awaitable[Pool]], name: str) -> None:
        self._open_pool = open_pool
        self._name = name
        self._pools: dict[Loop, Pool] = {}
        self._opening: dict[Loop, asyncio.Task[Pool]] = {}
        self.closed = False

    async def get(self) -> Pool:
        """The running loop's pool, opened on first use."""
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        return pool if pool is not None else await self._get_new(loop)

    async def _get_new(self, loop: Loop) -> Pool:
        with _lock:
            if self.closed:
                raise StorageError(f"{self._name} is closed")
            opening = self._opening.get(loop)
            if opening is None:
                opening = self._opening[loop] = loop.create_task(self._open(loop))
                opening.add_done_callback(_retrieved)  # its error reaches callers, or nobody is left
                _live.add(self)
                stale = _take_stale()
            else:
                stale = []
        for stale_loop, pool in stale:
            _drop(stale_loop, pool)
        # shield: a caller being cancelled must not abort the opening others wait on
        return await asyncio.shield(opening)

    async def _open(self, loop: Loop) -> Pool:
        me = asyncio.current_task()
        try:
            pool = await self._open_pool()
        finally:
            with _lock:
                if self._opening.get(loop) is me:
                    del self._opening[loop]  # a failed open is retried by the next call
        with _lock:
            closed = self.closed
            if not closed:
                self._pools[loop] = pool
        if closed:
            await pool.close()
            raise StorageError(f"{self._name} is closed")
        return pool

    async def close(self) -> None:
        """Close every pool (see the module docstring). Later calls raise ``StorageError``."""
        with _lock:
            self.closed = True
            pools, self._pools = list(self._pools.items()), {}
            opening, self._opening = list(self._opening.values()), {}
            _live.discard(self)
        current = asyncio.get_running_loop()
        # An opening in progress sees ``closed`` when done and closes its own pool.
        await asyncio.gather(*(t for t in opening if t.get_loop() is current), return_exceptions=True)
        await asyncio.gather(*(_close(loop, pool, current) for loop, pool in pools))

    def _forget_closed_loops(self) -> list[tuple[Loop, Pool]]:
        """Forget the pools whose loop is closed (call with ``_lock`` held)."""
        return [(loop, self._pools.pop(loop)) for loop in [loop for loop in self._pools if loop.is_closed()]]


def _retrieved(task: asyncio.Task[Pool]) -> None:
    if not task.cancelled():
        task.exception()  # marks it retrieved: no "Task exception was never retrieved"


def _take_stale() -> list[tuple[Loop, Pool]]:
    """Every backend's pools whose loop is closed, and such orphans (call with ``_lock`` held)."""
    stale: list[tuple[Loop, Pool]] = []
    for owner in list(_live):
        stale += owner._forget_closed_loops()
        if not owner._pools and not owner._opening:
            _live.discard(owner)
    for entry in [entry for entry in _orphans if entry[0].is_closed()]:
        _orphans.remove(entry)
        stale.append(entry)
    return stale


async def _close(loop: Loop, pool: Pool, current: Loop) -> None:
    if loop is current:
        await pool.close()
    elif loop.is_closed():
        _drop(loop, pool)
    elif loop.is_running():
        try:
            future = asyncio.run_coroutine_threadsafe(pool.close(), loop)
            await asyncio.wait_for(asyncio.wrap_future(future), CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001 - that loop stopped or hangs: let the pool go
            _silence(_pool_tasks(loop, pool))
    else:  # an idle loop cannot be run from inside another: close it at exit
        with _lock:
            _orphans.append((loop, pool))


def _pool_tasks(loop: Loop, pool: Pool) -> list[asyncio.Task[Any]]:
    """The pool's pending tasks: its workers, its scheduler and the scheduler's wait."""
    own = [*getattr(pool, "_workers", ()), getattr(pool, "_sched_runner", None)]
    tasks = [t for t in own if isinstance(t, asyncio.Task) and not t.done()]
    event = getattr(getattr(pool, "_sched", None), "_event", None)
    if event is not None:
        for task in asyncio.all_tasks(loop):
            frame = getattr(task.get_coro(), "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is event:
                tasks.append(task)
    return tasks


def _silence(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task._log_destroy_pending = False  # type: ignore[attr-defined]


def _drop(loop: Loop, pool: Pool) -> None:
    """Let go of a pool whose loop is closed, quietly: its tasks can never run again
    (their coroutines are closed here, as collecting them would, minus the noise) and its
    idle connections are closed without the loop (libpq's ``PQfinish``)."""
    tasks = _pool_tasks(loop, pool)
    _silence(tasks)
    for task in tasks:
        with contextlib.suppress(BaseException):  # their cleanup would need the closed loop
            task.get_coro().close()
    for conn in list(getattr(pool, "_pool", ())):  # idle connections: end their sessions now
        with contextlib.suppress(Exception):
            conn.pgconn.finish()


def _close_at_exit() -> None:
    with _lock:
        entries = [(loop, pool) for owner in _live for loop, pool in owner._pools.items()] + _orphans
        for owner in _live:
            owner._pools.clear()
        _live.clear()
        _orphans.clear()
    deadline = time.monotonic() + CLOSE_TIMEOUT  # for them all: exit must not hang on a wedged loop
    for loop, pool in entries:
        try:
            if loop.is_closed():
                _drop(loop, pool)
            elif loop.is_running():  # on another thread, e.g. the Celery runtime's process loop
                future = asyncio.run_coroutine_threadsafe(pool.close(), loop)
                future.result(max(deadline - time.monotonic(), 0.1))
            else:
                loop.run_until_complete(asyncio.wait_for(pool.close(), max(deadline - time.monotonic(), 0.1)))
        except Exception:  # noqa: BLE001 - at exit: silence what cannot be closed
            _silence(_pool_tasks(loop, pool))


def _after_fork_in_child() -> None:
    """The parent's pools are its sessions: keep them, silence them, never close them."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    loops = {loop for owner in _live for loop in [*owner._pools, *owner._opening]} | {loop for loop, _ in _orphans}
    for owner in _live:
        _inherited.extend([*owner._pools.values(), *owner._opening.values()])
        owner._pools, owner._opening = {}, {}
    _inherited.extend(pool for _, pool in _orphans)
    for loop in loops:
        _silence(list(asyncio.all_tasks(loop)))  # nothing of the parent's loops runs here
    _live.clear()
    _orphans.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
