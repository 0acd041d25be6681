"""The workflow ``benchmarks/scale.py`` puts to sleep, and the worker processes that
activate its runs when they wake (each a stand-in for one Celery prefork child).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from typing import Any

from pyworkflow import sleep, workflow

WORKFLOW = "bench.scale.sleeper"


@workflow(name=WORKFLOW)
async def sleeper(seconds: float) -> str:
    await sleep(timedelta(seconds=seconds))
    return "woke"


def worker_main(url: str, inbox: Any, outbox: Any) -> None:
    """One worker process: activate the run ids read from ``inbox``, one at a time, and
    report ``("done", run_id, time.time() at the end, outcome status)`` to ``outbox``.
    ``None`` stops it."""
    asyncio.run(_serve(url, inbox, outbox))


async def _serve(url: str, inbox: Any, outbox: Any) -> None:
    from pyworkflow.engine import activate
    from pyworkflow.storage import storage_from_url

    storage = storage_from_url(url)
    owner = f"bench-scale-worker:{os.getpid()}"
    try:
        await storage.get_run("warm-up")  # opens the connection (pool) before any work arrives
        outbox.put(("ready", os.getpid(), time.time(), ""))
        while True:
            run_id = inbox.get()  # blocking: a prefork child does nothing else between tasks
            if run_id is None:
                break
            try:
                outcome = await activate(storage, run_id, owner=owner)
                status = outcome.status
            except Exception as exc:  # noqa: BLE001 - reported, counted as not completed
                status = f"error: {type(exc).__name__}: {exc}"
            outbox.put(("done", run_id, time.time(), status))
    finally:
        await storage.close()
