"""User code's BaseExceptions (KeyboardInterrupt, SystemExit, GeneratorExit, a CancelledError
of its own, any other) fail the step once, clearly, and never reach the loop machinery;
a real cancellation of the activation still cancels."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from pyworkflow import step, workflow
from pyworkflow.dispatch import run_dispatched_step
from pyworkflow.engine import activate, create_run
from pyworkflow.errors import StepFailedError
from pyworkflow.events import EventType
from pyworkflow.loop import THREAD_LOOPS, UserBaseExceptionError, contained
from pyworkflow.registry import definition_of
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

runs: Counter[str] = Counter()


class Foreign(BaseException):
    """A BaseException of the user's own."""


RAISERS: dict[str, type[BaseException]] = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "CancelledError": asyncio.CancelledError,
    "Foreign": Foreign,
}


@step(max_retries=3)
async def raiser(kind: str) -> str:
    runs[kind] += 1
    raise RAISERS[kind]("boom")


@step
async def after(kind: str) -> str:
    return f"after-{kind}"


@workflow(name="base_exc.catches")
async def catches(kind: str) -> str:
    try:
        await raiser(kind)
    except StepFailedError as exc:  # an ordinary exception, which the workflow may handle
        return f"caught: {exc} | {await after(kind)}"
    return "not raised"


@workflow(name="base_exc.fails")
async def fails(kind: str) -> str:
    await raiser(kind)
    return "not raised"


@step(queue="base-exc")
async def remote_raiser(kind: str) -> str:
    runs[f"remote-{kind}"] += 1
    raise RAISERS[kind]("boom")


@workflow(name="base_exc.remote")
async def remote(kind: str) -> str:
    return await remote_raiser(kind)


KINDS = list(RAISERS)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_step_raising_a_base_exception_fails_once_and_the_workflow_sees_an_error(
    memory: InMemoryStorageBackend, kind: str
) -> None:
    runs.clear()
    runtime = LocalRuntime(memory, clock=VirtualClock())
    run_id = await runtime.start(catches, kind)
    run = await runtime.run_until_complete(run_id)
    assert run.status == "completed", run.error
    assert run.result.startswith("caught: step 'raiser' raised ") and run.result.endswith(f"after-{kind}")
    assert f"{kind}: boom" in run.result
    assert runs[kind] == 1, "a BaseException fails the step at once: the body ran once, no retry"
    events = await memory.get_events(run_id)
    failed = [e for e in events if e.type == EventType.STEP_FAILED]
    assert len(failed) == 1 and not [e for e in events if e.type == EventType.STEP_RETRYING]
    assert kind in failed[0].data["error"]["message"]
    assert kind in failed[0].data["error"]["traceback"]  # the original, as the cause


@pytest.mark.parametrize("kind", KINDS)
async def test_an_uncaught_base_exception_of_a_step_fails_the_run_and_replays_the_same(
    memory: InMemoryStorageBackend, kind: str
) -> None:
    runs.clear()
    runtime = LocalRuntime(memory, clock=VirtualClock())
    run_id = await runtime.start(fails, kind)
    run = await runtime.run_until_complete(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error["type"] == "pyworkflow.errors.StepFailedError"
    assert "step 'raiser' raised " in run.error["message"] and f"{kind}: boom" in run.error["message"]
    assert runs[kind] == 1
    # and the event loop that ran it is fine: the next run on it completes
    second = await runtime.start(catches, kind)
    assert (await runtime.run_until_complete(second)).status == "completed"


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "CancelledError"])
def test_a_task_body_on_the_worker_loop_survives_a_step_base_exception(kind: str) -> None:
    """What a Celery pool thread does: activations on its own long-lived loop."""
    memory = InMemoryStorageBackend()
    runtime = LocalRuntime(memory, clock=VirtualClock())

    async def one(wf: Any) -> str:
        run_id = await runtime.start(wf, kind)
        return (await runtime.run_until_complete(run_id)).status

    assert THREAD_LOOPS.run(contained(one(fails))) == "failed"
    assert THREAD_LOOPS.run(contained(one(catches))) == "completed"


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "Foreign", "GeneratorExit"])
def test_the_task_boundary_turns_a_stray_base_exception_into_an_error(kind: str) -> None:
    async def body() -> None:
        raise RAISERS[kind]("stray")

    with pytest.raises(UserBaseExceptionError, match=kind) as info:
        THREAD_LOOPS.run(contained(body()))
    assert isinstance(info.value.__cause__, RAISERS[kind])
    assert THREAD_LOOPS.run(contained(asyncio.sleep(0, "still fine"))) == "still fine"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_dispatched_step_raising_a_base_exception_is_recorded_as_failed(
    memory: InMemoryStorageBackend, kind: str
) -> None:
    runs.clear()
    run, _ = await create_run(memory, definition_of(remote), (kind,), {})
    run_id = run.run_id
    outcome = await activate(memory, run_id, dispatch_guard=timedelta(seconds=60))
    assert outcome.status == "suspended" and len(outcome.dispatches) == 1
    d = outcome.dispatches[0]
    assert await run_dispatched_step(memory, run_id, d.call_id, d.step) == "failed"
    assert runs[f"remote-{kind}"] == 1
    await activate(memory, run_id, dispatch_guard=timedelta(seconds=60))
    ended = await memory.get_run(run_id)
    assert ended is not None and ended.status == "failed"
    assert ended.error is not None and f"{kind}: boom" in ended.error["message"]


async def test_a_real_cancellation_of_the_activation_still_cancels(memory: InMemoryStorageBackend) -> None:
    started = asyncio.Event()

    @step(name="base_exc.hangs")
    async def hangs() -> None:
        started.set()
        await asyncio.sleep(60)

    @workflow(name="base_exc.hanging")
    async def hanging() -> None:
        await hangs()

    runtime = LocalRuntime(memory)
    task = asyncio.ensure_future(runtime.start(hanging))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    runs_ = (await memory.list_runs()).runs
    events = await memory.get_events(runs_[0].run_id)
    assert not [e for e in events if e.type == EventType.STEP_FAILED], "a cancellation is not a step failure"


@workflow(name="baseexc.workflow_exits")
async def workflow_exits() -> None:
    raise SystemExit(3)


async def test_a_workflow_raising_a_base_exception_fails_the_run_once(memory: InMemoryStorageBackend) -> None:
    run, _ = await create_run(memory, definition_of(workflow_exits), (), {})
    outcome = await activate(memory, run.run_id)
    assert outcome.status == "failed"
    record = await memory.get_run(run.run_id)
    assert record is not None and record.error is not None
    assert "SystemExit" in record.error["message"] and "baseexc.workflow_exits" in record.error["message"]
    assert (await activate(memory, run.run_id)).status == "finished"
    assert await asyncio.sleep(0, "still running") == "still running"  # the loop is healthy
