"""One storage object, many event loops: a web app with a sync and an async endpoint (the
sync one runs in a worker thread, as FastAPI and Starlette run ``def`` endpoints), the
process loop behind ``start()``, and fresh ``asyncio.run`` loops, all in one process."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from celery import Celery
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import pyworkflow
from pyworkflow import config, get_run, get_run_async, start, start_async, step, workflow
from pyworkflow.celery import factory
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import StorageBackend


@step(name="anyloop.double")
async def double(x: int) -> int:
    return 2 * x


@workflow(name="anyloop.wf")
async def doubled(x: int) -> int:
    return await double(x)


def sync_endpoint(request: Request) -> JSONResponse:
    x = int(request.query_params["x"])
    run_id = start(doubled, x)  # on the process loop
    storage = config.get_storage()
    asyncio.run(LocalRuntime(storage).run_until_complete(run_id))  # a loop of this thread's own
    run = get_run(run_id)
    assert run is not None
    return JSONResponse({"run_id": run_id, "status": str(run.status), "result": run.result})


async def async_endpoint(request: Request) -> JSONResponse:
    x = int(request.query_params["x"])
    run_id = await start_async(doubled, x)  # on the server's loop
    await LocalRuntime(config.get_storage()).run_until_complete(run_id)
    run = await get_run_async(run_id)
    assert run is not None
    result = await pyworkflow.wait_for_result_async(run_id, timeout=10)
    return JSONResponse({"run_id": run_id, "status": str(run.status), "result": result})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(make_backend: Callable[[], StorageBackend]) -> Iterator[tuple[str, StorageBackend]]:
    backend = make_backend()
    config.configure(storage=backend)
    previous = factory._installed
    factory.install(Celery("anyloop", broker="memory://"))  # start() sends to an in-process broker
    app = Starlette(routes=[Route("/sync", sync_endpoint), Route("/async", async_endpoint)])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", backend
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        factory._installed = previous
        config.reset()
        asyncio.run(backend.close())


def test_sync_and_async_endpoints_share_one_backend(served: tuple[str, StorageBackend]) -> None:
    url, backend = served
    seen: set[str] = set()
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(6):
            path = "/sync" if i % 2 == 0 else "/async"
            answer = client.get(path, params={"x": i})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "completed" and body["result"] == 2 * i
            seen.add(body["run_id"])
    assert len(seen) == 6

    async def count() -> int:  # and once more from yet another loop
        return len((await backend.list_runs(workflow_name="anyloop.wf", limit=100)).runs)

    assert asyncio.run(count()) == 6
    assert asyncio.run(count()) == 6
