"""A claimed timer names its run's workflow (the name a wake-up's message shows in Flower),
on every backend that reads it with the claim; the file backend leaves it out."""

from __future__ import annotations

from datetime import timedelta

from pyworkflow import sleep, workflow
from pyworkflow.storage.base import StorageBackend
from pyworkflow.storage.file import FileStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock


@workflow(name="timer_names.napper")
async def napper() -> str:
    await sleep("1h")
    return "rested"


async def test_a_claimed_timer_names_its_workflow(storage: StorageBackend) -> None:
    clock = VirtualClock()
    rt = LocalRuntime(storage, clock=clock)
    run_id = await rt.start(napper)
    (timer,) = await storage.claim_due_timers(clock.now() + timedelta(hours=2))
    assert timer.run_id == run_id
    expected = None if isinstance(storage, FileStorageBackend) else "timer_names.napper"
    assert timer.workflow_name == expected
