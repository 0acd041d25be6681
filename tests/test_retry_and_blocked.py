"""retry(run_id) continues a failed or blocked run in place, and a run whose replay meets
another durable call than its log recorded is blocked (not failed) until then."""

from __future__ import annotations

import pytest

from pyworkflow import (
    FatalError,
    RunNotFoundError,
    RunNotRetryableError,
    retry_async,
    sleep,
    step,
    workflow,
)
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

ran: list[str] = []
BROKEN = {"charge": True}
CODE = {"version": 1}


@step(name="rb.reserve")
async def reserve(order: str) -> str:
    ran.append("reserve")
    return f"reserved {order}"


@step(name="rb.charge", max_retries=1, retry_delay="1s")
async def charge(order: str) -> str:
    ran.append("charge")
    if BROKEN["charge"]:
        raise FatalError("card processor down") if order == "fatal" else RuntimeError("timeout")
    return f"charged {order}"


@workflow(name="rb.order")
async def order_wf(order: str) -> list[str]:
    return [await reserve(order), await charge(order)]


@step(name="rb.ship")
async def ship(order: str) -> str:
    ran.append("ship")
    return f"shipped {order}"


@workflow(name="rb.evolving")
async def evolving(order: str) -> list[str]:
    if CODE["version"] == 2:  # a deploy that put a step before the recorded one, unguarded
        await ship(order)
    first = await reserve(order)
    await sleep("1h")
    return [first, await charge(order)]


@workflow(name="rb.strict", on_nondeterminism="fail")
async def strict(order: str) -> list[str]:
    if CODE["version"] == 2:
        await ship(order)
    first = await reserve(order)
    await sleep("1h")
    return [first, await charge(order)]


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    BROKEN["charge"] = True
    CODE["version"] = 1


@pytest.fixture
def rt() -> LocalRuntime:
    return LocalRuntime(InMemoryStorageBackend(), clock=VirtualClock())


async def test_a_failed_run_continues_in_place_with_fresh_attempts(rt: LocalRuntime) -> None:
    run = await rt.run_until_complete(await rt.start(order_wf, "A1"))
    assert run.status == "failed" and ran == ["reserve", "charge", "charge"]  # 2 attempts, then failed
    BROKEN["charge"] = False  # the fix
    await retry_async(run.run_id, storage=rt.storage)
    record = await rt.storage.get_run(run.run_id)
    assert record is not None and record.status == "suspended" and record.error is None
    done = await rt.run_until_complete(run.run_id)
    assert done.status == "completed" and done.result == ["reserved A1", "charged A1"]
    assert ran == ["reserve", "charge", "charge", "charge"]  # the completed step never ran again
    events = await rt.storage.get_events(run.run_id)
    retried = [e for e in events if e.type == "workflow.retried"]
    assert len(retried) == 1 and retried[0].data["previous_status"] == "failed"
    attempts = [e.data["attempt"] for e in events if e.type == "step.started" and e.data["step"] == "rb.charge"]
    assert attempts == [1, 2, 3]  # numbering goes on; the retry counts attempts afresh


async def test_a_retried_step_gets_its_full_attempts_again(rt: LocalRuntime) -> None:
    run = await rt.run_until_complete(await rt.start(order_wf, "A2"))
    await retry_async(run.run_id, storage=rt.storage)  # still broken: two more attempts, then failed
    again = await rt.run_until_complete(run.run_id)
    assert again.status == "failed" and ran.count("charge") == 4 and ran.count("reserve") == 1


async def test_retry_refuses_runs_that_are_not_failed_or_blocked(rt: LocalRuntime) -> None:
    BROKEN["charge"] = False
    done = await rt.run_until_complete(await rt.start(order_wf, "A3"))
    with pytest.raises(RunNotRetryableError, match="completed"):
        await retry_async(done.run_id, storage=rt.storage)
    with pytest.raises(RunNotFoundError):
        await retry_async("no-such-run", storage=rt.storage)
    with pytest.raises(TypeError, match="retry"):
        await retry_async(None, storage=rt.storage)  # type: ignore[arg-type]
    assert [e.type for e in await rt.storage.get_events(done.run_id)][-1] == "workflow.completed"


async def test_a_run_whose_code_diverged_is_blocked_then_continued_after_a_fix(rt: LocalRuntime) -> None:
    BROKEN["charge"] = False
    run_id = await rt.start(evolving, "B1")  # asleep after reserve, on version 1
    CODE["version"] = 2  # the bad deploy
    blocked = await rt.run_until_complete(run_id)
    assert blocked.status == "blocked" and blocked.wake_at is None
    assert blocked.error is not None and "recorded as step 'rb.reserve'" in blocked.error["message"]
    assert "now calls step 'rb.ship'" in blocked.error["message"]
    assert (await rt.resume(run_id)).status == "not_due"  # holds no worker, nothing due
    listed = await rt.storage.list_runs(status="blocked")
    assert [r.run_id for r in listed.runs] == [run_id]
    CODE["version"] = 1  # the fix: the deploy is rolled back (or the change guarded by patched())
    await retry_async(run_id, storage=rt.storage)
    done = await rt.run_until_complete(run_id)
    assert done.status == "completed" and done.result == ["reserved B1", "charged B1"]
    assert "ship" not in ran and ran.count("reserve") == 1


async def test_on_nondeterminism_fail_fails_the_run_instead(rt: LocalRuntime) -> None:
    BROKEN["charge"] = False
    run_id = await rt.start(strict, "B2")
    CODE["version"] = 2
    failed = await rt.run_until_complete(run_id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["type"] == "pyworkflow.errors.NonDeterminismError"


def test_bad_on_nondeterminism_is_refused_at_decoration() -> None:
    async def wf() -> None: ...

    with pytest.raises(ValueError, match="on_nondeterminism"):
        workflow(name="rb.bad", on_nondeterminism="ignore")(wf)
