"""Changing workflow code without stranding the runs in flight.

``patched(patch_id)`` branches workflow code between the old and the new version::

    if pyworkflow.patched("send-receipt"):
        await send_receipt(order)        # runs that reach here on the new code
    await ship(order)                    # every run, old or new

A run that reaches the call for the first time on new code records a marker
(``patch.marked``) and gets ``True``; replay then gives ``True`` again. A run that passed
this point on old code (the log holds durable calls beyond it, and no marker) gets
``False`` and keeps replaying the old path. Markers have no call id: checking a patch
never shifts the ids of later durable calls, so adding or removing ``patched()`` never
breaks a replay by itself. ``deprecate_patch(patch_id)`` marks the clean-up phase, once
no run that took the old path is left: the branch is gone from the code, the call stays
as documentation, and does nothing.

``replay(wf, history)`` replays a recorded history against the current code without
writing anything and raises :class:`~pyworkflow.errors.NonDeterminismError` naming both
calls where the code no longer makes the calls the log recorded; ``export_run(run_id)``
gives the document it reads (``pyworkflow runs export`` writes the same).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pyworkflow.errors import NonDeterminismError
from pyworkflow.events import Event, EventType
from pyworkflow.history import fold
from pyworkflow.registry import WorkflowDefinition, definition_of, get_workflow
from pyworkflow.replay import RunContext, _run
from pyworkflow.signals import check_name, workflow_context
from pyworkflow.storage.base import Lease, RunStatus, StorageBackend, WorkflowRun

HISTORY_FORMAT = "pyworkflow.history/1"


def patched(patch_id: str) -> bool:
    """Whether this run takes the new code path of ``patch_id`` (see the module docstring).
    Workflow code only."""
    where = "patched()"
    patch_id = check_name(patch_id, where)
    ctx = workflow_context(where)
    patches = ctx.folded.patches
    if patches is not None and patch_id in patches:
        return True
    if ctx.calls < ctx.recorded_calls:
        return False  # this run passed here on old code: the log goes on without a marker
    ctx.decide_folded(EventType.PATCH_MARKED, {"patch_id": patch_id})
    return True


def deprecate_patch(patch_id: str) -> None:
    """The clean-up phase of ``patch_id``: no run on the old path is left, the branch is
    gone, and this call only documents where it was. Workflow code only."""
    where = "deprecate_patch()"
    check_name(patch_id, where)
    workflow_context(where)


# -- replaying recorded histories -------------------------------------------------------------


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` found: the run's id, how many durable calls were replayed, and
    whether the code reached the end of the recorded log (``complete``)."""

    run_id: str
    workflow: str
    calls: int
    complete: bool


async def export_run(run_id: str, *, storage: StorageBackend | None = None) -> dict[str, Any]:
    """A run's record and log as a JSON-ready document (``{"format":
    "pyworkflow.history/1", "run": {...}, "events": [...]}``), for :func:`replay` and for
    keeping histories in a test folder."""
    from pyworkflow import config
    from pyworkflow.errors import RunNotFoundError

    store = storage if storage is not None else config.get_storage()
    run = await store.get_run(run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    events = await store.get_events(run_id)
    return {
        "format": HISTORY_FORMAT,
        "run": run.model_dump(mode="json"),
        "events": [e.model_dump(mode="json") for e in events],
    }


History = Mapping[str, Any] | Sequence[Event] | Sequence[Mapping[str, Any]] | str | Path


def _events_of(history: History) -> tuple[list[Event], Mapping[str, Any] | None]:
    """The events a history holds, and the run record when it has one."""
    if isinstance(history, str | Path):
        try:
            history = json.loads(Path(history).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"replay(): cannot read the history file {str(history)!r}: {exc}") from None
    run: Mapping[str, Any] | None = None
    if isinstance(history, Mapping):
        if history.get("format") != HISTORY_FORMAT or not isinstance(history.get("events"), list):
            raise ValueError(
                f"replay(): a history document has format {HISTORY_FORMAT!r} and a list of events, "
                f"got format {history.get('format')!r}"
            )
        run, history = history.get("run"), history["events"]
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise TypeError(
            f"replay(): history must be an export document, a list of events or a file path, got {history!r}"
        )
    events = [e if isinstance(e, Event) else Event.model_validate(e) for e in history]
    if not events or events[0].type != EventType.WORKFLOW_STARTED:
        raise ValueError("replay(): the history must begin with its workflow.started event")
    return events, run


class _NoWrites:
    """Storage for a replay: it accepts appends and keeps nothing (nothing is written)."""

    unavailable_errors: tuple[type[BaseException], ...] = ()

    async def append_events(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def get_messages(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


async def replay(wf: Any, history: History) -> ReplayResult:
    """Replay ``history`` (an :func:`export_run` document, a list of events, or the path of
    a JSON file holding either) against the current code of ``wf`` (``None``: the
    workflow the history names), writing nothing and running no step.

    Raises :class:`~pyworkflow.errors.NonDeterminismError` naming both calls when the code
    makes another durable call than the log recorded, finishes before the calls the log
    holds, or returns another result than the one recorded. Stops, without error, where
    the log ends (a run still in flight replays up to where it is).
    """
    from pyworkflow.engine import _run_workflow

    events, record = _events_of(history)
    started = events[0].data
    name = started.get("workflow") or (record or {}).get("workflow_name")
    definition: WorkflowDefinition = definition_of(wf) if wf is not None else get_workflow(str(name))
    if name is not None and name != definition.name:
        raise ValueError(f"replay(): the history is of workflow {name!r}, not {definition.name!r}")
    run_id = str((record or {}).get("run_id") or "replayed-run")
    folded = fold(run_id, events)
    at = events[0].timestamp
    run = WorkflowRun(
        run_id=run_id,
        workflow_name=definition.name,
        status=RunStatus.RUNNING,
        input=started.get("input") or {"args": [], "kwargs": {}},
        created_at=at,
        updated_at=at,
        deadline=datetime.fromisoformat(started["deadline"]) if started.get("deadline") else None,
    )
    lease = Lease(run_id=run_id, owner="replay", token="replay", expires_at=float("inf"))
    ctx = RunContext(run, folded, _NoWrites(), _FrozenClock(events[-1].timestamp), lease)  # type: ignore[arg-type]
    ctx.replay_only = True
    ctx.events = events
    token = _run.set(ctx)
    try:
        result, failure = await _run_workflow(ctx, definition, run, at)
    finally:
        _run.reset(token)
    if ctx.fatal is not None:
        raise ctx.fatal
    recorded_end = next((e for e in reversed(events) if e.type in _ENDS), None)
    unreplayed = ctx.history.get(ctx.calls + 1)
    finished = not ctx.waits and not ctx.stopped
    if finished and unreplayed is not None:
        raise NonDeterminismError(
            f"run {run_id!r}: the workflow now finishes without making durable call #{ctx.calls + 1}, "
            f"recorded as {unreplayed.kind} {unreplayed.name!r}",
            run_id=run_id,
            call_id=ctx.calls + 1,
        )
    if finished and recorded_end is not None and recorded_end.type == EventType.WORKFLOW_COMPLETED:
        if failure is not None:
            raise NonDeterminismError(
                f"run {run_id!r}: the workflow now fails ({type(failure).__name__}: {failure}) where the log "
                "recorded it completed",
                run_id=run_id,
            )
        encoded = definition.signature.encode_result(result)
        if encoded != recorded_end.data.get("result"):
            raise NonDeterminismError(
                f"run {run_id!r}: the workflow now returns {encoded!r}, the log recorded "
                f"{recorded_end.data.get('result')!r}",
                run_id=run_id,
            )
    return ReplayResult(run_id, definition.name, ctx.calls, complete=finished)


_ENDS = frozenset(
    {
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELLED,
        EventType.WORKFLOW_CONTINUED,
    }
)


class _FrozenClock:
    """A replay's clock: the time of the last recorded event (a wait not over then is not
    over now, so replay stops where the run stood)."""

    def __init__(self, at: datetime) -> None:
        self._at = at

    def now(self) -> datetime:
        return self._at

    async def wait_until(self, when: datetime) -> None:  # pragma: no cover - never waits
        return None


__all__ = ["HISTORY_FORMAT", "ReplayResult", "deprecate_patch", "export_run", "patched", "replay"]
