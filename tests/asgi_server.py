"""An ASGI app served for real: uvicorn in a thread with its own event loop, on a free
port of 127.0.0.1, over storage backends of its own (closed on the server's loop when it
stops). Used by the webhook tests, the dashboard's browser tests and
``docs/screenshots.py``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from pyworkflow.storage.base import StorageBackend


class Server:
    def __init__(self, app: Any, closing: list[StorageBackend] | None = None) -> None:
        # keep-alive longer than uvicorn's 5 s: on a busy machine a pooled connection may sit
        # idle that long, and a request sent as the server closes it fails (a known HTTP/1.1
        # race, not the app's doing)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            ws="none",
            access_log=False,
            timeout_keep_alive=120,
        )
        self.server = uvicorn.Server(config)
        self.closing = closing or []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self.server.serve()
            finally:
                for backend in self.closing:
                    await backend.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop()
            self.error = exc

    def start(self, timeout: float = 15.0) -> Server:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise AssertionError(f"uvicorn did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not start within {timeout}s")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop within 15s"
        assert self.error is None, f"the server thread failed: {self.error!r}"
