"""Replay: recorded calls return their outcome without running; changed code is caught."""

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pyworkflow import get_logger, sleep, step, workflow
from pyworkflow.registry import get_workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock, resume_local, run_local, start_local

executions: Counter[str] = Counter()


async def resume_with_new_code(
    runtime: LocalRuntime, clock: VirtualClock, run_id: str, name: str, new_fn: object
) -> None:
    """Resume ``run_id`` an hour later with ``name`` deployed as ``new_fn`` (a code change)."""
    definition = get_workflow(name)
    original = definition.fn
    definition.fn = new_fn  # type: ignore[assignment]
    try:
        clock.advance(3600)
        await runtime.resume(run_id)
    finally:
        definition.fn = original


log = get_logger("tests")


@step
async def record(tag: str) -> str:
    executions[tag] += 1
    return f"done:{tag}"


@workflow(name="replay.sleepy")
async def sleepy(tag: str) -> list[str]:
    log.info("before", tag=tag)
    first = await record(f"{tag}-1")
    await sleep("1h")
    log.info("after sleep", tag=tag)
    second = await record(f"{tag}-2")
    await sleep("1h")
    return [first, second]


async def test_completed_steps_never_rerun_across_suspend_and_resume(memory: InMemoryStorageBackend) -> None:
    runtime = LocalRuntime(memory, clock=VirtualClock())
    run_id = await runtime.start(sleepy, "a")
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "suspended"
    run = await runtime.run_until_complete(run_id)
    assert run.status == "completed" and run.result == ["done:a-1", "done:a-2"]
    assert executions["a-1"] == 1 and executions["a-2"] == 1
    for _ in range(3):  # replaying a finished run again changes nothing
        await runtime.resume(run_id)
    assert executions["a-1"] == 1 and executions["a-2"] == 1
    types = [e.type for e in await memory.get_events(run_id)]
    assert types.count("log.info") == 2, "each log line is recorded once despite replays"
    assert types.count("workflow.resumed") == 2


@workflow(name="replay.twice")
async def twice() -> list[str]:
    return [await record("same"), await record("same")]


async def test_same_step_same_arguments_runs_twice(memory: InMemoryStorageBackend) -> None:
    before = executions["same"]
    run_id = await start_local(twice, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.result == ["done:same", "done:same"]
    assert executions["same"] == before + 2
    starts = [e.data["call_id"] for e in await memory.get_events(run_id) if e.type == "step.started"]
    assert starts == [1, 2]


@step
async def slow_echo(value: str, delay: float) -> str:
    await asyncio.sleep(delay)
    executions[f"echo-{value}"] += 1
    return value


@workflow(name="replay.fanout")
async def fanout() -> list[str]:
    results = await asyncio.gather(slow_echo("a", 0.03), slow_echo("b", 0.0), slow_echo("c", 0.01))
    await sleep("1m")
    again = await asyncio.gather(slow_echo("d", 0.0), slow_echo("e", 0.02))
    return [*results, *again]


async def test_gather_gets_stable_ids_and_ordered_results(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(fanout, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.result == ["a", "b", "c", "d", "e"]
    starts = {
        e.data["call_id"]: e.data["args"]["args"][0]
        for e in await memory.get_events(run_id)
        if e.type == "step.started"
    }
    assert starts == {1: "a", 2: "b", 3: "c", 5: "d", 6: "e"}
    assert all(executions[f"echo-{v}"] == 1 for v in "abcde")


@step
async def unreliable_then_sleep_partner() -> str:
    return "partner"


@workflow(name="replay.gather_with_sleep")
async def gather_with_sleep() -> list[object]:
    return list(await asyncio.gather(slow_echo("g", 0.02), sleep("10m"), unreliable_then_sleep_partner()))


async def test_gather_with_a_sleep_finishes_running_steps_before_suspending(memory: InMemoryStorageBackend) -> None:
    runtime = LocalRuntime(memory, clock=VirtualClock())
    run_id = await runtime.start(gather_with_sleep)
    events = await memory.get_events(run_id)
    assert events[-1].type == "workflow.suspended"
    completed = [e.data["call_id"] for e in events if e.type == "step.completed"]
    assert 1 in completed, "the step already running when the sleep suspended the run was finished and recorded"
    run = await runtime.run_until_complete(run_id)
    assert run.result == ["g", None, "partner"]
    assert executions["echo-g"] == 1


@step
async def other(tag: str) -> str:
    return tag


@workflow(name="replay.changing")
async def changing() -> str:
    await record("changing-1")
    await sleep("1h")
    return await record("changing-2")


async def test_changed_code_raises_non_determinism_naming_both(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    run_id = await runtime.start(changing)

    async def new_version() -> str:  # call #1 was record(); the new code calls other() there
        await other("x")
        return "never"

    await resume_with_new_code(runtime, clock, run_id, "replay.changing", new_version)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "blocked"  # not failed: retry() after a fix continues it
    assert run.error is not None
    assert run.error["type"] == "pyworkflow.errors.NonDeterminismError"
    assert "'record'" in run.error["message"] and "'other'" in run.error["message"]


@workflow(name="replay.shrinking")
async def shrinking() -> str:
    await record("shrink-1")
    await sleep("1h")
    return "done"


async def test_a_recorded_call_no_longer_made_is_non_determinism(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    run_id = await runtime.start(shrinking)

    async def without_the_step() -> str:
        await sleep("1h")
        return "done"

    await resume_with_new_code(runtime, clock, run_id, "replay.shrinking", without_the_step)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "blocked"
    assert run.error is not None and "NonDeterminismError" in run.error["type"]


@workflow(name="replay.catches_non_determinism")
async def swallower() -> str:
    await record("swallow-1")
    await sleep("1h")
    try:
        await record("swallow-2")
    except Exception:  # noqa: BLE001 - user code that swallows everything
        return "swallowed"
    return "fine"


async def test_user_code_cannot_swallow_non_determinism(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    run_id = await runtime.start(swallower)

    async def reordered() -> str:
        try:
            await other("swallow-1")
        except Exception:  # noqa: BLE001
            return "swallowed"
        return "fine"

    await resume_with_new_code(runtime, clock, run_id, "replay.catches_non_determinism", reordered)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "blocked" and "NonDeterminismError" in run.error["type"]  # type: ignore[index]


async def test_resume_local_is_a_no_op_before_wake_and_after_finish(memory: InMemoryStorageBackend) -> None:
    run_id = await start_local(sleepy, "noop", storage=memory)
    count = len(await memory.get_events(run_id))
    run = await resume_local(run_id, storage=memory)
    assert run is not None and run.status == "suspended"
    assert len(await memory.get_events(run_id)) == count
    finished = await start_local(twice, storage=memory)
    count = len(await memory.get_events(finished))
    run = await resume_local(finished, storage=memory)
    assert run is not None and run.status == "completed"
    assert len(await memory.get_events(finished)) == count


gate: dict[str, asyncio.Event] = {}


@step
async def held(tag: str) -> str:
    gate["entered"].set()
    await gate["release"].wait()
    executions[tag] += 1
    return tag


@workflow(name="replay.held")
async def held_workflow() -> str:
    await sleep("1s")
    return await held("held-step")


async def test_concurrent_resumes_advance_a_run_exactly_once() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock()
    runtime = LocalRuntime(storage, clock=clock)
    gate["entered"], gate["release"] = asyncio.Event(), asyncio.Event()
    run_id = await runtime.start(held_workflow)
    clock.advance(2)
    first = asyncio.ensure_future(runtime.resume(run_id))
    await asyncio.wait_for(gate["entered"].wait(), 5)
    others = await asyncio.gather(*(runtime.resume(run_id) for _ in range(10)))
    assert {o.status for o in others} == {"busy"}
    gate["release"].set()
    assert (await first).status == "completed"
    assert executions["held-step"] == 1
    types = [e.type for e in await storage.get_events(run_id)]
    assert types.count("workflow.resumed") == 1 and types.count("step.completed") == 1


Boom = asyncio.CancelledError  # the activation cancelled mid-step stands for a worker dying there


crash_plan = {"crashes": 0}


@step(max_retries=2)
async def crashy(tag: str) -> str:
    executions[tag] += 1
    if crash_plan["crashes"] > 0:
        crash_plan["crashes"] -= 1
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # nothing after this runs in this activation
        await asyncio.sleep(0)
    return tag


@workflow(name="replay.crashy")
async def crashy_workflow() -> str:
    a = await record("crash-before")
    b = await crashy("crash-step")
    return a + b


async def test_a_crashed_step_runs_again_and_completed_steps_do_not() -> None:
    storage = InMemoryStorageBackend()
    runtime = LocalRuntime(storage, lease_ttl=0.05)
    crash_plan["crashes"] = 1
    with pytest.raises(Boom):
        await runtime.start(crashy_workflow)
    run_id = (await storage.list_runs()).runs[0].run_id
    assert (await runtime.resume(run_id)).status == "busy", "the dead activation's lease still holds"
    assert await _recover(storage) == [run_id]
    run = await runtime.run_until_complete(run_id)
    assert run.status == "completed"
    assert executions["crash-before"] == 1 and executions["crash-step"] == 2
    types = [e.type for e in await storage.get_events(run_id)]
    assert "workflow.interrupted" in types
    attempts = [
        e.data["attempt"]
        for e in await storage.get_events(run_id)
        if e.type == "step.started" and e.data["step"] == "crashy"
    ]
    assert attempts == [1, 2]


async def test_a_step_that_always_kills_its_worker_fails_after_its_attempts() -> None:
    storage = InMemoryStorageBackend()
    runtime = LocalRuntime(storage, lease_ttl=0.05)
    crash_plan["crashes"] = 100
    executions["crash-step"] = 0
    with pytest.raises(Boom):
        await runtime.start(crashy_workflow)
    run_id = (await storage.list_runs()).runs[0].run_id
    for _ in range(2):
        await _recover(storage)
        with pytest.raises(Boom):
            await runtime.resume(run_id)
    await _recover(storage)
    run = await runtime.run_until_complete(run_id)
    crash_plan["crashes"] = 0
    assert run.status == "failed"
    assert run.error is not None and "StepCrashedError" in run.error["type"]
    assert executions["crash-step"] == 3


async def _recover(storage: InMemoryStorageBackend) -> list[str]:
    recovered: list[str] = []
    from tests.conftest import eventually

    async def expired() -> bool:
        recovered.extend(await storage.recover_expired_leases())
        return bool(recovered)

    await eventually(expired)
    return recovered


@step
async def remember(value: str) -> str:
    executions[f"remember-{value}"] += 1
    return value


@workflow(name="replay.values")
async def values() -> list[str]:
    import pyworkflow

    stamp, ident, roll = pyworkflow.now(), pyworkflow.uuid4(), pyworkflow.random()
    await remember(ident.hex)
    await sleep("1h")
    return [stamp.isoformat(), str(ident), repr(roll), pyworkflow.now().isoformat()]


async def test_now_uuid_and_random_are_recorded_once_and_replayed(memory: InMemoryStorageBackend) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(memory, clock=clock)
    began = clock.now()
    run_id = await runtime.start(values)
    run = await runtime.run_until_complete(run_id)
    stamp, ident, roll, later = run.result
    recorded = [e.data for e in await memory.get_events(run_id) if e.type == "value.recorded"]
    assert [r["kind"] for r in recorded] == ["now", "uuid4", "random", "now"]
    assert recorded[1]["value"] == ident and repr(recorded[2]["value"]) == roll
    assert datetime.fromisoformat(stamp) - began < timedelta(seconds=5), "the first execution's time, not replay's"
    assert datetime.fromisoformat(later) - datetime.fromisoformat(stamp) >= timedelta(hours=1)
    assert executions[f"remember-{uuid.UUID(ident).hex}"] == 1, "replay passed the same uuid to the step"


def test_values_outside_a_workflow_are_plain() -> None:
    import pyworkflow

    assert pyworkflow.uuid4() != pyworkflow.uuid4()
    assert 0 <= pyworkflow.random() < 1
    assert abs((pyworkflow.now() - datetime.now(timezone.utc)).total_seconds()) < 5


class SlowAppends(InMemoryStorageBackend):
    """Appends that really wait, as on a network backend, so gather branches contend."""

    async def append_events(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.002)
        await super().append_events(*args, **kwargs)


async def test_gather_branches_take_turns_appending() -> None:
    storage = SlowAppends()
    run_id = await run_local(fanout, storage=storage)
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "completed", run.error
    events = await storage.get_events(run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events].count("step.completed") == 5


slow_gate: dict[str, asyncio.Event] = {}


@step
async def quick_one() -> str:
    return "quick"


@step
async def waits_for_gate() -> str:
    await slow_gate["open"].wait()
    return "slow"


@workflow(name="replay.completion_written_promptly")
async def quick_and_slow() -> list[str]:
    return list(await asyncio.gather(quick_one(), waits_for_gate()))


async def test_a_completion_is_written_while_a_sibling_branch_still_runs() -> None:
    """A completion rides on the next append; when none comes (the sibling branch is
    busy for a long time) it is written on the next loop turn, not at the end."""
    from tests.conftest import eventually

    storage = InMemoryStorageBackend()
    slow_gate["open"] = asyncio.Event()
    running = asyncio.ensure_future(start_local(quick_and_slow, storage=storage))

    async def quick_recorded() -> bool:
        runs = (await storage.list_runs()).runs
        if not runs:
            return False
        events = await storage.get_events(runs[0].run_id)
        return any(e.type == "step.completed" and e.data["step"] == "quick_one" for e in events)

    await eventually(quick_recorded, timeout=5)
    slow_gate["open"].set()
    run = await storage.get_run(await running)
    assert run is not None and run.result == ["quick", "slow"]
    events = await storage.get_events(run.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:], strict=False))
