"""One ``redis.asyncio`` client per event loop, for :mod:`pyworkflow.storage.redis`.

A client's connections belong to the loop that opened them, so one backend used from
several loops (threads, successive ``asyncio.run`` calls) holds a client per running
loop, made lazily inside it. Each client closes with its loop: a suspended async
generator registered with the loop runs ``aclose()`` when the loop shuts its async
generators down (``asyncio.run`` and ``asyncio.Runner`` do, before closing), and drops
the client. :meth:`LoopClients.close` closes the rest, each in its own loop: the current
one, another thread's running loop, or an idle loop run briefly on a worker thread; a
client whose loop was closed without that shutdown gets its sockets closed directly. A
forked child never uses nor closes its parent's clients (they share the parent's
sockets) and makes its own.

Timeouts: connecting times out after :data:`CONNECT_TIMEOUT`. redis-py's per-command
``socket_timeout`` wraps every send in ``asyncio.wait_for`` (a task and an extra loop
turn per command on Python 3.11), so unless the URL sets ``socket_timeout`` itself the
client is made without one and the backend bounds each whole operation (send and reply)
by :data:`OPERATION_TIMEOUT` with one ``asyncio.timeout`` instead; a cancelled command
disconnects its connection (redis-py does so on any exception mid-command), so no reply
is ever read by the wrong caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis

from pyworkflow.storage.redis_lua import Scripts

#: How long close() waits for another thread's loop to close its client.
CLOSE_TIMEOUT = 5.0
#: Seconds to connect, and for one whole operation (see the module docstring); redis-py's
#: own default socket timeout is 5 s too.
CONNECT_TIMEOUT = 5.0
OPERATION_TIMEOUT = 5.0

#: Bumped in a forked child: clients made before belong to the parent.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


@dataclass
class _Client:
    """One loop's client with its scripts, and the async generator that closes it."""

    scripts: Scripts
    closer: Any = None


class LoopClients:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._clients: dict[asyncio.AbstractEventLoop, _Client] = {}
        self._inherited: list[Any] = []
        self._forks = _forks
        options = dict(parse_qsl(urlsplit(dsn).query))
        self._options: dict[str, Any] = {}
        self._timeout: float | None = None
        if "socket_timeout" not in options:
            # from_url lets the URL's own options override these.
            self._options = {"socket_timeout": None, "socket_connect_timeout": CONNECT_TIMEOUT}
            self._timeout = OPERATION_TIMEOUT

    def get(self) -> Scripts:
        """The running loop's client and its scripts, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or self._forks != _forks:
            client = self._connect(loop)
        return client.scripts

    def __len__(self) -> int:
        return len(self._clients)

    def _connect(self, loop: asyncio.AbstractEventLoop) -> _Client:
        if self._forks != _forks:
            # Keep the parent's clients referenced: collecting them would close nothing
            # of ours, only warn, or shut sockets the parent still uses.
            self._inherited.append(self._clients)
            self._clients, self._forks = {}, _forks
        for other, stale in list(self._clients.items()):
            # A loop closed without shutting its async generators down; pop(): another
            # thread may be pruning too.
            if other.is_closed() and self._clients.pop(other, None) is stale:
                abandon(stale.scripts.client)
        client = _Client(Scripts.register(aioredis.Redis.from_url(self._dsn, **self._options), self._timeout))
        if not getattr(loop, "_asyncgens_shutdown_called", False):
            client.closer = self._close_with_loop(loop, client)
            with contextlib.suppress(StopIteration):
                client.closer.asend(None).send(None)  # to its yield: the loop now tracks it
        self._clients[loop] = client
        return client

    async def _close_with_loop(self, loop: asyncio.AbstractEventLoop, client: _Client) -> AsyncIterator[None]:
        """Suspended while the client lives; closes it when the loop shuts down."""
        try:
            yield
        finally:
            if self._clients.get(loop) is client:
                self._clients.pop(loop, None)
            await client.scripts.client.aclose()

    async def close(self) -> None:
        """Close every client, each in its own loop; never raises for a closed loop."""
        clients, self._clients = self._clients, {}
        here = asyncio.get_running_loop()
        for loop, client in clients.items():
            if loop.is_closed():
                abandon(client.scripts.client)
                continue
            closing = _closing(client)
            try:
                if loop is here:
                    await closing
                elif loop.is_running():  # on another thread: close it there
                    done = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(closing, loop))
                    await asyncio.wait([done], timeout=CLOSE_TIMEOUT)
                else:  # idle: run it briefly, off this thread (this one runs a loop)
                    await asyncio.to_thread(loop.run_until_complete, closing)
            except RuntimeError:  # it closed or started meanwhile
                closing.close()
                if loop.is_closed():
                    abandon(client.scripts.client)


def _closing(client: _Client) -> Coroutine[Any, Any, None]:
    """A coroutine that closes ``client`` (through its closer, if any)."""
    if client.closer is None:
        return client.scripts.client.aclose()  # type: ignore[no-any-return]

    async def finish() -> None:
        await client.closer.aclose()

    return finish()


def abandon(client: Any) -> None:
    """Close the sockets of a client whose event loop is closed.

    Nothing can be awaited on a closed loop, and left alone the connections would warn
    "unclosed" when collected; so each socket is closed directly (what the transport's
    callback would have done on its loop) and the connection marked disconnected.
    """
    pool = client.connection_pool
    for conn in (*getattr(pool, "_available_connections", ()), *getattr(pool, "_in_use_connections", ())):
        writer = getattr(conn, "_writer", None)
        transport = getattr(writer, "transport", None)
        while transport is not None:
            with contextlib.suppress(RuntimeError):
                transport.close()  # marks it closing; its closed loop cannot run the callback
            sock = getattr(transport, "_sock", None)
            if sock is not None:
                sock.close()
                transport._sock = None
            transport = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        conn._writer = conn._reader = None  # only now: a writer collected unclosed warns
