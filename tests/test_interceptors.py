"""Interceptors: they see each run start, each activation, each step attempt and each
recorded event once — never again on replay —, may wrap them (a context variable set
around a step is seen inside it), carry what a start put in the carrier to every later
hook, and cannot break a run by failing while observing."""

from __future__ import annotations

import contextvars
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from pyworkflow import (
    Interceptor,
    RetryableError,
    add_interceptor,
    remove_interceptor,
    run_child,
    sleep,
    step,
    workflow,
)
from pyworkflow.interceptors import ActivationInfo, RunInfo, StartInfo, StepAttemptInfo
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

audit_tag: contextvars.ContextVar[str | None] = contextvars.ContextVar("audit_tag", default=None)
seen_in_step: list[str | None] = []
flaky_calls: list[int] = []


@step(name="icpt.fetch")
async def fetch(x: int) -> int:
    seen_in_step.append(audit_tag.get())
    return x + 1


@step(name="icpt.flaky", max_retries=2, retry_delay="1s")
async def flaky() -> str:
    flaky_calls.append(1)
    if len(flaky_calls) == 1:
        raise RetryableError("not yet")
    return "ok"


@workflow(name="icpt.child")
async def child(x: int) -> int:
    return await fetch(x)


@workflow(name="icpt.flow")
async def flow(x: int) -> int:
    a = await fetch(x)
    await sleep("1h")
    b = await fetch(a)
    await flaky()
    return await run_child(child, b)


@workflow(name="icpt.broken")
async def broken() -> None:
    await fetch(1)
    raise ValueError("the run fails")


class Recorder(Interceptor):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.events: list[tuple[str, int, str]] = []
        self.failures: list[tuple[str, str]] = []

    async def start(self, info: StartInfo, proceed: Any) -> Any:
        info.carrier["trace"] = f"trace-of-{info.workflow}"
        self.calls.append(("start", info.workflow))
        return await proceed()

    async def activation(self, info: ActivationInfo, proceed: Any) -> Any:
        self.calls.append(("activation", (info.run.workflow, info.run.carrier.get("trace"))))
        return await proceed()

    async def step(self, info: StepAttemptInfo, proceed: Any) -> Any:
        self.calls.append(("step", (info.step, info.attempt, info.run.carrier.get("trace"))))
        token = audit_tag.set(f"audited {info.step}#{info.attempt}")
        try:
            return await proceed()
        finally:
            audit_tag.reset(token)

    def event(self, run: RunInfo, event: Any) -> None:
        self.events.append((run.run_id, event.seq, event.type))

    def failure(self, run: RunInfo, event: Any) -> None:
        self.failures.append((run.workflow, event.type))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    seen_in_step.clear()
    flaky_calls.clear()
    recorder = Recorder()
    add_interceptor(recorder)
    yield recorder
    remove_interceptor(recorder)


async def test_hooks_see_new_work_once(recorder: Recorder) -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(flow, 1)
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == 4

    steps = [what for kind, what in recorder.calls if kind == "step"]
    # each attempt once, though the workflow was replayed at each of its activations
    assert steps == [
        ("icpt.fetch", 1, "trace-of-icpt.flow"),
        ("icpt.fetch", 1, "trace-of-icpt.flow"),
        ("icpt.flaky", 1, "trace-of-icpt.flow"),
        ("icpt.flaky", 2, "trace-of-icpt.flow"),
        ("icpt.fetch", 1, "trace-of-icpt.child"),
    ]
    assert seen_in_step == ["audited icpt.fetch#1"] * 3  # the wrapper's context reaches the step
    starts = [what for kind, what in recorder.calls if kind == "start"]
    assert starts == ["icpt.flow", "icpt.child"]
    activations = [what for kind, what in recorder.calls if kind == "activation"]
    assert ("icpt.flow", "trace-of-icpt.flow") in activations and ("icpt.child", "trace-of-icpt.child") in activations

    # every event of both logs, each exactly once, in order
    for rid in {r for r, _, _ in recorder.events}:
        log = await storage.get_events(rid)
        told = [(seq, typ) for r, seq, typ in recorder.events if r == rid]
        assert told == [(e.seq, e.type) for e in log]
    assert Counter(recorder.events).most_common(1)[0][1] == 1
    assert recorder.failures == [("icpt.flow", "step.retrying")]
    started = (await storage.get_events(run_id, limit=1))[0]
    assert started.data["carrier"] == {"trace": "trace-of-icpt.flow"}  # recorded with the run


async def test_failures_are_told(recorder: Recorder) -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage)
    run = await rt.run_until_complete(await rt.start(broken))
    assert run.status == "failed"
    assert recorder.failures == [("icpt.broken", "workflow.failed")]


async def test_an_observer_that_fails_breaks_nothing(recorder: Recorder) -> None:
    class Exploding(Interceptor):
        def event(self, run: RunInfo, event: Any) -> None:
            raise RuntimeError("telemetry is down")

    exploding = Exploding()
    add_interceptor(exploding)
    try:
        storage = InMemoryStorageBackend()
        rt = LocalRuntime(storage, clock=VirtualClock())
        run = await rt.run_until_complete(await rt.start(child, 5))
        assert run.status == "completed" and run.result == 6
    finally:
        remove_interceptor(exploding)
    assert recorder.events  # the others were still told


async def test_without_interceptors_nothing_is_recorded_for_them() -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage)
    run_id = await rt.start(child, 1)
    assert "carrier" not in (await storage.get_events(run_id, limit=1))[0].data


def test_add_interceptor_refuses_what_is_not_one() -> None:
    with pytest.raises(TypeError, match="add_interceptor\\(\\) takes an Interceptor"):
        add_interceptor(object())  # type: ignore[arg-type]
    remove_interceptor(Interceptor())  # not registered: a no-op
