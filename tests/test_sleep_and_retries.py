"""Durable sleeps and retries: recorded times, suspensions, never early."""

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from pyworkflow import FatalError, RetryableError, sleep, step, workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock, run_local, start_local

attempts: Counter[str] = Counter()


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


@workflow(name="sleep.three_days")
async def three_days() -> str:
    await sleep("3d")
    return "awake"


async def test_sleep_suspends_with_its_wake_time_and_never_wakes_early(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    run_id = await runtime.start(three_days)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "suspended"
    events = await memory.get_events(run_id)
    created = next(e for e in events if e.type == "sleep.created")
    wake = ts(created.data["wake_at"])
    assert abs((wake - created.timestamp) - timedelta(days=3)) < timedelta(seconds=1)
    assert run.wake_at == wake
    timer = await memory.get_timer(run_id)
    assert timer is not None and timer.wake_at == wake

    clock.advance(wake - clock.now() - timedelta(milliseconds=5))
    assert (await runtime.resume(run_id)).status == "not_due"
    assert [t.run_id for t in await memory.claim_due_timers(clock.now())] == []
    clock.advance(timedelta(milliseconds=10))
    assert (await runtime.resume(run_id)).status == "completed"
    events = await memory.get_events(run_id)
    done = next(e for e in events if e.type == "sleep.completed")
    assert done.timestamp >= wake
    assert await memory.get_timer(run_id) is None


async def test_time_skipping_runs_three_days_in_milliseconds(memory: InMemoryStorageBackend) -> None:
    began = time.monotonic()
    run_id = await run_local(three_days, storage=memory)
    assert time.monotonic() - began < 2
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed" and run.result == "awake"
    assert run.completed_at is not None and run.completed_at - run.created_at >= timedelta(days=3)


@workflow(name="sleep.forms")
async def sleep_forms(until: datetime) -> int:
    await sleep(1.5)
    await sleep(timedelta(minutes=2))
    await sleep("1h30m")
    await sleep(until)
    await sleep(datetime(2000, 1, 1))  # in the past: no wait
    return 5


async def test_every_sleep_form_is_durable(memory: InMemoryStorageBackend) -> None:
    until = datetime.now(timezone.utc) + timedelta(days=10)
    run_id = await run_local(sleep_forms, until.replace(tzinfo=None), storage=memory)
    events = await memory.get_events(run_id)
    created = [e for e in events if e.type == "sleep.created"]
    deltas = [ts(e.data["wake_at"]) - e.timestamp for e in created[:3]]
    assert [round(d.total_seconds(), 1) for d in deltas] == [1.5, 120.0, 5400.0]
    assert ts(created[3].data["wake_at"]) == until
    assert ts(created[4].data["wake_at"]) == datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert sum(e.type == "workflow.suspended" for e in events) == 4
    run = await memory.get_run(run_id)
    assert run is not None and run.result == 5


@workflow(name="sleep.bad")
async def bad_sleep() -> None:
    await sleep("soon")


async def test_a_bad_duration_fails_at_the_call_naming_it(memory: InMemoryStorageBackend) -> None:
    run_id = await start_local(bad_sleep, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "builtins.ValueError" and "'soon'" in run.error["message"]
    with pytest.raises(ValueError, match="'later'"):
        await sleep("later")


@step
async def naps() -> float:
    began = time.monotonic()
    await sleep(0.05)
    return time.monotonic() - began


@workflow(name="sleep.in_step")
async def sleeps_in_step() -> float:
    return await naps()


async def test_sleep_inside_a_step_is_a_plain_wait(memory: InMemoryStorageBackend) -> None:
    run_id = await start_local(sleeps_in_step, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed" and run.result >= 0.05
    assert not any(e.type.startswith("sleep.") for e in await memory.get_events(run_id))


# -- retries -----------------------------------------------------------------------------


@step(retry_delay="exponential")
async def always_fails(tag: str) -> None:
    attempts[tag] += 1
    raise ConnectionError(f"down {attempts[tag]}")


@workflow(name="retry.default")
async def default_retries() -> None:
    await always_fails("default")


async def test_default_policy_is_three_exponential_retries_then_failure(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    run_id = await runtime.start(default_retries)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "suspended", "a retry wait is a durable suspension"
    run = await runtime.run_until_complete(run_id)
    assert attempts["default"] == 4
    events = await memory.get_events(run_id)
    retrying = [e for e in events if e.type == "step.retrying"]
    gaps = [round((ts(e.data["resume_at"]) - e.timestamp).total_seconds()) for e in retrying]
    assert gaps == [1, 2, 4]
    assert [e.type for e in events].count("step.failed") == 1
    assert run.status == "failed" and run.error is not None
    assert run.error["type"] == "builtins.ConnectionError" and run.error["message"] == "down 4"
    assert "Traceback" in run.error["traceback"] and "always_fails" in run.error["traceback"]


@step(max_retries=2, retry_delay="fixed")
async def fixed_fails() -> None:
    raise RuntimeError("nope")


@step(max_retries=1, retry_delay="5s")
async def duration_fails() -> None:
    raise RuntimeError("nope")


@step(max_retries=3, retry_delay="exponential", max_retry_delay="3s", retry_jitter=True)
async def jittery() -> None:
    raise RuntimeError("nope")


@workflow(name="retry.policies")
async def policies() -> list[str]:
    caught = []
    for fn in (fixed_fails, duration_fails, jittery):
        try:
            await fn()
        except RuntimeError as exc:
            caught.append(str(exc))
    return caught


async def test_fixed_duration_and_capped_jittered_delays(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(policies, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed" and run.result == ["nope"] * 3
    gaps: dict[str, list[float]] = {}
    for e in await memory.get_events(run_id):
        if e.type == "step.retrying":
            gaps.setdefault(e.data["step"], []).append((ts(e.data["resume_at"]) - e.timestamp).total_seconds())
    assert [round(g) for g in gaps["fixed_fails"]] == [60, 60]
    assert [round(g) for g in gaps["duration_fails"]] == [5]
    bounds = [1, 2, 3]  # exponential 1, 2, 4 capped at 3, then jitter keeps each in [d/2, d]
    assert all(b / 2 - 0.01 <= g <= b + 0.01 for g, b in zip(gaps["jittery"], bounds, strict=True))


@step(max_retries=5)
async def steered(tag: str) -> str:
    attempts[tag] += 1
    if tag == "fatal":
        raise FatalError("card declined")
    if attempts[tag] < 3:
        raise RetryableError("rate limited", retry_after="10m")
    return "ok"


@workflow(name="retry.steered")
async def steered_workflow(tag: str) -> str:
    try:
        return await steered(tag)
    except FatalError as exc:
        return f"caught: {exc}"


async def test_retry_after_and_fatal_error(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(steered_workflow, "retry", storage=memory)
    events = await memory.get_events(run_id)
    gaps = [(ts(e.data["resume_at"]) - e.timestamp).total_seconds() for e in events if e.type == "step.retrying"]
    assert [round(g) for g in gaps] == [600, 600]
    assert attempts["retry"] == 3

    run_id = await start_local(steered_workflow, "fatal", storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.result == "caught: card declined"
    assert attempts["fatal"] == 1
    types = [e.type for e in await memory.get_events(run_id)]
    assert "step.retrying" not in types and types.count("step.failed") == 1


@step(max_retries=0)
async def fails_once_with_value_error() -> None:
    raise KeyError("missing-thing")


@workflow(name="retry.replayed_error")
async def replayed_error() -> str:
    try:
        await fails_once_with_value_error()
    except KeyError as exc:
        caught = repr(exc)
    await sleep("1h")
    try:
        await fails_once_with_value_error()
    except KeyError:
        pass
    return caught


async def test_a_recorded_step_failure_replays_as_the_same_exception_type(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(replayed_error, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed", run.error


@step(max_retries=1, retry_delay="1s", timeout="50ms")
async def too_slow(tag: str) -> str:
    attempts[tag] += 1
    if attempts[tag] == 1:
        await asyncio.sleep(5)
    return "fast enough"


@workflow(name="timeout.step")
async def slow_workflow() -> str:
    return await too_slow("slow")


async def test_step_timeout_is_a_retryable_failure(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(slow_workflow, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed" and run.result == "fast enough"
    retry = next(e for e in await memory.get_events(run_id) if e.type == "step.retrying")
    assert retry.data["error"]["type"] == "pyworkflow.errors.StepTimeoutError"


@workflow(name="timeout.workflow_sleeping", max_duration="1h")
async def outlives_its_deadline() -> str:
    await sleep("2h")
    return "too late"


@step
async def hangs() -> None:
    await asyncio.sleep(30)


@workflow(name="timeout.workflow_busy", max_duration="100ms")
async def busy_past_deadline() -> None:
    await hangs()


async def test_max_duration_fails_the_run(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(outlives_its_deadline, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "pyworkflow.errors.WorkflowTimeoutError"
    assert run.completed_at is not None and run.deadline is not None
    assert run.deadline <= run.completed_at < run.deadline + timedelta(minutes=1), "woken at the deadline, not at 2h"

    began = time.monotonic()
    run_id = await start_local(busy_past_deadline, storage=memory)
    assert time.monotonic() - began < 5
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and "WorkflowTimeoutError" in run.error["type"]  # type: ignore[index]


async def test_local_tick_wakes_due_runs_only(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    soon = await runtime.start(sleep_forms, datetime.now(timezone.utc))  # first sleep: 1.5 s
    later = await runtime.start(three_days)
    clock.advance(2)
    outcomes = await runtime.tick()
    assert [o.run_id for o in outcomes] == [soon]
    assert outcomes[0].status == "suspended", "it moved on to its next sleep"
    run = await memory.get_run(later)
    assert run is not None and run.status == "suspended"
    assert await runtime.tick() == [], "the next sleep is not due yet"
