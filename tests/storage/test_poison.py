"""One unreadable run never stops the others (on every persistent backend).

Each test damages one run's stored record the way its backend stores it, then checks
that list_runs, recover_expired_leases, claim_due_timers and LocalRuntime.tick skip it
(and report it) while every other run is listed, recovered, claimed and woken, and that
list_unreadable_runs names it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest

from pyworkflow import sleep, workflow
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun, new_run_id
from pyworkflow.testing import LocalRuntime
from tests.storage.corrupt import make_unreadable


@workflow(name="poison.nap")
async def nap() -> str:
    await sleep(0.05)
    return "awake"


def _run(created: datetime) -> WorkflowRun:
    return WorkflowRun(run_id=new_run_id(), workflow_name="poison.other", created_at=created, updated_at=created)


async def corrupt(storage: StorageBackend, backend_name: str, run_id: str) -> None:
    """Make the run's stored record unreadable, behind the backend's back."""
    if backend_name == "memory":
        pytest.skip("the memory backend holds validated records only: nothing to corrupt")
    make_unreadable(storage, backend_name, run_id)
    assert await storage.list_unreadable_runs() == [run_id]


async def test_unreadable_run_is_skipped_and_listed(
    storage: StorageBackend, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [_run(base + timedelta(seconds=i)) for i in range(5)]
    for run in runs:
        await storage.create_run(run)
        await storage.update_run(
            run.run_id, status=RunStatus.SUSPENDED, wake_at=datetime.now(timezone.utc) - timedelta(seconds=1)
        )
        assert await storage.acquire_lease(run.run_id, "dead-worker", 0.01) is not None
    assert await storage.list_unreadable_runs() == []
    bad = runs[2].run_id
    good = {r.run_id for r in runs} - {bad}
    await corrupt(storage, backend_name, bad)
    await asyncio.sleep(0.05)  # the leases expire

    with caplog.at_level(logging.WARNING):
        page = await storage.list_runs()
    assert {r.run_id for r in page.runs} == good and page.next_cursor is None
    assert bad in caplog.text

    # Page by page, with the bad run last on a page: the cursor still moves past it.
    for limit in (1, 2, 3):
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = await storage.list_runs(limit=limit, cursor=cursor)
            seen += [r.run_id for r in page.runs]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [r.run_id for r in reversed(runs) if r.run_id != bad]

    recovered = await storage.recover_expired_leases()
    assert good <= set(recovered)
    claimed = await storage.claim_due_timers(datetime.now(timezone.utc))
    assert good <= {t.run_id for t in claimed}
    assert await storage.list_unreadable_runs() == [bad]
    assert await storage.list_unreadable_runs(limit=0) == []


async def test_tick_wakes_every_run_but_the_unreadable_one(storage: StorageBackend, backend_name: str) -> None:
    runtime = LocalRuntime(storage, lease_ttl=0.2)
    ids = [await runtime.start(nap) for _ in range(4)]
    for run_id in ids:
        run = await storage.get_run(run_id)
        assert run is not None and run.status == RunStatus.SUSPENDED
    # One of them crashed mid-activation: its lease is left to expire.
    assert await storage.acquire_lease(ids[0], "dead-worker", 0.01) is not None
    bad = ids[1]
    await corrupt(storage, backend_name, bad)
    await asyncio.sleep(0.1)

    await runtime.tick()
    for run_id in ids:
        if run_id != bad:
            run = await storage.get_run(run_id)
            assert run is not None and run.status == RunStatus.COMPLETED, run_id
    assert await storage.list_unreadable_runs() == [bad]
