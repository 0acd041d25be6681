"""Dispatched steps: a step declared with ``queue=...`` runs as its own task.

The activation records ``step.dispatched`` and suspends; a step worker runs
:func:`run_dispatched_step`. The worker never waits on the run's lease: it reads the
log (no lease needed) to know which attempt it runs, then posts ``step.started`` and the
outcome to the run's inbox, each under an idempotency key of run, call and attempt, so a
redelivered task records nothing twice. Posting makes the run due; the next activation
moves the messages into the log through the replay state machine, which drops an outcome
for an attempt already settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyworkflow import interceptors, observability
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.errors import RunFinishedError, RunNotFoundError
from pyworkflow.events import Event, EventType
from pyworkflow.history import SETTLED, STEP_MESSAGE, CallKind, CallState, fold
from pyworkflow.registry import get_step
from pyworkflow.replay import (
    StepInfo,
    crashed_error,
    describe_error,
    execute_step,
    failure_event,
    user_base_exception,
)
from pyworkflow.storage.base import StorageBackend, WorkflowRun


@dataclass(frozen=True)
class Dispatch:
    """A step the activation wants run by a step worker (``carrier``: what interceptors
    recorded with the run, for the message's headers)."""

    run_id: str
    call_id: int
    step: str
    queue: str | None
    carrier: dict[str, str] | None = field(default=None, compare=False)


async def _post(storage: StorageBackend, run_id: str, type: str, data: dict[str, Any]) -> None:
    key = f"step:{data['call_id']}:{data['attempt']}:{'started' if type == EventType.STEP_STARTED else 'outcome'}"
    await storage.post_message(run_id, STEP_MESSAGE, {"type": str(type), "data": data}, idempotency_key=key)


async def run_dispatched_step(
    storage: StorageBackend,
    run_id: str,
    call_id: int,
    step_name: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Run one attempt of a dispatched step and post what happened to the run's inbox.
    Returns ``completed``, ``retrying``, ``failed``, or ``skipped`` (a duplicate message,
    a settled call, a finished run)."""
    status, _ = await attempt_dispatched_step(storage, run_id, call_id, step_name, clock=clock)
    return status


async def attempt_dispatched_step(
    storage: StorageBackend,
    run_id: str,
    call_id: int,
    step_name: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[str, str]:
    """:func:`run_dispatched_step`, also returning the run's workflow name (what the
    runtime names the activation it sends next)."""
    run = await storage.get_run(run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    return await _attempt(storage, run, call_id, step_name, clock), run.workflow_name


async def _attempt(storage: StorageBackend, run: WorkflowRun, call_id: int, step_name: str, clock: Clock) -> str:
    run_id = run.run_id
    if run.status.is_terminal:
        return "skipped"
    events = await storage.get_events(run_id)
    rec = fold(run_id, events).calls.get(call_id)
    if rec is None or rec.kind != CallKind.STEP or rec.name != step_name or rec.state in SETTLED:
        return "skipped"  # a duplicate message, or one for a call that is settled
    if rec.state == CallState.RETRYING and rec.wake_at is not None and rec.wake_at > clock.now():
        return "skipped"
    attempt = rec.attempt + 1
    defn = get_step(step_name)
    try:
        if defn is None:
            from pyworkflow import config

            error = RuntimeError(
                f"step {step_name!r} is not registered in this worker (imported modules: "
                f"{config.imported_modules() or 'none'}); add its module to PYWORKFLOW_IMPORTS"
            )
            await _post(storage, run_id, *_started(step_name, call_id, attempt, rec.args))
            await _post(storage, run_id, *_final_failure(step_name, call_id, attempt, error))
            return "failed"
        if rec.state == CallState.STARTED and rec.attempt - rec.attempt_base >= defn.retry.max_attempts:
            crashed = crashed_error(defn, run_id, call_id, rec.attempt)
            await _post(storage, run_id, *failure_event(defn, call_id, rec.attempt, crashed, clock.now(), final=True))
            return "failed"
        payload = rec.args or {"args": [], "kwargs": {}}
        await _post(storage, run_id, *_started(step_name, call_id, attempt, payload))
        args, kwargs = defn.signature.decode_args(payload)
        info = StepInfo(run_id, run.workflow_name, step_name, call_id, attempt)
        try:
            encoded = await execute_step(defn, info, args, kwargs, _interceptors_view(run, events))
            outcome: tuple[str, dict[str, Any]] = (
                EventType.STEP_COMPLETED,
                {"call_id": call_id, "step": step_name, "attempt": attempt, "result": encoded},
            )
        except Exception as exc:  # noqa: BLE001 - every step failure is recorded
            outcome = failure_event(defn, call_id, attempt, exc, clock.now(), base=rec.attempt_base)
        except BaseException as exc:
            failure = user_base_exception(exc, f"step {step_name!r}")
            if failure is None:
                raise  # this task is cancelled (worker shutdown): the step is sent again
            # KeyboardInterrupt, SystemExit, a CancelledError of its own: the step fails
            # for good, recorded like any failure; the worker never sees the exception.
            outcome = failure_event(defn, call_id, attempt, failure, clock.now(), final=True)
        await _post(storage, run_id, *outcome)
    except RunFinishedError:
        return "skipped"  # the run ended (failed, timed out) while the step ran
    observability.engine_log("dispatched_step_recorded", run_id=run_id, call_id=call_id, outcome=str(outcome[0]))
    return str(outcome[0]).split(".", 1)[1]


def _interceptors_view(run: WorkflowRun, events: list[Event]) -> interceptors.RunInfo | None:
    if not interceptors.CHAIN:
        return None
    carrier = interceptors.carrier_of(events[0].data) if events and events[0].seq == 1 else {}
    return interceptors.RunInfo(run.run_id, run.workflow_name, carrier)


def _started(step_name: str, call_id: int, attempt: int, args: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    return EventType.STEP_STARTED, {"call_id": call_id, "step": step_name, "attempt": attempt, "args": args}


def _final_failure(step_name: str, call_id: int, attempt: int, error: Exception) -> tuple[str, dict[str, Any]]:
    return EventType.STEP_FAILED, {
        "call_id": call_id,
        "step": step_name,
        "attempt": attempt,
        "error": describe_error(error),
    }
