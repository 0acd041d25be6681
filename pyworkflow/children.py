"""Child workflows: a workflow that starts others and waits for their results.

    receipt = await run_child(charge_order, order_id)                 # start and wait
    handles = [await start_child(ship_parcel, p) for p in parcels]    # fan out
    tracking = await asyncio.gather(*(h.result() for h in handles))   # results in order

A child's run id is derived from the parent's run id and the call, and the child is
created in storage before the parent records ``child.started``: a crash between the two
leaves a child the parent's replay finds by that id and does not create again, so a
child is never lost nor duplicated, and replay never starts it again. Its first
activation is sent once the parent's append is written (and its start-guard timer starts
it should that message be lost). When the child ends, it posts its result to the
parent's inbox (no polling); the parent also looks at its waiting children when woken by
time (every :data:`CHILD_POLL`), should that message have been lost with a worker.

An attached child still running when its parent ends is cancelled, and cancelling a
parent cancels its attached children (recursively); a ``detached=True`` child outlives its
parent.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

from pyworkflow.errors import ChildWorkflowError
from pyworkflow.events import EventType
from pyworkflow.history import CallKind, CallState
from pyworkflow.registry import WorkflowDefinition, definition_of, get_workflow
from pyworkflow.replay import RunContext
from pyworkflow.signals import send_signal_async, workflow_context

#: How often a parent waiting on a child looks at it itself (the child's message is the
#: fast path; this only finds a message lost with a worker).
CHILD_POLL = timedelta(hours=1)
#: A child's start-guard timer: the tick starts it this long after its creation should
#: the activation message sent after the parent's append be lost.
CHILD_START_GUARD = 30.0


def child_run_id(parent_run_id: str, call_id: int) -> str:
    """The id of the child started by durable call ``call_id`` of ``parent_run_id``."""
    return hashlib.sha256(f"{parent_run_id}:child:{call_id}".encode()).hexdigest()[:32]


class ChildHandle:
    """A child run started by :func:`start_child`."""

    def __init__(self, ctx: RunContext, call_id: int, definition: WorkflowDefinition, run_id: str) -> None:
        self._ctx, self._call_id, self._definition = ctx, call_id, definition
        self.run_id = run_id
        self._signals_sent = 0

    async def result(self) -> Any:
        """The child's result, typed by its workflow's return annotation; raises
        :class:`~pyworkflow.errors.ChildWorkflowError` if it failed or was cancelled. The
        parent suspends (holding no worker) until the child ends."""
        ctx = self._ctx
        rec = ctx.history[self._call_id]
        if rec.state == CallState.WAITING and ctx.timer_wake and not ctx.replay_only:
            await _look_at_child(ctx, self._call_id, self.run_id)
        if rec.state == CallState.COMPLETED:
            return self._definition.signature.decode_result(rec.result)
        if rec.state == CallState.FAILED:
            error = rec.error or {}
            raise ChildWorkflowError(
                f"child run {self.run_id!r} of workflow {self._definition.name!r} failed: "
                f"{error.get('type', '?')}: {error.get('message', '')}",
                run_id=self.run_id,
                error_type=error.get("type"),
                error_message=error.get("message"),
            )
        if rec.state == CallState.CANCELLED:
            raise ctx.cancelled()
        ctx.frontier()
        await asyncio.sleep(0)  # gather siblings reach their own durable calls first
        while (starting := _STARTING.get(id(ctx))) is not None:
            await starting.idle.wait()  # and those creating their child record it first
        ctx.suspend_on(self._call_id, ctx.clock.now() + CHILD_POLL)

    async def cancel(self, reason: str | None = None) -> None:
        """Ask the child to stop (idempotent; nothing happens if it has ended)."""
        from pyworkflow.control import cancel_async

        await cancel_async(self.run_id, reason=reason, storage=self._ctx.storage)

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send the child a signal, once: a replay sends it again under the same key (the
        parent's run, this child's call, and how many signals this handle sent before)."""
        self._signals_sent += 1
        key = f"{self._ctx.run_id}:{self._call_id}:{self._signals_sent}"
        await send_signal_async(self.run_id, name, payload, idempotency_key=key, storage=self._ctx.storage)


class _Starting:
    """The :func:`start_child` calls of one activation still creating their child in
    storage. A handle's ``result()`` suspends the run only once they are done: the first
    to suspend ends the activation, and a sibling that recorded ``child.started`` after
    its last append would leave a child created and started that the parent's log does
    not know, whose end message is then dropped as stale (the parent waited for
    :data:`CHILD_POLL`). With storage that really waits on I/O (Redis, PostgreSQL),
    ``gather`` over ``run_child`` did this to most of its children."""

    __slots__ = ("count", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()


#: Per activation (``id`` of its RunContext, removed when no start is in flight).
_STARTING: dict[int, _Starting] = {}


async def _look_at_child(ctx: RunContext, call_id: int, run_id: str) -> None:
    """The poll: a child that ended without its message reaching us is recorded now (a
    child that continued as new is followed to its chain's last run)."""
    from pyworkflow.continuation import latest_run

    child = await latest_run(ctx.storage, run_id)
    if child is None or not child.status.is_terminal:
        return
    data = {
        "call_id": call_id,
        "run_id": run_id,
        "status": str(child.status),
        "result": child.result,
        "error": child.error,
    }
    ctx.decide_folded(EventType.CHILD_COMPLETED, data)


async def start_child(wf: Any, *args: Any, detached: bool = False, **kwargs: Any) -> ChildHandle:
    """Start a child run of ``wf`` (a ``@workflow`` function or its name) and return its
    handle at once (``.run_id``, ``await .result()``, ``await .cancel()``,
    ``await .signal(name, payload)``). Workflow code only."""
    from pyworkflow.engine import create_run

    where = "start_child()"
    ctx = workflow_context(where)
    if not isinstance(detached, bool):
        raise TypeError(f"{where}: detached must be a bool, got {detached!r}")
    definition = definition_of(wf) if not isinstance(wf, str) else get_workflow(wf)
    call_id, rec = ctx.begin_call(CallKind.CHILD, definition.name)
    if rec is not None:
        assert rec.args is not None
        return ChildHandle(ctx, call_id, definition, rec.args["run_id"])
    run_id = child_run_id(ctx.run_id, call_id)
    starting = _STARTING.setdefault(id(ctx), _Starting())
    starting.count += 1
    try:
        existing = await ctx.storage.get_run(run_id)  # created before a crash: kept
        if existing is None:
            parent = {"run_id": ctx.run_id, "call_id": call_id, "detached": detached, "workflow": ctx.workflow}
            await create_run(
                ctx.storage,
                definition,
                args,
                kwargs,
                run_id=run_id,
                parent=parent,
                clock=ctx.clock,
                start_guard=CHILD_START_GUARD,
            )
    finally:
        starting.count -= 1
        if starting.count == 0:
            del _STARTING[id(ctx)]
            starting.idle.set()
    data = {"call_id": call_id, "workflow": definition.name, "run_id": run_id, "detached": detached}
    ctx.decide_folded(EventType.CHILD_STARTED, data)
    if ctx.children is None:
        ctx.children = []
    ctx.children.append((run_id, definition.name))
    if existing is not None and existing.status.is_terminal:
        # It ran to its end before this parent recorded it: the message it posted then
        # named a call the parent's log did not know, and was dropped. Record it now
        # rather than wait for the poll.
        await _look_at_child(ctx, call_id, run_id)
    return ChildHandle(ctx, call_id, definition, run_id)


async def run_child(wf: Any, *args: Any, detached: bool = False, **kwargs: Any) -> Any:
    """Start a child run of ``wf`` and return its result (see :func:`start_child`)."""
    return await (await start_child(wf, *args, detached=detached, **kwargs)).result()


__all__ = ["CHILD_POLL", "ChildHandle", "child_run_id", "run_child", "start_child"]
