"""A TCP proxy the test owns, to cut a storage server's connections without touching
the server (the shared PostgreSQL on 5432 is never stopped).

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        proxy.cut()        # every open connection reset, new ones refused
        proxy.restore()    # new connections forwarded again

Threads, not asyncio: it runs beside the test's own event loops and blocking calls.
Each connection gets two pump threads (one per direction), so a full buffer on one side
never stalls another connection. While cut, a new connection is either accepted and
reset at once (``mode="refuse"``: the client sees the server close it, like a server
that is restarting) or accepted and left silent (``mode="blackhole"``: the client waits,
like a network that drops packets) until :meth:`restore` resets it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, waking any thread blocked on it first."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() blocked in another thread
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` (a free port) to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._held: set[socket.socket] = set()
        self._mode: str | None = None  # None: forwarding; "refuse" or "blackhole": cut
        self._closed = False
        self._threads: list[threading.Thread] = []
        self.accepted = 0  # connections forwarded, for the tests' reports
        self.reset = 0  # connections reset by a cut, or refused while cut
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy:{self.port}", daemon=True)
        self._acceptor.start()

    # -- control ----------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    def cut(self, mode: str = "refuse") -> int:
        """Reset every open connection and stop forwarding new ones until :meth:`restore`.
        Returns how many connections were cut."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {mode!r}")
        with self._lock:
            self._mode = mode
            pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        self.reset += len(pairs)
        return len(pairs)

    def restore(self) -> None:
        """Forward new connections again; connections held silent meanwhile are reset."""
        with self._lock:
            self._mode = None
            held, self._held = self._held, set()
        for sock in held:
            _reset(sock)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pairs, self._pairs = self._pairs, set()
            held, self._held = self._held, set()
        _reset(self._listener)
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        for sock in held:
            _reset(sock)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- forwarding -------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            with self._lock:
                mode = self._mode
                if mode == "blackhole":
                    self._held.add(client)
            if mode == "refuse":
                self.reset += 1
                _reset(client)
            elif mode is None:
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = (client, upstream)
        with self._lock:
            if self._mode is not None or self._closed:  # cut while we connected
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
            self.accepted += 1
            self._threads = [t for t in self._threads if t.is_alive()]
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # one side ended (or was cut): end the other too, once
        with self._lock:
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def wait_connections(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until at least ``count`` connections are open through the proxy."""
        deadline = time.monotonic() + timeout
        while len(self._pairs) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} connection(s) through the proxy after {timeout:g} s")
            time.sleep(0.02)

    @property
    def open_connections(self) -> int:
        return len(self._pairs)
