"""pause()/unpause() on every backend, in-process: a paused run finishes the step it runs,
holds at its next durable call (status ``paused``, no worker, nothing due), keeps the
timers and signals that come meanwhile for after unpause, and can still be cancelled."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from pyworkflow import (
    RunNotFoundError,
    cancel_async,
    pause_async,
    send_signal_async,
    sleep,
    step,
    unpause_async,
    wait_for_signal,
    workflow,
)
from pyworkflow.engine import create_run
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

ran: list[str] = []
started: asyncio.Event  # made anew in each test's loop


@step(name="pause.note")
async def note(what: str) -> str:
    ran.append(what)
    return what


@step(name="pause.slow")
async def slow(what: str) -> str:
    started.set()
    await asyncio.sleep(0.6)
    ran.append(what)
    return what


@workflow(name="pause.steps")
async def steps() -> list[str]:
    first = await note("one")
    await sleep("1h")
    second = await note("two")
    got = await wait_for_signal("go")
    return [first, second, got, await note("three")]


@workflow(name="pause.mid_step")
async def mid_step() -> list[str]:
    return [await slow("slow"), await note("after")]


async def status(storage: StorageBackend, run_id: str) -> str:
    run = await storage.get_run(run_id)
    assert run is not None
    return str(run.status)


async def test_pause_holds_the_run_and_unpause_lets_it_go_on(storage: StorageBackend) -> None:
    ran.clear()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(steps)  # ran "one", sleeps an hour
    assert await pause_async(run_id, storage=storage) is True
    assert await pause_async(run_id, storage=storage) is True  # idempotent
    await rt.tick()  # takes the pause; the run still sleeps (a replayed wait is no new call)
    assert await status(storage, run_id) == "suspended"
    await rt.clock.wait_until(rt.clock.now() + timedelta(hours=2))
    await rt.tick()  # the hour is over: replays past the sleep, holds before "two"
    assert await status(storage, run_id) == "paused"
    assert ran == ["one"]
    paused = await storage.get_run(run_id)
    assert paused is not None and paused.wake_at is None  # nothing due: holds no worker
    assert (await rt.resume(run_id)).status == "not_due"
    await send_signal_async(run_id, "go", "signal", storage=storage)  # kept for after unpause
    await rt.tick()
    assert await status(storage, run_id) == "paused" and ran == ["one"]
    assert await unpause_async(run_id, storage=storage) is True
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == ["one", "two", "signal", "three"]
    types = [e.type for e in await storage.get_events(run_id)]
    assert types.count("pause.requested") == 1 and types.count("pause.lifted") == 1
    assert "workflow.paused" in types
    assert await pause_async(run_id, storage=storage) is False  # finished


async def test_a_paused_run_can_be_cancelled(storage: StorageBackend) -> None:
    ran.clear()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(steps)
    await pause_async(run_id, storage=storage)
    await rt.run_until_complete(run_id)
    assert await status(storage, run_id) == "paused"
    assert await cancel_async(run_id, storage=storage) is True
    await rt.tick()
    assert await status(storage, run_id) == "cancelled"
    assert ran == ["one"]


async def test_a_pause_during_a_step_lets_it_finish_then_holds(storage: StorageBackend) -> None:
    global started
    ran.clear()
    started = asyncio.Event()
    rt = LocalRuntime(storage, lease_ttl=0.3)  # inbox looked at every 0.1 s while the step runs
    run, _ = await create_run(storage, definition_of(mid_step), (), {})
    activation = asyncio.create_task(rt.resume(run.run_id))
    await asyncio.wait_for(started.wait(), 10)
    await pause_async(run.run_id, storage=storage)
    assert (await asyncio.wait_for(activation, 10)).status == "paused"
    assert ran == ["slow"]  # finished and recorded; "after" did not start
    types = [e.type for e in await storage.get_events(run.run_id)]
    assert types.index("step.completed") < types.index("pause.requested") < types.index("workflow.paused")
    await unpause_async(run.run_id, storage=storage)
    await rt.tick()
    assert (await storage.get_run(run.run_id)).result == ["slow", "after"]  # type: ignore[union-attr]


async def test_unpause_of_a_run_that_is_not_paused_changes_nothing(storage: StorageBackend) -> None:
    ran.clear()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(steps)
    assert await unpause_async(run_id, storage=storage) is True
    run = await rt.run_until_complete(run_id)  # waits for "go"
    assert run.status == "suspended"
    types = [e.type for e in await storage.get_events(run_id)]
    assert "pause.lifted" not in types and "workflow.paused" not in types
    with pytest.raises(RunNotFoundError):
        await pause_async("no-such-run", storage=storage)
    with pytest.raises(TypeError, match="pause"):
        await pause_async(42, storage=storage)  # type: ignore[arg-type]
