"""Interceptors: observe and wrap what the engine does for the first time.

    class Audit(Interceptor):
        async def step(self, info, proceed):
            started = time.monotonic()
            try:
                return await proceed()
            finally:
                print(info.step, info.attempt, time.monotonic() - started)

    pyworkflow.add_interceptor(Audit())

An interceptor subclasses :class:`Interceptor` and overrides what it needs:

* :meth:`~Interceptor.start` wraps the recording of a new run (``start()``, a child, a
  continued run, a schedule's slot); it may put text into ``info.carrier``, which is
  recorded with the run (``workflow.started``) and handed to every later hook of that
  run, in any process: the place for trace context.
* :meth:`~Interceptor.activation` wraps each activation that holds the run's lease;
* :meth:`~Interceptor.step` wraps each attempt of a step's body, inline or dispatched,
  in the task that runs it (a context variable set there is seen by the step);
* :meth:`~Interceptor.event` sees each event once, right after it is recorded, and
  :meth:`~Interceptor.failure` each failure among them (a step attempt that failed, a run
  that failed or was blocked).

They see new work only: replaying a run calls no hook for what its log already holds,
because a replayed call is not run again and a recorded event is not recorded again. Hooks
run in registration order, the first registered outermost. An exception an observing hook
(``event``, ``failure``) raises is logged and swallowed: telemetry never breaks a run; a
wrapping hook that raises instead of calling ``proceed`` fails what it wraps, as the code
it wraps would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pyworkflow import observability

if TYPE_CHECKING:
    from pyworkflow.engine import Outcome
    from pyworkflow.events import Event

T = TypeVar("T")

#: Event types :meth:`Interceptor.failure` is told of.
FAILURE_EVENTS = frozenset({"step.retrying", "step.failed", "workflow.failed", "workflow.blocked"})


@dataclass
class StartInfo:
    """A run about to be recorded. ``carrier`` (text keys and values) is recorded with it."""

    run_id: str
    workflow: str
    idempotency_key: str | None
    parent_run_id: str | None = None
    schedule_id: str | None = None
    carrier: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """The run a hook is about, and the carrier its start recorded."""

    run_id: str
    workflow: str
    carrier: dict[str, str]


@dataclass(frozen=True)
class ActivationInfo:
    """An activation that holds the run's lease: the run's status before it, the time it
    was due (its timer's wake time; for a run woken by a message, when that message made
    it due), when the activation began, and ``inbox``: how many messages it found waiting
    (``0``: its timer woke it, or it is the run's first activation)."""

    run: RunInfo
    status: str
    wake_at: datetime | None
    began_at: datetime
    inbox: int = 0
    #: The run's log as this activation loaded it (read it, never change it): what was
    #: recorded before; the events the activation records are told to ``event`` after it.
    events: Sequence[Event] = ()


@dataclass(frozen=True)
class StepAttemptInfo:
    """One attempt of a step's body (``dispatched``: on a step worker)."""

    run: RunInfo
    step: str
    call_id: int
    attempt: int
    dispatched: bool


class Interceptor:
    """Override what you need; each default does nothing but go on."""

    async def start(self, info: StartInfo, proceed: Callable[[], Awaitable[T]]) -> T:
        return await proceed()

    async def activation(self, info: ActivationInfo, proceed: Callable[[], Awaitable[Outcome]]) -> Outcome:
        return await proceed()

    async def step(self, info: StepAttemptInfo, proceed: Callable[[], Awaitable[Any]]) -> Any:
        return await proceed()

    def event(self, run: RunInfo, event: Event) -> None:
        """An event of ``run``, just recorded."""

    def failure(self, run: RunInfo, event: Event) -> None:
        """A ``step.retrying``, ``step.failed``, ``workflow.failed`` or ``workflow.blocked``
        event of ``run``, just recorded."""


#: The registered interceptors, first outermost; empty means every hook is skipped.
CHAIN: tuple[Interceptor, ...] = ()


def add_interceptor(interceptor: Interceptor) -> None:
    """Register ``interceptor`` for this process (once; again is a no-op)."""
    global CHAIN
    if not isinstance(interceptor, Interceptor):
        raise TypeError(f"add_interceptor() takes an Interceptor (a subclass instance), got {interceptor!r}")
    if interceptor not in CHAIN:
        CHAIN = (*CHAIN, interceptor)


def remove_interceptor(interceptor: Interceptor) -> None:
    """Unregister ``interceptor`` (a no-op when it is not registered)."""
    global CHAIN
    CHAIN = tuple(i for i in CHAIN if i is not interceptor)


def _wrapped(hook: str, info: Any, proceed: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    call = proceed
    for interceptor in reversed(CHAIN):
        method = getattr(interceptor, hook)

        def outer(method: Any = method, inner: Callable[[], Awaitable[T]] = call) -> Awaitable[T]:
            return method(info, inner)  # type: ignore[no-any-return]

        call = outer
    return call


async def around_start(info: StartInfo, proceed: Callable[[], Awaitable[T]]) -> T:
    return await _wrapped("start", info, proceed)()


async def around_activation(info: ActivationInfo, proceed: Callable[[], Awaitable[Outcome]]) -> Outcome:
    return await _wrapped("activation", info, proceed)()


async def around_step(info: StepAttemptInfo, proceed: Callable[[], Awaitable[Any]]) -> Any:
    return await _wrapped("step", info, proceed)()


def recorded(run: RunInfo, events: Sequence[Event]) -> None:
    """Tell every interceptor of events just recorded."""
    for event in events:
        failure = event.type in FAILURE_EVENTS
        for interceptor in CHAIN:
            try:
                interceptor.event(run, event)
                if failure:
                    interceptor.failure(run, event)
            except Exception as exc:  # noqa: BLE001 - an observer must not break a run
                observability.engine_log(
                    "interceptor_failed", level="error", interceptor=repr(interceptor), error=repr(exc)
                )


#: Carriers of runs this process just recorded, until the runtime sends their first
#: activation (the Celery runtime passes them as message headers); bounded, for runs
#: whose runtime sends nothing (the in-process one).
_NEW_CARRIERS: dict[str, dict[str, str]] = {}
_NEW_CARRIERS_KEPT = 1024


def note_new_run(run_id: str, carrier: dict[str, str]) -> None:
    """A run with ``carrier`` was just recorded here."""
    if len(_NEW_CARRIERS) >= _NEW_CARRIERS_KEPT:
        del _NEW_CARRIERS[next(iter(_NEW_CARRIERS))]
    _NEW_CARRIERS[run_id] = carrier


def new_run_carrier(run_id: str) -> dict[str, str] | None:
    """The carrier of ``run_id`` when this process just recorded it (once), else ``None``."""
    return _NEW_CARRIERS.pop(run_id, None)


def carrier_of(data: Any) -> dict[str, str]:
    """The carrier a ``workflow.started`` event's data holds (``{}`` when none)."""
    carrier = data.get("carrier") if isinstance(data, dict) else None
    return dict(carrier) if isinstance(carrier, dict) else {}
