"""OpenTelemetry on a real Celery worker, on each real broker: a run started under a
request's span is one trace through its activations, its dispatched step (run by the
step task, parented to the run's start from the recorded carrier) and its child run; the
run's carrier rides in the headers of its first activation message and of the step's.
With a prefork worker subprocess, the spans of every process make that one trace, and a
sleep's span has the times its log recorded."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from celery.signals import before_task_publish
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import pyworkflow.celery.factory as factory
import pyworkflow.otel
from pyworkflow import config, run_child, start, step, wait_for_result, workflow
from pyworkflow.celery.settings import ACTIVATE_TASK, STEP_TASK
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend
from tests.celery import otel_workflows
from tests.celery.conftest import Subprocess, wait_until


@step(name="otel_worker.double", queue="pyworkflow.steps")
async def double(x: int) -> int:
    return 2 * x


@step(name="otel_worker.inc")
async def inc(x: int) -> int:
    return x + 1


@workflow(name="otel_worker.child")
async def traced_child(x: int) -> int:
    return await inc(x)


@workflow(name="otel_worker.parent")
async def traced_parent(x: int) -> int:
    doubled = await double(x)  # dispatched to the step queue
    return await run_child(traced_child, doubled)


@pytest.fixture
def in_process(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


class Traced(NamedTuple):
    exporter: InMemorySpanExporter
    web: trace.Tracer  # the application's own spans (a web request's)


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Spans of this test: a provider of its own, passed to instrument()."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pyworkflow.otel.instrument(provider)
    yield Traced(exporter, provider.get_tracer("web"))
    pyworkflow.otel.uninstrument()
    provider.shutdown()


@pytest.fixture
def published() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        sent.append((str(sender), dict(headers or {})))

    before_task_publish.connect(record, weak=False)
    yield sent
    before_task_publish.disconnect(record)


@pytest.mark.usefixtures("in_process")
def test_a_run_with_a_dispatched_step_is_one_trace(
    storage: StorageBackend, traced: Traced, published: list[tuple[str, dict[str, Any]]]
) -> None:
    with traced.web.start_as_current_span("POST /double") as request:
        run_id = start(traced_parent, 5)
    assert wait_for_result(run_id, timeout=60) == 11

    def spans() -> list[ReadableSpan]:
        return list(traced.exporter.get_finished_spans())

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in spans() if s.name == name]

    # the last activations' spans end just after the run's end is stored
    wait_until(
        lambda: any(
            s.attributes and s.attributes.get("pyworkflow.outcome") == "completed"
            for s in named("activation otel_worker.parent")
        ),
        30,
        "the parent's last activation span",
    )
    wait_until(lambda: len(named("child otel_worker.child")) == 1, 30, "the child's wait span")

    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans()} == {trace_id}
    by_id = {s.context.span_id: s for s in spans()}
    start_span = next(s for s in named("start otel_worker.parent"))
    assert start_span.parent is not None and start_span.parent.span_id == request.get_span_context().span_id

    (dispatched,) = named("step otel_worker.double")
    assert dispatched.kind == SpanKind.CONSUMER
    assert dispatched.attributes is not None and dispatched.attributes["pyworkflow.dispatched"] is True
    assert dispatched.attributes["pyworkflow.run_id"] == run_id and dispatched.attributes["pyworkflow.attempt"] == 1
    assert dispatched.parent is not None and dispatched.parent.span_id == start_span.context.span_id

    activations = named("activation otel_worker.parent")
    assert len(activations) >= 2  # before and after the dispatched step
    assert all(a.parent is not None and a.parent.span_id == start_span.context.span_id for a in activations)

    (child_start,) = named("start otel_worker.child")
    assert child_start.parent is not None and by_id[child_start.parent.span_id].name == "activation otel_worker.parent"
    (child_step,) = named("step otel_worker.inc")
    assert child_step.parent is not None and by_id[child_step.parent.span_id].name == "activation otel_worker.child"

    # the run's carrier in the message headers: its first activation and its dispatched
    # step carry the parent's start span, the child's first activation the child's
    def parent_in(headers: dict[str, Any]) -> int | None:
        context = trace.get_current_span(propagate.extract(headers)).get_span_context()
        return context.span_id if context.is_valid and context.trace_id == trace_id else None

    sent = [(task, parent_in(h), h.get("shadow")) for task, h in published]
    assert (ACTIVATE_TASK, start_span.context.span_id, "otel_worker.parent") in sent
    assert (STEP_TASK, start_span.context.span_id, "otel_worker.double") in sent
    # a child's, sent by the parent's worker, named after the child's workflow
    assert (ACTIVATE_TASK, child_start.context.span_id, "otel_worker.child") in sent
    assert sum(parent is not None for _, parent, _ in sent) == 3  # the wake-ups carry none


@pytest.mark.usefixtures("in_process")
def test_no_headers_without_interceptors(storage: StorageBackend, published: list[tuple[str, dict[str, Any]]]) -> None:
    run_id = start(traced_parent, 1)
    assert wait_for_result(run_id, timeout=60) == 3
    assert published and not any("traceparent" in h for _, h in published)


def test_the_spans_of_every_worker_process_make_one_trace(
    crash_app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    path = tmp_path / "spans.jsonl"
    provider = otel_workflows.instrument(path)  # this process: start() and the request
    try:
        spawn("worker", PYWORKFLOW_IMPORTS=otel_workflows.IMPORTS, PYWORKFLOW_TEST_SPANS=str(path))
        spawn("beat")
        with provider.get_tracer("web").start_as_current_span("POST /traced") as request:
            run_id = start(otel_workflows.traced_flow, 1)
        assert wait_for_result(run_id, timeout=60) == 20
    finally:
        pyworkflow.otel.uninstrument()
        provider.shutdown()

    def spans() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def named(name: str) -> list[dict[str, Any]]:
        return [s for s in spans() if s["name"] == name]

    wait_until(
        lambda: any(
            s["attributes"].get("pyworkflow.outcome") == "completed" for s in named("activation otel_proc.flow")
        ),
        30,
        "the last activation's span",
    )
    every = spans()
    assert {s["trace_id"] for s in every} == {request.get_span_context().trace_id}
    (start_span,) = named("start otel_proc.flow")
    assert start_span["parent_id"] == request.get_span_context().span_id and start_span["pid"] == os.getpid()
    activations = named("activation otel_proc.flow")
    assert len(activations) >= 3  # the first, after the sleep, after the dispatched step
    assert all(a["parent_id"] == start_span["span_id"] and a["pid"] != os.getpid() for a in activations)
    (inline,) = named("step otel_proc.first")
    assert inline["parent_id"] in {a["span_id"] for a in activations}
    (dispatched,) = named("step otel_proc.remote")
    assert dispatched["parent_id"] == start_span["span_id"] and dispatched["attributes"]["pyworkflow.dispatched"]

    log = PROCESS_LOOP.run(config.get_storage().get_events(run_id))
    created = next(e for e in log if e.type == "sleep.created")
    completed = next(e for e in log if e.type == "sleep.completed")
    (snooze,) = named("sleep")
    assert snooze["parent_id"] == start_span["span_id"]
    assert (snooze["start"], snooze["end"]) == (
        pyworkflow.otel._ns(created.timestamp),
        pyworkflow.otel._ns(completed.timestamp),
    )
