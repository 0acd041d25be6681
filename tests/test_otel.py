"""OpenTelemetry spans: one trace per run (under the span that started it, children under
the parent's activation), a span per step attempt that the step's own spans nest under,
waits with their recorded times, nothing again on replay, failures as errors, and the
global tracer provider used, never set."""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import pyworkflow.interceptors
import pyworkflow.otel
from pyworkflow import (
    FatalError,
    RetryableError,
    cancel_async,
    run_child,
    send_signal_async,
    sleep,
    step,
    wait_for_signal,
    workflow,
)
from pyworkflow.engine import create_run
from pyworkflow.registry import definition_of
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

user_tracer: list[trace.Tracer] = []  # the tracer the steps' own code uses, set per test
flaky_calls: list[int] = []


@step(name="otel.fetch")
async def fetch(x: int) -> int:
    with user_tracer[0].start_as_current_span("user.work"):
        return x + 1


@step(name="otel.flaky", max_retries=2, retry_delay="1s")
async def flaky() -> str:
    flaky_calls.append(1)
    if len(flaky_calls) == 1:
        raise RetryableError("not yet")
    return "ok"


@step(name="otel.broken")
async def broken_step() -> None:
    raise FatalError("the card was declined")


@workflow(name="otel.child")
async def child(x: int) -> int:
    return await fetch(x)


@workflow(name="otel.flow")
async def flow(x: int) -> int:
    a = await fetch(x)
    await sleep("1h")
    b = await fetch(a)
    approved = await wait_for_signal("approve")
    assert approved is True
    await flaky()
    return await run_child(child, b)


@workflow(name="otel.broken")
async def broken() -> None:
    await broken_step()


@workflow(name="otel.waits")
async def waits() -> list[Any]:
    await sleep("1m")
    early = await wait_for_signal("early")  # sent during the sleep: taken at once
    late = await wait_for_signal("late", timeout="10m", default="none came")
    return [early, late]


@workflow(name="otel.sleeper")
async def sleeper() -> None:
    await sleep("1d")


@step(name="otel.tenant")
async def tenant_of_caller() -> str | None:
    value = baggage.get_baggage("tenant")
    return None if value is None else str(value)


@workflow(name="otel.tenant")
async def tenant_flow() -> list[str | None]:
    before = await tenant_of_caller()
    await sleep("1h")  # the next activation runs in another context, as on another worker
    return [before, await tenant_of_caller()]


@workflow(name="otel.plain")
async def plain() -> int:
    return await fetch(1)


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans {name!r}: {[s.name for s in self.all]}"
        return found[0]

    def parent_of(self, span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        parents = [s for s in self.all if s.context.span_id == span.parent.span_id]
        assert len(parents) == 1, f"the parent of {span.name} is not among the spans"
        return parents[0]


def attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


@pytest.fixture
def spans() -> Iterator[Spans]:
    flaky_calls.clear()
    recorded = Spans()
    user_tracer[:] = [recorded.provider.get_tracer("user")]
    pyworkflow.otel.instrument(recorded.provider)
    yield recorded
    pyworkflow.otel.uninstrument()
    recorded.provider.shutdown()


async def test_a_run_is_one_trace_under_the_request_that_started_it(spans: Spans) -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock()
    rt = LocalRuntime(storage, clock=clock)
    request_tracer = spans.provider.get_tracer("web")
    with request_tracer.start_as_current_span("POST /orders") as request:
        run_id = await rt.start(flow, 1)
    run = await rt.run_until_complete(run_id)
    assert run.status == "suspended"  # waiting for the signal
    await send_signal_async(run_id, "approve", True, storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == 4

    every = spans.all
    assert {s.context.trace_id for s in every} == {request.get_span_context().trace_id}

    start = spans.one("start otel.flow")
    assert start.kind == SpanKind.PRODUCER and spans.parent_of(start).name == "POST /orders"
    assert attr(start, "pyworkflow.run_id") == run_id and attr(start, "pyworkflow.workflow") == "otel.flow"
    activations = spans.named("activation otel.flow")
    assert len(activations) >= 4  # first, after the sleep, after the signal, after the backoff, after the child
    assert all(spans.parent_of(a) is start for a in activations)
    assert all(a.kind == SpanKind.CONSUMER and attr(a, "pyworkflow.run_id") == run_id for a in activations)
    assert activations[-1].attributes is not None and activations[-1].attributes["pyworkflow.outcome"] == "completed"

    # one span per step attempt, though each activation replayed the steps before it
    steps = [s for s in every if s.name.startswith("step ")]
    attempts = Counter(
        (attr(s, "pyworkflow.run_id"), attr(s, "pyworkflow.call_id"), attr(s, "pyworkflow.attempt")) for s in steps
    )
    assert set(attempts.values()) == {1}
    assert sorted((s.name, attr(s, "pyworkflow.attempt")) for s in steps) == [
        ("step otel.fetch", 1),
        ("step otel.fetch", 1),
        ("step otel.fetch", 1),
        ("step otel.flaky", 1),
        ("step otel.flaky", 2),
    ]
    for s in steps:
        assert spans.parent_of(s).name.startswith("activation ")
        assert attr(s, "pyworkflow.dispatched") is False and attr(s, "pyworkflow.step") == s.name[5:]
    # the step's own spans nest under its attempt
    for work in spans.named("user.work"):
        assert spans.parent_of(work).name == "step otel.fetch"
    assert len(spans.named("user.work")) == 3

    first, second = sorted(spans.named("step otel.flaky"), key=lambda s: attr(s, "pyworkflow.attempt"))
    assert first.status.status_code == StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert first.events[0].attributes is not None
    assert first.events[0].attributes["exception.type"].endswith("RetryableError")
    assert second.status.status_code == StatusCode.UNSET

    # the waits: under the run's start span, with the times the log recorded
    snooze = spans.one("sleep")
    assert spans.parent_of(snooze) is start
    assert snooze.end_time is not None and snooze.start_time is not None
    assert snooze.end_time - snooze.start_time >= timedelta(hours=1) // timedelta(microseconds=1) * 1000
    assert attr(snooze, "pyworkflow.outcome") == "completed"
    signal = spans.one("signal approve")
    assert attr(signal, "pyworkflow.signal") == "approve" and attr(signal, "pyworkflow.outcome") == "received"
    assert spans.parent_of(signal).name == "start otel.flow"
    log = await storage.get_events(run_id)
    waiting = next(e for e in log if e.type == "signal.waiting")
    received = next(e for e in log if e.type == "signal.received")
    assert signal.start_time == pyworkflow.otel._ns(waiting.timestamp)
    # the signal's event bears its posting time: a real one, behind the virtual clock
    assert signal.end_time == max(signal.start_time, pyworkflow.otel._ns(received.timestamp))

    # the child: its start under the parent's activation, its run in the same trace
    child_start = spans.one("start otel.child")
    assert spans.parent_of(child_start).name == "activation otel.flow"
    assert attr(child_start, "pyworkflow.parent_run_id") == run_id
    child_run_id = attr(child_start, "pyworkflow.run_id")
    child_activations = spans.named("activation otel.child")
    assert child_activations and all(spans.parent_of(a) is child_start for a in child_activations)
    child_steps = [s for s in steps if attr(s, "pyworkflow.run_id") == child_run_id]
    assert len(child_steps) == 1 and spans.parent_of(child_steps[0]).name == "activation otel.child"
    waited = spans.one("child otel.child")
    assert spans.parent_of(waited).name == "start otel.flow"
    assert attr(waited, "pyworkflow.child.run_id") == child_run_id and attr(waited, "pyworkflow.outcome") == "completed"

    # nothing more when the finished run is activated again, or replayed
    count = len(spans.all)
    await rt.resume(run_id)
    await rt.run_until_complete(run_id)
    assert len(spans.all) == count


async def test_a_failed_step_is_an_error_span_and_its_run_an_error_activation(spans: Spans) -> None:
    rt = LocalRuntime(InMemoryStorageBackend())
    run = await rt.run_until_complete(await rt.start(broken))
    assert run.status == "failed"
    failed = spans.one("step otel.broken")
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description is not None and "the card was declined" in failed.status.description
    exception = failed.events[0]
    assert exception.name == "exception" and exception.attributes is not None
    assert exception.attributes["exception.message"] == "the card was declined"
    activation = spans.one("activation otel.broken")
    assert activation.status.status_code == StatusCode.ERROR
    assert attr(activation, "pyworkflow.outcome") == "failed"


async def test_signal_waits_buffered_and_timed_out(spans: Spans) -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(waits)
    await send_signal_async(run_id, "early", "e", storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == ["e", "none came"]
    early, late = spans.one("signal early"), spans.one("signal late")
    assert attr(early, "pyworkflow.outcome") == "received" and early.start_time == early.end_time
    assert attr(late, "pyworkflow.outcome") == "timed_out"
    assert late.end_time is not None and late.start_time is not None
    assert late.end_time - late.start_time >= 600 * 10**9


async def test_a_wait_cancelled_with_its_run_ends_there(spans: Spans) -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage, clock=VirtualClock())
    run_id = await rt.start(sleeper)  # asleep: a signal sent now is buffered in the log
    await send_signal_async(run_id, "ignored", storage=storage)
    await rt.resume(run_id)  # moves the signal into the log; still asleep
    assert spans.named("signal ignored") == []  # no wait took it
    await cancel_async(run_id, storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.status == "cancelled"
    snooze = spans.one("sleep")
    assert attr(snooze, "pyworkflow.outcome") == "cancelled"


async def test_a_wait_begun_in_another_process_takes_its_start_from_the_log(spans: Spans) -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock()
    rt = LocalRuntime(storage, clock=clock)
    run, _ = await create_run(storage, definition_of(sleeper), (), {}, clock=clock)  # traced: a carrier
    pyworkflow.otel.uninstrument()  # the worker that runs its first activation has no telemetry
    assert (await rt.resume(run.run_id)).status == "suspended"
    assert not any(isinstance(i, pyworkflow.otel.OpenTelemetryInterceptor) for i in pyworkflow.interceptors.CHAIN)
    pyworkflow.otel.instrument(spans.provider)  # the one that wakes it has: a new interceptor
    assert (await rt.run_until_complete(run.run_id)).status == "completed"
    snooze = spans.one("sleep")
    created = next(e for e in await storage.get_events(run.run_id) if e.type == "sleep.created")
    assert snooze.start_time == pyworkflow.otel._ns(created.timestamp)
    assert spans.parent_of(snooze) is spans.one("start otel.sleeper")
    assert len(spans.named("activation otel.sleeper")) == 1


async def test_a_run_recorded_without_trace_context_has_its_waits_under_the_activation(spans: Spans) -> None:
    storage = InMemoryStorageBackend()
    rt = LocalRuntime(storage, clock=VirtualClock())
    pyworkflow.otel.uninstrument()
    run_id = await rt.start(sleeper)
    assert (await storage.get_events(run_id, limit=1))[0].data.get("carrier") is None
    pyworkflow.otel.instrument(spans.provider)
    assert (await rt.run_until_complete(run_id)).status == "completed"
    assert spans.parent_of(spans.one("sleep")) is spans.one("activation otel.sleeper")


async def test_the_callers_baggage_reaches_the_steps_of_every_activation(spans: Spans) -> None:
    rt = LocalRuntime(InMemoryStorageBackend(), clock=VirtualClock())
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        run_id = await rt.start(tenant_flow)
    finally:
        context.detach(token)
    run = await rt.run_until_complete(run_id)
    assert run.result == ["acme", "acme"]


@pytest.fixture
def global_provider() -> Iterator[None]:
    """The global tracer provider as a fresh process has it (none set), restored after."""
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    yield
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
    pyworkflow.otel.uninstrument()


async def test_instrument_uses_the_global_provider_and_never_sets_one(global_provider: None) -> None:
    interceptor = pyworkflow.otel.instrument()
    assert interceptor in pyworkflow.interceptors.CHAIN
    assert trace._TRACER_PROVIDER is None  # nothing installed
    recorded = Spans()
    user_tracer[:] = [recorded.provider.get_tracer("user")]
    trace.set_tracer_provider(recorded.provider)  # the application's own, set after instrument()
    rt = LocalRuntime(InMemoryStorageBackend())
    run = await rt.run_until_complete(await rt.start(plain))
    assert run.status == "completed"
    assert trace.get_tracer_provider() is recorded.provider
    assert {s.name for s in recorded.all} == {
        "start otel.plain",
        "activation otel.plain",
        "step otel.fetch",
        "user.work",
    }
    assert {s.instrumentation_scope.name for s in recorded.all if s.name != "user.work"} == {"pyworkflow"}
    recorded.provider.shutdown()


async def test_instrument_with_a_provider_leaves_the_global_one_alone(global_provider: None) -> None:
    before = trace.get_tracer_provider()
    recorded = Spans()
    user_tracer[:] = [recorded.provider.get_tracer("user")]
    pyworkflow.otel.instrument(recorded.provider)
    pyworkflow.otel.instrument(recorded.provider)  # again: replaces, never doubles
    assert sum(isinstance(i, pyworkflow.otel.OpenTelemetryInterceptor) for i in pyworkflow.interceptors.CHAIN) == 1
    rt = LocalRuntime(InMemoryStorageBackend())
    await rt.run_until_complete(await rt.start(plain))
    assert trace.get_tracer_provider() is before and trace._TRACER_PROVIDER is None
    assert len(recorded.named("step otel.fetch")) == 1
    pyworkflow.otel.uninstrument()
    assert not any(isinstance(i, pyworkflow.otel.OpenTelemetryInterceptor) for i in pyworkflow.interceptors.CHAIN)
    recorded.provider.shutdown()


def test_without_opentelemetry_the_import_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # what an import finds when it is missing
    monkeypatch.delitem(sys.modules, "pyworkflow.otel")
    with pytest.raises(ImportError) as raised:
        importlib.import_module("pyworkflow.otel")
    assert str(raised.value) == (
        "pyworkflow.otel needs opentelemetry-api (import of opentelemetry halted; None in sys.modules); "
        "install it with: pip install 'pyworkflow-celery[otel]'"
    )
