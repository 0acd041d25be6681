"""Dispatched steps: a step declared with ``queue=...`` runs as its own task.

The activation records ``step.dispatched`` and suspends; a step worker runs
:func:`run_dispatched_step`, which records ``step.started`` and the outcome under the
run's lease (one writer per run, even while several dispatched steps finish at once),
then sets the run's timer to now so the run wakes even if the activation message that
follows is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pyworkflow import observability
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.errors import RunNotFoundError
from pyworkflow.events import Event, EventType
from pyworkflow.registry import get_step
from pyworkflow.replay import (
    COMPLETED,
    DISPATCHED,
    FAILED,
    RETRYING,
    STARTED,
    StepInfo,
    build_history,
    crashed_error,
    execute_step,
    failure_event,
)
from pyworkflow.storage.base import Lease, StorageBackend

LEASE_TTL = 30.0
LEASE_WAIT = 60.0


@dataclass(frozen=True)
class Dispatch:
    """A step the activation wants run by a step worker."""

    run_id: str
    call_id: int
    step: str
    queue: str | None


@asynccontextmanager
async def _holding(storage: StorageBackend, run_id: str, owner: str) -> AsyncIterator[Lease]:
    """Hold the run's lease for a short write, waiting while an activation has it."""
    deadline = time.monotonic() + LEASE_WAIT
    delay = 0.005
    while (lease := await storage.acquire_lease(run_id, owner, LEASE_TTL)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id!r}: its lease stayed taken for {LEASE_WAIT:g}s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
    try:
        yield lease
    finally:
        await storage.release_lease(lease)


async def _append(
    storage: StorageBackend,
    run_id: str,
    lease: Lease,
    after: int,
    type: str,
    data: dict[str, Any],
    clock: Clock,
    *,
    wake: bool = False,
) -> None:
    """Append one event; with ``wake``, also make the run due now (record and timer), so
    the next activation — or the tick, if that message is lost — moves it on."""
    now = clock.now()
    changes = {"wake_at": now} if wake else None
    await storage.append_events(
        run_id, [Event.new(after + 1, type, now, data)], lease_token=lease.token, run_changes=changes
    )
    if wake:
        await storage.schedule_timer(run_id, now)


class OutcomeNotRecorded(Exception):  # noqa: N818 - a signal to the task, not a failure
    """The step ran but its outcome could not be recorded yet (the run stayed leased);
    ``pending`` is what to record on a later try, without running the step again."""

    def __init__(self, pending: dict[str, Any]) -> None:
        super().__init__(f"run {pending['run_id']!r}: step outcome waiting for the run's lease")
        self.pending = pending


async def run_dispatched_step(
    storage: StorageBackend,
    run_id: str,
    call_id: int,
    step_name: str,
    *,
    owner: str,
    clock: Clock = SYSTEM_CLOCK,
    pending: dict[str, Any] | None = None,
) -> str:
    """Run one attempt of a dispatched step and record it. Returns what happened:
    ``completed``, ``retrying``, ``failed``, or ``skipped`` for a duplicate message.

    Raises :class:`OutcomeNotRecorded` when the outcome could not be written in time;
    call again with its ``pending`` to record it without running the step again.
    """
    if pending is not None:
        return await _record(
            storage, run_id, call_id, pending["attempt"], (pending["type"], pending["data"]), owner, clock
        )
    defn = get_step(step_name)
    async with _holding(storage, run_id, owner) as lease:
        events = await storage.get_events(run_id)
        if not events:
            raise RunNotFoundError(run_id)
        rec = build_history(events)[0].get(call_id)
        if rec is None or rec.kind != "step" or rec.name != step_name or rec.state in (COMPLETED, FAILED):
            return "skipped"  # a duplicate message, or one for a call that is settled
        if rec.state == RETRYING and rec.wake_at is not None and rec.wake_at > clock.now():
            return "skipped"
        if rec.state not in (DISPATCHED, STARTED, RETRYING):
            return "skipped"
        attempt = rec.attempt + 1
        last = events[-1].seq
        if defn is None:
            from pyworkflow import config

            error = RuntimeError(
                f"step {step_name!r} is not registered in this worker (imported modules: "
                f"{config.imported_modules() or 'none'}); add its module to PYWORKFLOW_IMPORTS"
            )
            await _append(
                storage, run_id, lease, last, *_final_failure(step_name, call_id, attempt, error), clock, wake=True
            )
            return "failed"
        if rec.state == STARTED and rec.attempt >= defn.retry.max_attempts:
            crashed = crashed_error(defn, run_id, call_id, rec.attempt)
            await _append(
                storage,
                run_id,
                lease,
                last,
                *failure_event(defn, call_id, rec.attempt, crashed, clock.now(), final=True),
                clock,
                wake=True,
            )
            return "failed"
        payload = rec.args or {"args": [], "kwargs": {}}
        await _append(
            storage,
            run_id,
            lease,
            last,
            EventType.STEP_STARTED,
            {"call_id": call_id, "step": step_name, "attempt": attempt, "args": payload},
            clock,
        )
        workflow = (await storage.get_run(run_id)).workflow_name  # type: ignore[union-attr]

    args, kwargs = defn.signature.decode_args(payload)
    info = StepInfo(run_id, workflow, step_name, call_id, attempt)
    try:
        encoded = await execute_step(defn, info, args, kwargs)
        outcome: tuple[str, dict[str, Any]] = (
            EventType.STEP_COMPLETED,
            {"call_id": call_id, "step": step_name, "attempt": attempt, "result": encoded},
        )
    except Exception as exc:  # noqa: BLE001 - every step failure is recorded
        outcome = failure_event(defn, call_id, attempt, exc, clock.now())
    try:
        return await _record(storage, run_id, call_id, attempt, outcome, owner, clock)
    except TimeoutError:
        raise OutcomeNotRecorded(
            {"run_id": run_id, "attempt": attempt, "type": str(outcome[0]), "data": outcome[1]}
        ) from None


async def _record(
    storage: StorageBackend,
    run_id: str,
    call_id: int,
    attempt: int,
    outcome: tuple[str, dict[str, Any]],
    owner: str,
    clock: Clock,
) -> str:
    async with _holding(storage, run_id, owner) as lease:
        events = await storage.get_events(run_id)
        rec = build_history(events)[0].get(call_id)
        if rec is None or rec.state != STARTED or rec.attempt != attempt:
            return "skipped"  # another delivery of this step recorded first
        await _append(storage, run_id, lease, events[-1].seq, *outcome, clock, wake=True)
    observability.engine_log("dispatched_step_recorded", run_id=run_id, call_id=call_id, outcome=outcome[0])
    return outcome[0].split(".", 1)[1]


def _final_failure(step_name: str, call_id: int, attempt: int, error: Exception) -> tuple[str, dict[str, Any]]:
    from pyworkflow.replay import describe_error

    return EventType.STEP_FAILED, {
        "call_id": call_id,
        "step": step_name,
        "attempt": attempt,
        "error": describe_error(error),
    }
