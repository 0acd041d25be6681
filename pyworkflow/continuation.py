"""Continue-as-new: a workflow that runs for ever in bounded chunks, and what a run may
know about itself (:func:`workflow_info`).

    @workflow(name="subscription")
    async def subscription(customer: str, month: int = 0) -> None:
        await charge(customer, month)
        await sleep("30d")
        await continue_as_new(customer, month + 1)  # this run ends here

:func:`continue_as_new` ends the run with status ``continued`` and a ``workflow.continued``
event naming the next run, which starts with the given arguments: the runs form a
*chain*. The next run's id is derived from this run's (:func:`continued_run_id`), and the
next run is created, with a start-guard timer, before this run records its end (outbox
style, as child runs are): a crash between the two leaves a run the replay derives again
and finds, so the chain never loses nor doubles a link.

What the run did not consume moves to the next run. A finished run refuses messages, so
once this run has recorded its end its inbox is frozen; the next run's first activation
then takes, in order, the signals this run's log holds that no wait took, and the
messages still pending in its inbox (signals, cancellation, pause and unpause requests,
including those that arrived while the run was ending), and records them
(``messages.inherited``, then one event each) before its workflow code runs. Should the
next run be activated before its predecessor has ended (its start guard fired early), it
waits for it (:data:`PREDECESSOR_POLL`); should the predecessor end otherwise (its
activation died after creating the next run, and the run was cancelled before its
recovery), the next run never runs its code: it ends ``cancelled``, saying why.

A signal, cancellation or pause sent to a continued run by its id is refused by storage;
:func:`~pyworkflow.send_signal`, :func:`~pyworkflow.cancel`, :func:`~pyworkflow.pause`,
:func:`~pyworkflow.unpause` and :func:`~pyworkflow.retry` follow the chain to its current
run instead (:func:`post_along_chain`). :func:`~pyworkflow.get_run`,
:func:`~pyworkflow.wait_for_result` and :func:`~pyworkflow.get_state` follow it too
(:func:`latest_run`), while ``storage.get_run`` gives each run's own record. Following
costs a few storage reads per link passed: for a chain of thousands of links, address
the chain's current run (``get_run(first).run_id``) rather than its first.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from pyworkflow.errors import RunFinishedError, SerializationError
from pyworkflow.events import LOG_EVENT_TYPES, Event, EventType, new_event
from pyworkflow.history import (
    CHILD_MESSAGE,
    INTERRUPTED_MESSAGE,
    SIGNAL_MESSAGE,
    STEP_MESSAGE,
    CallKind,
    History,
    fold,
)
from pyworkflow.registry import get_workflow
from pyworkflow.replay import ContinueSignal
from pyworkflow.signals import workflow_context
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun

if TYPE_CHECKING:
    from pyworkflow.replay import RunContext

#: The next run's start-guard timer: the tick starts it this long after its creation
#: should the activation sent after this run's end be lost.
CONTINUE_START_GUARD = 30.0
#: How long a next run activated before its predecessor ended waits before looking again.
PREDECESSOR_POLL = timedelta(seconds=5)
#: Inbox messages of kinds the engine sends to a run about that run's own calls (a step's
#: outcome, a child's end, a crash marker): they mean nothing to the next run.
_NOT_INHERITED = frozenset({STEP_MESSAGE, CHILD_MESSAGE, INTERRUPTED_MESSAGE})
#: Events that begin an activation's part of the log (besides seq 2, the first one's).
_ACTIVATION_MARKS = frozenset({EventType.WORKFLOW_RESUMED.value, EventType.WORKFLOW_INTERRUPTED.value})


def continued_run_id(run_id: str) -> str:
    """The id of the run that ``run_id`` continues as (a run continues at most once)."""
    return hashlib.sha256(f"{run_id}:continue".encode()).hexdigest()[:32]


# -- in workflow code --------------------------------------------------------------------------


async def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End this run and start the next run of the same workflow with these arguments.

    The run ends with status ``continued`` (the call never returns); the next run starts
    with a fresh log, so a workflow that loops for ever stays bounded: continue every so
    many events (:func:`workflow_info` gives ``event_count``) or iterations. Signals this
    run has not consumed, and any sent while it ends, are delivered to the next run, in
    order; ``wait_for_result``, ``get_run``, ``send_signal`` and ``cancel`` given any run of
    the chain follow it to its current run.

    The arguments are checked against the workflow's signature and encoded here: bad ones
    raise ``TypeError`` or :class:`~pyworkflow.errors.SerializationError` in the workflow,
    naming the run, and nothing is recorded. Workflow code only. Call it from the
    workflow's main line, not from a branch of ``asyncio.gather``.
    """
    from pyworkflow.engine import create_run

    where = "continue_as_new()"
    ctx = workflow_context(where)
    definition = get_workflow(ctx.workflow)
    try:
        definition.signature.check_call(args, kwargs)
        definition.signature.encode_args_for_call(args, kwargs)
    except SerializationError as exc:  # also a TypeError: first
        raise SerializationError(f"run {ctx.run_id!r}: {where}: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"run {ctx.run_id!r}: {where}: {exc}") from None
    call_id, rec = ctx.begin_call(CallKind.CONTINUE, definition.name)
    if rec is not None:  # a replay check of a run that continued here: it ends here again
        assert rec.args is not None
        ctx.closed = True
        raise ContinueSignal(rec.args["run_id"])
    next_id = continued_run_id(ctx.run_id)
    if await ctx.storage.get_run(next_id) is None:  # else: created before a crash, kept
        chain = ctx.folded.chain
        link = {
            "from": ctx.run_id,
            "first_run_id": chain["first_run_id"] if chain else ctx.run_id,
            "index": (chain["index"] if chain else 0) + 1,
        }
        await create_run(
            ctx.storage,
            definition,
            args,
            kwargs,
            run_id=next_id,
            parent=ctx.folded.parent,
            continued=link,
            clock=ctx.clock,
            start_guard=CONTINUE_START_GUARD,
        )
    ctx.continued = {"call_id": call_id, "run_id": next_id, "workflow": definition.name}
    ctx.closed = True
    raise ContinueSignal(next_id)


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """What a run knows about itself (see :func:`workflow_info`)."""

    #: This run's id.
    run_id: str
    #: The workflow's registered name.
    workflow_name: str
    #: The id of the chain's first run (this run's own id unless continue_as_new started it).
    first_run_id: str
    #: The run this one continues, or ``None`` for a chain's first run.
    continued_from: str | None
    #: This run's place in its chain: 0 for the first run, 1 for the run it continued as …
    chain_index: int
    #: How many events this run's log held when the activation that made the workflow's
    #: latest durable call began (1 before any durable call): grows as the run goes on,
    #: and is the same on every replay, so code may decide on it when to continue.
    event_count: int
    #: The slot time of the schedule that started this run, or ``None``.
    scheduled_at: datetime | None
    #: The id of the schedule that started this run, or ``None``.
    schedule_id: str | None


def workflow_info() -> WorkflowInfo:
    """This run's identity, chain position and log length, for workflow code::

        info = workflow_info()
        if info.event_count > 1_000:
            await continue_as_new(state)

    Every field is the same on every replay of the run. Outside a workflow's code (in a
    step, or outside any run) it raises ``RuntimeError``.
    """
    ctx = workflow_context("workflow_info()")
    chain, schedule = ctx.folded.chain, ctx.folded.schedule
    scheduled_at = None
    if schedule is not None and isinstance(schedule.get("scheduled_at"), str):
        scheduled_at = datetime.fromisoformat(schedule["scheduled_at"])
    return WorkflowInfo(
        run_id=ctx.run_id,
        workflow_name=ctx.workflow,
        first_run_id=chain["first_run_id"] if chain else ctx.run_id,
        continued_from=chain["from"] if chain else None,
        chain_index=chain["index"] if chain else 0,
        event_count=_event_count(ctx),
        scheduled_at=scheduled_at,
        schedule_id=None if schedule is None or schedule.get("id") is None else str(schedule["id"]),
    )


def _event_count(ctx: RunContext) -> int:
    """The log's length when the activation that made durable call ``ctx.calls`` began:
    for a call this activation made, this activation's start; for one replayed from the
    log, the start of the activation its first event belongs to (found in the log)."""
    if ctx.calls == 0:
        return 1
    index = ctx.call_index
    if index is None:
        index = ctx.call_index = _index_calls(ctx.events or ())
    first_seqs, starts = index
    seq = first_seqs.get(ctx.calls)
    if seq is None:  # made by this activation
        return ctx.first_seq - 1
    return starts[bisect_right(starts, seq) - 1] - 1


def _index_calls(events: Any) -> tuple[dict[int, int], list[int]]:
    """Each durable call's first event's seq, and the seqs at which activations began
    (seq 2, and each resume or interruption marker not right after another one)."""
    first: dict[int, int] = {}
    starts = [2]
    previous = ""
    for event in events:
        kind = event.type
        if kind in _ACTIVATION_MARKS and previous not in _ACTIVATION_MARKS and event.seq > 2:
            starts.append(event.seq)
        previous = kind
        call_id = event.data.get("call_id")
        if type(call_id) is int and kind not in LOG_EVENT_TYPES and call_id not in first:
            first[call_id] = event.seq
    return first, starts


# -- following a chain -------------------------------------------------------------------------


async def latest_run(storage: StorageBackend, run_id: str) -> WorkflowRun | None:
    """The record of the chain's current run, from any run of it (``run_id``'s own record
    when it did not continue); ``None`` when ``run_id`` does not exist."""
    run = await storage.get_run(run_id)
    while run is not None and run.status == RunStatus.CONTINUED:
        following = await storage.get_run(continued_run_id(run.run_id))
        if following is None:  # deleted: the last record there is
            return run
        run = following
    return run


async def post_along_chain(
    storage: StorageBackend, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
) -> tuple[str, str]:
    """Post a message to ``run_id``, or, when it continued, to the chain's current run;
    return the run it reached and the message id. A repeated ``idempotency_key`` finds
    the message it first stored in any run of the chain from ``run_id`` on (each run
    answers a repeated key before refusing as finished). Raises
    :class:`~pyworkflow.errors.RunFinishedError` when the chain has ended."""
    while True:
        try:
            return run_id, await storage.post_message(run_id, kind, payload, idempotency_key=idempotency_key)
        except RunFinishedError as exc:
            run = await storage.get_run(run_id)
            if run is None or run.status != RunStatus.CONTINUED:
                raise
            following = continued_run_id(run_id)
            if await storage.get_run(following) is None:
                raise exc
            run_id = following


# -- the next run takes over what the previous one left ------------------------------------------


async def inherit(ctx: RunContext, history: History) -> str | None:
    """In the first activation of a continued run, before its own inbox: take over the
    previous run's unconsumed signals and pending messages, in order (recorded with the
    activation's next append). Returns ``None`` when done, ``"wait"`` when the previous
    run has not ended yet, or the status it ended with when it did not continue (this
    run was created for a continue_as_new() that was never recorded: a crash, then a
    cancellation)."""
    assert history.chain is not None
    previous_id = history.chain["from"]
    storage = ctx.storage
    previous = await storage.get_run(previous_id)
    items: list[tuple[str, Any, Any]] = []  # kind, payload, message seq
    if previous is not None:
        if not previous.status.is_terminal:
            return "wait"
        if previous.status != RunStatus.CONTINUED:
            return str(previous.status)
        events = await storage.get_events(previous_id)
        items += _unconsumed_signals(previous_id, events)
        for message in await storage.get_messages(previous_id):
            if message.kind not in _NOT_INHERITED:
                items.append((message.kind, message.payload, message.seq))
    marker = {"run_id": previous_id, "count": len(items)}
    _record(ctx, history, EventType.MESSAGES_INHERITED, marker)
    for kind, payload, seq in items:
        admitted = history.admit(kind, payload, seq)
        if admitted is not None:
            _record(ctx, history, admitted[0], {**admitted[1], "from_run": previous_id})
    return None


def _record(ctx: RunContext, history: History, type: str, data: dict[str, Any]) -> None:
    ctx.buffer_event(type, data)
    history.apply(new_event(history.last_seq + 1, type, ctx.clock.now(), data))


def _unconsumed_signals(run_id: str, events: list[Event]) -> list[tuple[str, Any, Any]]:
    """The signals ``run_id``'s log received that no wait took, in log order. Waits take
    the oldest signal of their name first, so what is left of each name is the newest
    ones: as many as the folded log's buffer holds."""
    buffered = fold(run_id, events).signals or {}
    received: dict[str, deque[Event]] = {}
    for event in events:
        if event.type == EventType.SIGNAL_RECEIVED:
            received.setdefault(str(event.data.get("name")), deque()).append(event)
    left: list[Event] = []
    for name, payloads in buffered.items():
        if payloads:
            left += list(received.get(name, ()))[-len(payloads) :]
    left.sort(key=lambda e: e.seq)
    return [
        (SIGNAL_MESSAGE, {"name": e.data["name"], "payload": e.data.get("payload")}, e.data.get("message"))
        for e in left
    ]


__all__ = [
    "CONTINUE_START_GUARD",
    "WorkflowInfo",
    "continue_as_new",
    "continued_run_id",
    "latest_run",
    "post_along_chain",
    "workflow_info",
]
