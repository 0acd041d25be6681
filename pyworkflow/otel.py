"""OpenTelemetry spans for runs, built on the interceptor hooks.

    pip install 'pyworkflow-celery[otel]'

    import pyworkflow.otel
    pyworkflow.otel.instrument()   # in every process: the app, the workers

Spans go to the global tracer provider (``opentelemetry.trace.get_tracer``), or to the one
passed to :func:`instrument`; this module never installs or replaces a provider, so set
yours up as usual (before or after ``instrument()``: a provider set later is used too).
Instrumentation scope ``pyworkflow``; attributes under ``pyworkflow.*``.

========================= ======== ====================================================
span                      kind     what it covers, its parent
========================= ======== ====================================================
``start <workflow>``      producer recording a new run (``start()``, a child, a continued
                                   run, a schedule's slot), under the caller's span (a
                                   web request's, the parent run's activation)
``activation <workflow>`` consumer one activation of the run, under its ``start`` span
``step <step>``           internal one attempt of a step's body, under the activation; a
                                   dispatched step's attempt (kind consumer) on its
                                   step worker, under the run's ``start`` span. Spans
                                   the step makes nest under it; a failed attempt
                                   records the exception and has an error status
``sleep``                 internal from ``sleep.created`` to ``sleep.completed``
``signal <name>``         internal from ``signal.waiting`` to ``signal.received`` or
                                   ``signal.timed_out`` (a signal that came first: a
                                   wait of no time)
``child <workflow>``      internal from ``child.started`` to ``child.completed`` (error
                                   status when the child did not complete)
========================= ======== ====================================================

The waits (sleep, signal, child) are under the run's ``start`` span too, so a run is one
trace whatever process moved it: the ``start`` span's context (W3C ``traceparent`` with
the global propagator) is recorded with the run as its carrier, and every later span of
the run takes its parent from there. A child run's ``start`` span is made inside the
parent's activation, so the child's trace hangs under it.

Spans are made for new work only, never on replay: the hooks see each step attempt and
each recorded event once. A wait's span is made when its end is recorded, with the time
its beginning was recorded: the activation that records the end looks that up in the log
it loaded (:attr:`~pyworkflow.interceptors.ActivationInfo.events`) and in the events it
recorded since, so the span is right whichever process recorded the beginning (nothing is kept between
activations). A wait cancelled with its run ends when ``cancel.requested`` is recorded.
A wait's end event bears the time it was recorded, or a message's posting time (a
signal, a child's end); one posted before its wait began makes a span of no time.

Celery: the run's carrier also rides in the headers of its first activation message and
of its dispatched steps' messages (see :mod:`pyworkflow.celery.runtime`); the spans take
their parents from the recorded carrier, which every activation has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context, attach, detach
    from opentelemetry.trace import (
        Link,
        Span,
        SpanKind,
        Status,
        StatusCode,
        Tracer,
        TracerProvider,
        set_span_in_context,
    )
except ImportError as exc:
    raise ImportError(
        f"pyworkflow.otel needs opentelemetry-api ({exc}); install it with: pip install 'pyworkflow-celery[otel]'"
    ) from None

from pyworkflow.events import Event, EventType
from pyworkflow.interceptors import (
    ActivationInfo,
    Interceptor,
    RunInfo,
    StartInfo,
    StepAttemptInfo,
    add_interceptor,
    remove_interceptor,
)

if TYPE_CHECKING:
    from pyworkflow.engine import Outcome

__all__ = ["OpenTelemetryInterceptor", "instrument", "uninstrument"]

T = TypeVar("T")

#: The instrumentation scope of every span.
SCOPE = "pyworkflow"

RUN_ID = "pyworkflow.run_id"
WORKFLOW = "pyworkflow.workflow"
STEP = "pyworkflow.step"
CALL_ID = "pyworkflow.call_id"
ATTEMPT = "pyworkflow.attempt"
DISPATCHED = "pyworkflow.dispatched"
IDEMPOTENCY_KEY = "pyworkflow.idempotency_key"
PARENT_RUN_ID = "pyworkflow.parent_run_id"
SCHEDULE_ID = "pyworkflow.schedule_id"
CREATED = "pyworkflow.created"
STATUS = "pyworkflow.status"
OUTCOME = "pyworkflow.outcome"
WAKE_AT = "pyworkflow.wake_at"
SIGNAL = "pyworkflow.signal"
CHILD_RUN_ID = "pyworkflow.child.run_id"
CHILD_WORKFLOW = "pyworkflow.child.workflow"

#: Outcomes of an activation that mean the run failed in it.
_FAILED = frozenset({"failed", "blocked"})
#: The events that begin or end a wait (the others cost the event hook one set test).
_WAIT_EVENTS = frozenset(
    {
        EventType.SLEEP_CREATED,
        EventType.SLEEP_COMPLETED,
        EventType.SIGNAL_WAITING,
        EventType.SIGNAL_RECEIVED,
        EventType.SIGNAL_TIMED_OUT,
        EventType.CHILD_STARTED,
        EventType.CHILD_COMPLETED,
        EventType.CANCEL_REQUESTED,
    }
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _ns(at: datetime) -> int:
    """``at`` as OpenTelemetry's time: integer nanoseconds since the epoch (naive = UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return (at - _EPOCH) // _MICROSECOND * 1000


@dataclass(slots=True)
class _Wait:
    """A wait that began: what its span will say."""

    name: str
    began: datetime
    attributes: dict[str, Any]


@dataclass
class _Waits:
    """A run's open waits as the log says, by call id; signals are matched to waits by the
    rule of the replay (``pyworkflow.history``): the oldest wait of a name takes the next
    signal of that name, a signal no wait takes is buffered for the next wait."""

    open: dict[int, _Wait] = field(default_factory=dict)
    signal_waits: dict[str, deque[int]] = field(default_factory=dict)
    buffered: dict[str, int] = field(default_factory=dict)

    def apply(self, event: Event) -> list[tuple[_Wait, str, datetime]]:
        """Fold one event; the waits it ended, each with its outcome and end time."""
        kind, data, at = event.type, event.data, event.timestamp
        if kind == EventType.SLEEP_CREATED:
            self.open[int(data["call_id"])] = _Wait(
                "sleep", at, {CALL_ID: int(data["call_id"]), WAKE_AT: str(data.get("wake_at"))}
            )
        elif kind == EventType.SIGNAL_WAITING:
            call_id, name = int(data["call_id"]), str(data["name"])
            wait = _Wait(f"signal {name}", at, {CALL_ID: call_id, SIGNAL: name})
            if self.buffered.get(name):
                self.buffered[name] -= 1  # the signal came first: the wait took it at once
                return [(wait, "received", at)]
            self.open[call_id] = wait
            self.signal_waits.setdefault(name, deque()).append(call_id)
        elif kind == EventType.CHILD_STARTED:
            workflow = str(data["workflow"])
            self.open[int(data["call_id"])] = _Wait(
                f"child {workflow}",
                at,
                {CALL_ID: int(data["call_id"]), CHILD_WORKFLOW: workflow, CHILD_RUN_ID: str(data["run_id"])},
            )
        elif kind == EventType.SLEEP_COMPLETED:
            return self._end(int(data["call_id"]), "completed", at)
        elif kind == EventType.CHILD_COMPLETED:
            return self._end(int(data["call_id"]), str(data.get("status")), at)
        elif kind == EventType.SIGNAL_RECEIVED:
            name = str(data["name"])
            waits = self.signal_waits.get(name)
            if waits:
                return self._end(waits.popleft(), "received", at)
            self.buffered[name] = self.buffered.get(name, 0) + 1
        elif kind == EventType.SIGNAL_TIMED_OUT:
            call_id = int(data["call_id"])
            ended = self._end(call_id, "timed_out", at)
            for waits in self.signal_waits.values():
                if call_id in waits:
                    waits.remove(call_id)
            return ended
        elif kind == EventType.CANCEL_REQUESTED:
            ended = [(wait, "cancelled", at) for wait in self.open.values()]
            self.open.clear()
            self.signal_waits.clear()
            return ended
        return []

    def _end(self, call_id: int, outcome: str, at: datetime) -> list[tuple[_Wait, str, datetime]]:
        wait = self.open.pop(call_id, None)
        return [] if wait is None else [(wait, outcome, at)]

    @classmethod
    def of(cls, events: Iterable[Event]) -> _Waits:
        waits = cls()
        for event in events:
            if event.type in _WAIT_EVENTS:
                waits.apply(event)
        return waits


@dataclass
class _Activation:
    """One activation: the log it loaded, and the open waits, made when first needed."""

    run_id: str
    loaded: Iterable[Event]
    waits: _Waits | None = None


_ACTIVATION: ContextVar[_Activation | None] = ContextVar("pyworkflow_otel_activation", default=None)


class OpenTelemetryInterceptor(Interceptor):
    """Spans for run starts, activations, step attempts, sleeps, signal waits and child
    runs (see :mod:`pyworkflow.otel`), to ``tracer_provider`` or the global provider."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from pyworkflow import __version__

        self.tracer: Tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)

    def _run_context(self, run: RunInfo) -> Context | None:
        """The context the run's start recorded (``None``, the current one, without)."""
        return propagate.extract(run.carrier) if run.carrier else None

    async def start(self, info: StartInfo, proceed: Callable[[], Awaitable[T]]) -> T:
        attributes: dict[str, Any] = {RUN_ID: info.run_id, WORKFLOW: info.workflow}
        if info.idempotency_key is not None:
            attributes[IDEMPOTENCY_KEY] = info.idempotency_key
        if info.parent_run_id is not None:
            attributes[PARENT_RUN_ID] = info.parent_run_id
        if info.schedule_id is not None:
            attributes[SCHEDULE_ID] = info.schedule_id
        span = self.tracer.start_span(f"start {info.workflow}", kind=SpanKind.PRODUCER, attributes=attributes)
        token = attach(set_span_in_context(span))
        try:
            propagate.inject(info.carrier)
            result = await proceed()
            if isinstance(result, tuple) and len(result) == 2 and result[1] is False:
                span.set_attribute(CREATED, False)  # the idempotency key named a run already
            return result
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            detach(token)
            span.end()

    async def activation(self, info: ActivationInfo, proceed: Callable[[], Awaitable[Outcome]]) -> Outcome:
        run = info.run
        attributes: dict[str, Any] = {RUN_ID: run.run_id, WORKFLOW: run.workflow, STATUS: info.status}
        if info.wake_at is not None:
            attributes[WAKE_AT] = info.wake_at.isoformat()
        parent = self._run_context(run)
        links: list[Link] = []
        if parent is not None:
            # what runs this activation (a Celery task's span of another instrumentation)
            current = trace.get_current_span().get_span_context()
            if current.is_valid and current.trace_id != trace.get_current_span(parent).get_span_context().trace_id:
                links.append(Link(current))
        span = self.tracer.start_span(
            f"activation {run.workflow}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        token = attach(set_span_in_context(span, parent))  # with the carrier's baggage, if any
        mine = _ACTIVATION.set(_Activation(run.run_id, info.events))
        try:
            outcome = await proceed()
            span.set_attribute(OUTCOME, outcome.status)
            if outcome.status in _FAILED:
                span.set_status(Status(StatusCode.ERROR, f"the run is {outcome.status}"))
            return outcome
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            _ACTIVATION.reset(mine)
            detach(token)
            span.end()

    async def step(self, info: StepAttemptInfo, proceed: Callable[[], Awaitable[Any]]) -> Any:
        run = info.run
        attributes: dict[str, Any] = {
            RUN_ID: run.run_id,
            WORKFLOW: run.workflow,
            STEP: info.step,
            CALL_ID: info.call_id,
            ATTEMPT: info.attempt,
            DISPATCHED: info.dispatched,
        }
        if info.dispatched:  # on a step worker: no activation around it
            context, kind = self._run_context(run), SpanKind.CONSUMER
        else:
            context, kind = None, SpanKind.INTERNAL
        span = self.tracer.start_span(f"step {info.step}", context=context, kind=kind, attributes=attributes)
        token = attach(set_span_in_context(span, context))  # the step's own spans nest under this one
        try:
            return await proceed()
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            detach(token)
            span.end()

    def event(self, run: RunInfo, event: Event) -> None:
        if event.type not in _WAIT_EVENTS:
            return
        activation = _ACTIVATION.get()
        if activation is None or activation.run_id != run.run_id:
            return  # not recorded by an activation (none is: a wait begins and ends in one)
        waits = activation.waits
        if waits is None:
            waits = activation.waits = _Waits.of(activation.loaded)
        ended = waits.apply(event)
        if ended:
            parent = self._run_context(run)
            for wait, outcome, at in ended:
                self._wait_span(run, parent, wait, outcome, at)

    def _wait_span(self, run: RunInfo, parent: Context | None, wait: _Wait, outcome: str, at: datetime) -> None:
        attributes = {RUN_ID: run.run_id, WORKFLOW: run.workflow, OUTCOME: outcome, **wait.attributes}
        began = _ns(wait.began)
        span = self.tracer.start_span(
            wait.name, context=parent, attributes=attributes, start_time=began, record_exception=False
        )
        if CHILD_RUN_ID in wait.attributes and outcome not in ("completed", "cancelled"):
            span.set_status(Status(StatusCode.ERROR, f"the child run is {outcome}"))
        # A message's event bears the time it was posted, which can precede the wait's
        # beginning (a signal sent while the activation that began the wait ran): no wait.
        span.end(end_time=max(began, _ns(at)))


def _failed(span: Span, exc: Exception) -> None:
    """What ``start_as_current_span`` does for an exception (spelt out here: its context
    manager layers cost more than the rest of a span). A ``BaseException`` (the task
    cancelled, the worker stopping) ends the span without calling it an error."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


_INSTRUMENTED: OpenTelemetryInterceptor | None = None


def instrument(tracer_provider: TracerProvider | None = None) -> OpenTelemetryInterceptor:
    """Register an :class:`OpenTelemetryInterceptor` in this process (replacing the one an
    earlier call registered) and return it. Spans go to ``tracer_provider``, or to the
    global provider, which this never sets."""
    global _INSTRUMENTED
    uninstrument()
    _INSTRUMENTED = OpenTelemetryInterceptor(tracer_provider)
    add_interceptor(_INSTRUMENTED)
    return _INSTRUMENTED


def uninstrument() -> None:
    """Unregister what :func:`instrument` registered (a no-op when nothing is)."""
    global _INSTRUMENTED
    if _INSTRUMENTED is not None:
        remove_interceptor(_INSTRUMENTED)
        _INSTRUMENTED = None
