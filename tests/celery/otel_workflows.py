"""A traced workflow for worker subprocesses: importing this module with
``PYWORKFLOW_TEST_SPANS`` set instruments the process (as the README tells users to do
in a module of ``PYWORKFLOW_IMPORTS``) with a provider that appends each finished span
as a JSON line to that file, so the test can read the spans of every process."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import pyworkflow.otel
from pyworkflow import sleep, step, workflow

IMPORTS = "tests.celery_workflows,tests.celery.otel_workflows"


class JsonLines(SpanExporter):
    """Each span as one line appended to ``path`` (one write: whole lines from every process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            assert span.context is not None
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": span.context.trace_id,
                        "span_id": span.context.span_id,
                        "parent_id": None if span.parent is None else span.parent.span_id,
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                        "pid": os.getpid(),
                    }
                )
            )
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(f"{line}\n" for line in lines))
        return SpanExportResult.SUCCESS


def instrument(path: Path) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLines(path)))
    pyworkflow.otel.instrument(provider)
    return provider


if os.environ.get("PYWORKFLOW_TEST_SPANS"):
    instrument(Path(os.environ["PYWORKFLOW_TEST_SPANS"]))


@step(name="otel_proc.first")
async def first(x: int) -> int:
    return x + 1


@step(name="otel_proc.remote", queue="pyworkflow.steps")
async def remote(x: int) -> int:
    return x * 10


@workflow(name="otel_proc.flow")
async def traced_flow(x: int) -> int:
    a = await first(x)
    await sleep(0.5)
    return await remote(a)
