"""Cancellation on every backend, in-process: while sleeping, while waiting for a signal,
during an inline step (interrupted, or finished first with ``cancel="finish"``), during a
dispatched step, before the first activation and after completion; cleanup steps after
the cancellation, replayed to the same log."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from pyworkflow import RunNotFoundError, cancel_async, sleep, step, wait_for_signal, workflow
from pyworkflow.dispatch import run_dispatched_step
from pyworkflow.engine import activate, create_run
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

ran: list[str] = []
started: asyncio.Event  # set by a slow step when it begins; made anew in each test's loop


@step(name="cancel.note")
async def note(what: str) -> str:
    ran.append(what)
    return what


@step(name="cancel.slow")
async def slow(what: str) -> str:
    started.set()
    await asyncio.sleep(30)
    ran.append(f"finished {what}")
    return what


@step(name="cancel.slow_finishing", cancel="finish")
async def slow_finishing(what: str) -> str:
    started.set()
    await asyncio.sleep(0.5)
    ran.append(f"finished {what}")
    return what


@step(name="cancel.remote", queue="remote")
async def remote(what: str) -> str:
    ran.append(f"remote {what}")
    return what


@workflow(name="cancel.sleeper")
async def sleeper() -> str:
    await note("before")
    await sleep("1d")
    return await note("after")


@workflow(name="cancel.cleanup")
async def with_cleanup() -> str:
    try:
        await sleep("1d")
    except asyncio.CancelledError:
        await note("cleanup 1")
        await sleep("1h")  # the cleanup itself waits: the next activation replays the delivery
        await note("cleanup 2")
        raise
    return "slept"


@workflow(name="cancel.catches")
async def catches() -> str:
    try:
        await wait_for_signal("never")
    except asyncio.CancelledError:
        return await note("returned instead")
    return "signalled"


@workflow(name="cancel.inline")
async def inline() -> str:
    try:
        await slow("inline")
    except asyncio.CancelledError:
        await note("cleanup after interrupt")
        raise
    return "done"


@workflow(name="cancel.finishing")
async def finishing() -> str:
    first = await slow_finishing("one")
    await note("never: cancelled at the next durable call")
    return first


@workflow(name="cancel.dispatching")
async def dispatching() -> str:
    return await remote("x")


def runtime(storage: StorageBackend) -> LocalRuntime:
    return LocalRuntime(storage, clock=VirtualClock())


async def events(storage: StorageBackend, run_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.type, e.data) for e in await storage.get_events(run_id)]


async def test_cancel_while_sleeping_ends_the_run_cancelled(storage: StorageBackend) -> None:
    ran.clear()
    rt = runtime(storage)
    run_id = await rt.start(sleeper)
    assert await cancel_async(run_id, reason="order refunded", storage=storage) is True
    assert await cancel_async(run_id, reason="asked twice", storage=storage) is True  # idempotent
    outcomes = await rt.tick()
    assert [o.status for o in outcomes] == ["cancelled"]
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "cancelled" and run.completed_at is not None
    log = await events(storage, run_id)
    assert ("workflow.cancelled", {"reason": "order refunded"}) in log
    assert [t for t, _ in log].count("cancel.requested") == 1
    assert ran == ["before"]  # the step after the sleep never ran
    assert await storage.get_timer(run_id) is None
    assert await cancel_async(run_id, storage=storage) is False  # finished


async def test_cleanup_steps_after_the_cancellation_replay_to_the_same_log(storage: StorageBackend) -> None:
    ran.clear()
    rt = runtime(storage)
    run_id = await rt.start(with_cleanup)
    await cancel_async(run_id, storage=storage)
    await rt.tick()  # delivers the cancellation; the cleanup sleeps an hour
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "suspended"
    run = await rt.run_until_complete(run_id)  # replays the delivery at the same sleep, then goes on
    assert run.status == "cancelled"
    assert ran == ["cleanup 1", "cleanup 2"]
    log = [t for t, _ in await events(storage, run_id)]
    assert log.count("cancel.requested") == 1 and log.count("step.completed") == 2
    assert log[-1] == "workflow.cancelled"


async def test_cancel_while_waiting_for_a_signal_may_be_caught(storage: StorageBackend) -> None:
    ran.clear()
    rt = runtime(storage)
    run_id = await rt.start(catches)
    await cancel_async(run_id, storage=storage)
    await rt.tick()
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "completed" and run.result == "returned instead"


async def test_cancel_before_the_first_activation(storage: StorageBackend) -> None:
    ran.clear()
    run, _ = await create_run(storage, definition_of(sleeper), (), {})
    assert await cancel_async(run.run_id, storage=storage) is True
    assert (await activate(storage, run.run_id)).status == "cancelled"
    log = [t for t, _ in await events(storage, run.run_id)]
    assert log == ["workflow.started", "cancel.requested", "call.cancelled", "workflow.cancelled"]
    assert ran == []


async def test_cancel_during_an_inline_step_interrupts_it(storage: StorageBackend) -> None:
    global started
    ran.clear()
    started = asyncio.Event()
    rt = LocalRuntime(storage, lease_ttl=0.6)  # renewals, and inbox checks, every 0.2 s
    run, _ = await create_run(storage, definition_of(inline), (), {})
    activation = asyncio.create_task(rt.resume(run.run_id))
    await asyncio.wait_for(started.wait(), 10)
    await cancel_async(run.run_id, reason="stop", storage=storage)
    outcome = await asyncio.wait_for(activation, 10)  # far less than the step's 30 s
    assert outcome.status == "cancelled"
    assert ran == ["cleanup after interrupt"]
    log = [t for t, _ in await events(storage, run.run_id)]
    assert log.index("step.started") < log.index("cancel.requested") < log.index("workflow.cancelled")
    assert "step.completed" in log  # the cleanup step
    assert log.count("step.started") == 2  # the interrupted attempt and the cleanup; no retry


async def test_a_finish_step_completes_and_is_recorded_before_the_cancellation(storage: StorageBackend) -> None:
    global started
    ran.clear()
    started = asyncio.Event()
    rt = LocalRuntime(storage, lease_ttl=0.3)
    run, _ = await create_run(storage, definition_of(finishing), (), {})
    activation = asyncio.create_task(rt.resume(run.run_id))
    await asyncio.wait_for(started.wait(), 10)
    await cancel_async(run.run_id, storage=storage)
    assert (await asyncio.wait_for(activation, 10)).status == "cancelled"
    assert ran == ["finished one"]
    log = await events(storage, run.run_id)
    types = [t for t, _ in log]
    assert types.index("step.completed") < types.index("cancel.requested") < types.index("call.cancelled")


async def test_a_dispatched_step_not_yet_started_never_starts(storage: StorageBackend) -> None:
    ran.clear()
    run, _ = await create_run(storage, definition_of(dispatching), (), {})
    first = await activate(storage, run.run_id, dispatch_guard=timedelta(hours=1))
    assert first.status == "suspended" and len(first.dispatches) == 1
    await cancel_async(run.run_id, storage=storage)
    assert (await activate(storage, run.run_id, dispatch_guard=timedelta(hours=1))).status == "cancelled"
    dispatch = first.dispatches[0]
    assert await run_dispatched_step(storage, run.run_id, dispatch.call_id, dispatch.step) == "skipped"
    assert ran == []


async def test_cancel_refuses_unknown_runs_and_bad_reasons(storage: StorageBackend) -> None:
    with pytest.raises(RunNotFoundError):
        await cancel_async("no-such-run", storage=storage)
    rt = runtime(storage)
    run_id = await rt.start(sleeper)
    with pytest.raises(TypeError, match="reason"):
        await cancel_async(run_id, reason=42, storage=storage)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reason"):
        await cancel_async(run_id, reason="x" * 2000, storage=storage)
    with pytest.raises(ValueError, match="reason"):
        await cancel_async(run_id, reason="nul\x00", storage=storage)
    assert await storage.get_messages(run_id) == []  # nothing recorded
    with pytest.raises(ValueError, match="cancel"):
        step(cancel="later")(note.__wrapped__)  # type: ignore[attr-defined]
