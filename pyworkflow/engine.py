"""The activation: load a run's log, replay the workflow, push it forward, record how it
stopped (completed, failed or suspended), and let go of the run.

Runtimes (in-process, Celery) differ only in how they schedule activations; both call
:func:`create_run` and :func:`activate`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import socket
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyworkflow import interceptors, observability
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.errors import (
    CorruptedHistoryError,
    IdempotencyConflictError,
    NonDeterminismError,
    StorageError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from pyworkflow.events import EventType, new_event, trusted
from pyworkflow.history import CANCEL_MESSAGE, INTERRUPTED_MESSAGE, CallState, History, fold
from pyworkflow.registry import WorkflowDefinition, get_workflow, workflow_names
from pyworkflow.replay import (
    AbortSignal,
    ContinueSignal,
    RunContext,
    SuspendSignal,
    _run,
    describe_error,
    user_base_exception,
)
from pyworkflow.serialization import check_key
from pyworkflow.storage.base import Activation, Lease, RunStatus, StorageBackend, WorkflowRun, new_run_id, unavailable

if TYPE_CHECKING:
    from pyworkflow.dispatch import Dispatch

#: A crashed worker's runs are taken over this long after it died (plus one tick); a live
#: worker renews every third of it. See DISTRIBUTED.md for the trade-off.
DEFAULT_LEASE_TTL = 15.0
OWNER = f"{socket.gethostname()}:{os.getpid()}"

# Enum members looked up once: ``RunStatus.RUNNING`` costs a metaclass lookup per use.
_PENDING, _RUNNING, _SUSPENDED = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUSPENDED
_COMPLETED, _FAILED = RunStatus.COMPLETED, RunStatus.FAILED
_WORKFLOW_STARTED: str = EventType.WORKFLOW_STARTED.value
_WORKFLOW_COMPLETED: str = EventType.WORKFLOW_COMPLETED.value


#: A run an activation made due: its id, and its workflow's name when known.
Woken = tuple[str, "str | None"]


@dataclass(frozen=True, init=False)
class Outcome:
    """How an activation ended.

    ``status`` is ``completed``, ``failed``, ``cancelled``, ``continued`` (the next run
    of its chain is first in ``woken``), ``paused``, ``blocked`` or ``suspended`` when this
    activation moved the run; ``busy`` (another activation holds it), ``not_due``
    (suspended and not yet due), ``finished`` (already ended), ``missing`` or ``lost``
    (the lease was taken over mid-way) when it did nothing.
    """

    status: str
    run_id: str
    wake_at: datetime | None = None
    dispatches: tuple[Dispatch, ...] = ()
    #: Other runs this activation made due, for the runtime to activate now (a child it
    #: started, the parent it told of its end), as ``(run id, workflow name or None)``:
    #: the name the runtime gives their messages. The tick would find them in any case.
    woken: tuple[Woken, ...] = ()
    #: The run's workflow, when a wake-up may follow (``suspended``): the name the runtime
    #: gives that wake-up's message (Flower, ``celery inspect``).
    workflow: str | None = None

    def __init__(
        self,
        status: str,
        run_id: str,
        wake_at: datetime | None = None,
        dispatches: tuple[Dispatch, ...] = (),
        woken: tuple[Woken, ...] = (),
        workflow: str | None = None,
    ) -> None:
        # What the generated __init__ of a frozen dataclass does, in one write instead of
        # an object.__setattr__ per field.
        _set_outcome_dict(
            self,
            {
                "status": status,
                "run_id": run_id,
                "wake_at": wake_at,
                "dispatches": dispatches,
                "woken": woken,
                "workflow": workflow,
            },
        )


_set_outcome_dict = vars(Outcome)["__dict__"].__set__


async def create_run(
    storage: StorageBackend,
    definition: WorkflowDefinition,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
    start_guard: float | None = None,
    run_id: str | None = None,
    parent: dict[str, Any] | None = None,
    continued: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
) -> tuple[WorkflowRun, bool]:
    """Validate and encode the arguments, then record the run and ``workflow.started``.

    With ``start_guard`` (seconds), the run is recorded with a wake time that far ahead:
    if its first activation never runs (the message that was to start it was lost), the
    tick finds the timer due and sends one; the first activation clears it.
    ``schedule`` (``{"id", "scheduled_at"}``, for a run a schedule started) is recorded in
    ``workflow.started``.

    Returns the run and whether it was created (``False``: the idempotency key already
    named it). Bad arguments raise before anything is written: an argument that breaks
    the value policy or does not decode as its annotation, or an idempotency key that is
    too long (:data:`~pyworkflow.serialization.MAX_KEY_LENGTH`) or holds a NUL or a lone
    surrogate, raises :class:`~pyworkflow.errors.SerializationError` naming it.
    """
    definition.signature.check_call(args, kwargs)
    # Encoded and decoded back, as the first activation will: an argument that would not
    # decode fails here, at start(), not in the run.
    payload = definition.signature.encode_args_for_call(args, kwargs)[0]
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}")
        check_key(idempotency_key, f"start({definition.name}): idempotency_key")
    now = clock.now()
    deadline = now + definition.max_duration if definition.max_duration is not None else None
    run = trusted(
        WorkflowRun,
        {
            "run_id": run_id or new_run_id(),
            "workflow_name": definition.name,
            "status": _PENDING,
            "input": payload,
            "result": None,
            "error": None,
            "idempotency_key": idempotency_key,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
            "deadline": deadline,
            "wake_at": None if start_guard is None else now + timedelta(seconds=start_guard),
            "parent_run_id": None if parent is None else str(parent["run_id"]),
        },
    )
    data = {
        "workflow": definition.name,
        "input": payload,
        "idempotency_key": idempotency_key,
        "deadline": deadline.isoformat() if deadline else None,
        **({"parent": parent} if parent is not None else {}),
        **({"schedule": schedule} if schedule is not None else {}),
        **({"continued": continued} if continued is not None else {}),
    }
    if interceptors.CHAIN:
        stored, created = await _intercepted_start(storage, run, data, parent, schedule)
    else:
        stored, created = await storage.create_run(run, [new_event(1, _WORKFLOW_STARTED, now, data)])
    if not created and stored.workflow_name != definition.name:
        raise IdempotencyConflictError(
            f"idempotency key {idempotency_key!r} already names run {stored.run_id!r} of workflow "
            f"{stored.workflow_name!r}, not {definition.name!r}",
            run_id=stored.run_id,
            idempotency_key=idempotency_key,
        )
    if created:
        observability.engine_log("workflow_started", run_id=stored.run_id, workflow=definition.name)
    return stored, created


async def _intercepted_start(
    storage: StorageBackend,
    run: WorkflowRun,
    data: dict[str, Any],
    parent: dict[str, Any] | None,
    schedule: dict[str, Any] | None,
) -> tuple[WorkflowRun, bool]:
    """``create_run``'s write, wrapped by the interceptors, which may fill the carrier."""
    info = interceptors.StartInfo(
        run.run_id,
        run.workflow_name,
        run.idempotency_key,
        parent_run_id=None if parent is None else str(parent.get("run_id")),
        schedule_id=None if schedule is None else str(schedule.get("id")),
    )

    async def record() -> tuple[WorkflowRun, bool]:
        if info.carrier:
            data["carrier"] = {str(k): str(v) for k, v in info.carrier.items()}
        started = new_event(1, _WORKFLOW_STARTED, run.created_at, data)
        stored, created = await storage.create_run(run, [started])
        if created:
            interceptors.recorded(interceptors.RunInfo(run.run_id, run.workflow_name, info.carrier), [started])
            if info.carrier:
                interceptors.note_new_run(run.run_id, info.carrier)
        return stored, created

    return await interceptors.around_start(info, record)


async def activate(
    storage: StorageBackend,
    run_id: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    owner: str = OWNER,
    dispatch_guard: timedelta | None = None,
) -> Outcome:
    """Run one activation of ``run_id``. Safe to call any number of times, concurrently:
    only the lease holder moves the run, and a run that is not due is left alone.

    One storage call takes the lease and loads the run, its log and its pending inbox
    messages; the activation's last append records how it stopped and releases the lease.

    With ``dispatch_guard`` set, steps declared with a ``queue`` are not run here but
    returned in :attr:`Outcome.dispatches` for the runtime to send to step workers; a
    dispatched step not heard of within the guard time is sent again.
    """
    now = clock.now()
    try:
        begun = await storage.begin_activation(run_id, owner, lease_ttl, now=now)
    except storage.unavailable_errors as exc:
        raise unavailable(run_id, exc) from exc
    if begun.status != "leased":
        wake = begun.run.wake_at if begun.run is not None and begun.status == "not_due" else None
        return Outcome(begun.status, run_id, wake)
    assert begun.run is not None and begun.lease is not None
    renewer = _Renewer(storage, begun.lease, lease_ttl)
    try:
        if interceptors.CHAIN:
            outcome = await _intercepted_activation(begun, now, renewer, storage, clock, dispatch_guard, lease_ttl)
        else:
            outcome = await _activate_leased(storage, begun, clock, dispatch_guard, now, lease_ttl, renewer)
    except StorageFailure as failure:
        renewer.stop()
        error = failure.error
        await _let_go(storage, renewer.lease, error)
        raise error from error.__cause__
    except BaseException:
        # Keep the lease: when it expires the run is recovered like a crashed worker's,
        # which is what this is. Releasing it here could strand a half-done run.
        renewer.stop()
        raise
    renewer.stop()
    return outcome


async def _intercepted_activation(
    begun: Activation,
    now: datetime,
    renewer: _Renewer,
    storage: StorageBackend,
    clock: Clock,
    dispatch_guard: timedelta | None,
    lease_ttl: float,
) -> Outcome:
    run = begun.run
    assert run is not None
    first = begun.events[0] if begun.events else None
    carrier = interceptors.carrier_of(first.data) if first is not None and first.seq == 1 else {}
    info = interceptors.ActivationInfo(
        interceptors.RunInfo(run.run_id, run.workflow_name, carrier),
        str(run.status),
        run.wake_at,
        now,
        inbox=len(begun.messages),
        events=begun.events,
    )
    return await interceptors.around_activation(
        info, lambda: _activate_leased(storage, begun, clock, dispatch_guard, now, lease_ttl, renewer)
    )


class StorageFailure(Exception):
    """Inside the engine: recording failed for longer than the write budget."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


def _ended(ctx: RunContext) -> Outcome:
    """How an activation that may not write any more ends: ``lost`` when another writer
    took the run over; a storage error that outlasted the retries is raised instead."""
    if ctx.storage_failure is not None:
        raise StorageFailure(ctx.storage_failure)
    return Outcome("lost", ctx.run_id)


async def _let_go(storage: StorageBackend, lease: Lease, error: StorageError) -> None:
    """After recording failed for good: make the run due again and release its lease, so
    the retried task (or any activation) takes it over at once instead of after the lease
    expires. Each step is tried once; when storage is still down the lease simply
    expires and the tick recovers the run, as after a crash. The message comes first:
    a released lease with nothing due could leave a running run with no wake-up."""
    observability.engine_log(
        "activation_storage_failed", level="error", run_id=lease.run_id, error=f"{type(error).__name__}: {error}"
    )
    try:
        await storage.post_message(lease.run_id, INTERRUPTED_MESSAGE, {"reason": "storage error while recording"})
        await storage.release_lease(lease)
    except Exception as exc:  # noqa: BLE001 - storage still down: the lease expires instead
        observability.engine_log("lease_kept", level="warning", run_id=lease.run_id, error=str(exc))


async def _activate_leased(
    storage: StorageBackend,
    begun: Activation,
    clock: Clock,
    dispatch_guard: timedelta | None,
    now: datetime,
    lease_ttl: float,
    renewer: _Renewer,
) -> Outcome:
    run, lease = begun.run, begun.lease
    assert run is not None and lease is not None
    run_id = run.run_id
    try:
        history = fold(run_id, begun.events)
    except CorruptedHistoryError as exc:
        last_seq = begun.events[-1].seq if begun.events else 0
        ctx = RunContext(run, History(run_id, last_seq=last_seq), storage, clock, lease)
        return await _abort_unreadable(ctx, exc)
    ctx = RunContext(run, history, storage, clock, lease)
    ctx.events = begun.events
    ctx.dispatch_guard = dispatch_guard
    ctx.write_budget = lease_ttl / 2
    renewer.ctx = ctx  # told when the lease is lost; looks at the inbox for a cancellation
    status = run.status
    if status == _SUSPENDED or status == RunStatus.PAUSED or status == RunStatus.BLOCKED:
        reason = "message" if begun.messages else "wake_time_reached"
        ctx.timer_wake = not begun.messages
        ctx.buffer_event(EventType.WORKFLOW_RESUMED, {"reason": reason})
    elif status == _RUNNING:
        ctx.recovering = True
        ctx.buffer_event(EventType.WORKFLOW_INTERRUPTED, {"reason": "previous activation did not finish"})
    if begun.took_over and not ctx.recovering:
        # Its lease expired unreleased before the tick recovered it: the last activation
        # died, possibly before it wrote anything. Count its attempt, as recovery does.
        ctx.recovering = True
        ctx.buffer_event(EventType.WORKFLOW_INTERRUPTED, {"reason": "previous activation's lease expired"})
    if history.chain is not None and not history.inherited:
        from pyworkflow.continuation import inherit

        waiting = await inherit(ctx, history)  # what the previous run left, before our inbox
        if waiting is not None:
            return await _orphaned(ctx, waiting)
    if begun.messages:
        _take_messages(ctx, history, begun)
    # Running: no wake time (a claim-pushed timer must not be pulled back while it runs);
    # a crash is recovered through the lease, a message posted meanwhile sets the timer.
    ctx.changes["status"] = _RUNNING
    ctx.changes["wake_at"] = None

    try:
        definition = get_workflow(run.workflow_name)
    except WorkflowNotFoundError as exc:
        return await _fail(ctx, _unknown_workflow(exc))

    token = _run.set(ctx)
    try:
        result, failure = await _run_workflow(ctx, definition, run, now)
    finally:
        _run.reset(token)
    ctx.closed = True
    if ctx.in_flight:
        await ctx.wait_idle()

    if ctx.aborted is not None:
        return _ended(ctx)
    try:
        if ctx.fatal is not None:
            if definition.on_nondeterminism == "block":
                return await _block(ctx, ctx.fatal)
            return await _fail(ctx, ctx.fatal)
        if ctx.continued is not None and failure is None:
            return await _continued(ctx)
        if isinstance(failure, asyncio.CancelledError):
            return await _cancelled(ctx)
        if ctx.waits and failure is None:
            return await _suspend(ctx, run)
        if failure is not None:
            return await _fail(ctx, failure)
        unreplayed = ctx.history.get(ctx.calls + 1)
        if unreplayed is not None:
            diverged = _unreplayed(ctx, unreplayed.kind, unreplayed.name)
            if definition.on_nondeterminism == "block":
                return await _block(ctx, diverged)
            return await _fail(ctx, diverged)
        return await _complete(ctx, definition, result)
    except AbortSignal:
        return _ended(ctx)


def _take_messages(ctx: RunContext, history: History, begun: Activation) -> None:
    """Move the pending inbox messages into the log, in arrival order, with the first
    append (which marks them consumed); stale ones are consumed without an event."""
    for message in begun.messages:
        if message.kind == INTERRUPTED_MESSAGE:
            # The last activation died before it wrote anything (its status still says
            # suspended or pending); say so in the log, and count its attempt.
            if not ctx.recovering:
                ctx.recovering = True
                ctx.buffer.append(
                    (EventType.WORKFLOW_INTERRUPTED, {"reason": "previous activation died"}, message.posted_at)
                )
            ctx.consume.append(message.seq)
            continue
        admitted = history.admit(message.kind, message.payload, message.seq)
        if admitted is not None:
            try:
                history.apply(new_event(history.last_seq + 1, admitted[0], message.posted_at, admitted[1]))
            except CorruptedHistoryError as exc:  # a malformed message must not poison the run
                observability.engine_log(
                    "message_refused", level="warning", run_id=ctx.run_id, message=message.seq, error=str(exc)
                )
            else:
                ctx.buffer.append((admitted[0], admitted[1], message.posted_at))
        ctx.consume.append(message.seq)
    ctx.history, ctx.logged = history.calls, history.logs


async def recover_crashed(storage: StorageBackend, *, limit: int = 100) -> list[str]:
    """Fence the runs whose lease expired (their activation died) and make them due; tell
    each run in its inbox, so its next activation knows it was interrupted even when the
    dead one had written nothing. Returns the run ids."""
    recovered = await storage.recover_expired_leases(limit=limit)
    for run_id in recovered:
        with contextlib.suppress(StorageError):  # finished or deleted meanwhile
            await storage.post_message(run_id, INTERRUPTED_MESSAGE, {"reason": "lease expired"})
    return recovered


async def _abort_unreadable(ctx: RunContext, exc: CorruptedHistoryError) -> Outcome:
    try:
        return await _fail(ctx, exc)
    except AbortSignal:
        return _ended(ctx)


async def _run_workflow(
    ctx: RunContext, definition: WorkflowDefinition, run: WorkflowRun, now: datetime
) -> tuple[Any, BaseException | None]:
    """Call the workflow function; return its result or the failure to record."""
    deadline = run.deadline
    if deadline is not None and now >= deadline:
        return None, _timed_out(definition, run)
    try:
        args, kwargs = definition.signature.decode_args(run.input)
        call = definition.fn(*args, **kwargs)
        if ctx.dispatch_guard is not None:
            call = _until_parked(ctx, call)
        if deadline is None:
            return await call, None
        async with asyncio.timeout((deadline - now).total_seconds()) as scope:
            return await call, None
    except (SuspendSignal, AbortSignal, ContinueSignal):
        return None, None
    except BaseExceptionGroup as group:  # a TaskGroup whose children suspended
        rest = group.split((SuspendSignal, AbortSignal, ContinueSignal))[1]
        return None, rest
    except TimeoutError as exc:
        if deadline is not None and scope.expired():
            return None, _timed_out(definition, run)
        return None, exc
    except Exception as exc:  # noqa: BLE001 - an uncaught workflow error fails the run
        return None, exc
    except asyncio.CancelledError as exc:
        if ctx.cancel_delivered:  # the run's cancellation left the workflow: it ends cancelled
            return None, exc
        error = user_base_exception(exc, f"workflow {definition.name!r}")
        if error is None:
            raise  # a real cancellation of this activation, not the user's
        return None, error
    except BaseException as exc:  # KeyboardInterrupt, SystemExit … from the workflow's own code
        error = user_base_exception(exc, f"workflow {definition.name!r}")
        if error is None:
            raise  # a real cancellation of this activation, not the user's
        return None, error


async def _until_parked(ctx: RunContext, call: Coroutine[Any, Any, Any]) -> Any:
    """Run the workflow until it returns, or until every branch still going is parked on
    a dispatched step; then end it so the run can suspend.

    Parking instead of raising lets ``asyncio.gather`` over dispatched steps dispatch
    them all in one activation. A parked branch gives up the loop, so after a park the
    branches still runnable get a few loop turns to reach their own durable calls.
    """
    main = asyncio.ensure_future(call)
    try:
        while not main.done():
            parked = asyncio.ensure_future(ctx.parked.wait())
            await asyncio.wait({main, parked}, return_when=asyncio.FIRST_COMPLETED)
            parked.cancel()
            if main.done():
                break
            while not main.done():  # settle: until a pass in which nothing new happened
                ctx.parked.clear()
                calls = ctx.calls
                await ctx.wait_idle()
                for _ in range(5):
                    await asyncio.sleep(0)
                if ctx.calls == calls and not ctx.in_flight and not ctx.parked.is_set():
                    break
            if not main.done():
                ctx.closed = True
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await main
                raise SuspendSignal()
        return main.result()
    finally:
        if not main.done():
            main.cancel()


def _timed_out(definition: WorkflowDefinition, run: WorkflowRun) -> WorkflowTimeoutError:
    return WorkflowTimeoutError(
        f"run {run.run_id!r} of workflow {definition.name!r} exceeded its max_duration "
        f"({definition.max_duration}); deadline was {run.deadline.isoformat() if run.deadline else '?'}",
        run_id=run.run_id,
    )


def _unknown_workflow(exc: WorkflowNotFoundError) -> WorkflowNotFoundError:
    from pyworkflow import config

    modules = config.imported_modules()
    return WorkflowNotFoundError(
        exc.name,  # type: ignore[attr-defined]
        f"this process registered {workflow_names() or 'no workflows'} from modules "
        f"{modules or 'none'}; add the module defining it to PYWORKFLOW_IMPORTS",
    )


def _unreplayed(ctx: RunContext, kind: str, name: str) -> NonDeterminismError:
    return NonDeterminismError(
        f"run {ctx.run_id!r}: the workflow finished without making durable call #{ctx.calls + 1}, "
        f"recorded as {kind} {name!r}; workflow code must make the same durable calls on every replay",
        run_id=ctx.run_id,
        call_id=ctx.calls + 1,
    )


async def _complete(ctx: RunContext, definition: WorkflowDefinition, result: Any) -> Outcome:
    try:
        encoded = definition.signature.encode_result(result)
    except Exception as exc:  # noqa: BLE001 - an unencodable result fails the run
        return await _fail(ctx, exc)
    now = ctx.clock.now()
    await ctx.append(
        _WORKFLOW_COMPLETED,
        {"result": encoded},
        {"status": _COMPLETED, "result": encoded, "completed_at": now, "wake_at": None},
        final=True,
        at=now,
    )
    observability.engine_log("workflow_completed", run_id=ctx.run_id, workflow=ctx.workflow)
    woken = await _woken(ctx, "completed", encoded, None) if ctx.folded.family else ()
    return Outcome("completed", ctx.run_id, woken=woken)


async def _fail(ctx: RunContext, exc: BaseException) -> Outcome:
    error = describe_error(exc)
    await ctx.append(
        EventType.WORKFLOW_FAILED,
        {"error": error},
        {"status": _FAILED, "error": error, "completed_at": ctx.clock.now(), "wake_at": None},
        final=True,
    )
    observability.engine_log(
        "workflow_failed", level="warning", run_id=ctx.run_id, workflow=ctx.workflow, error=error["message"]
    )
    woken = await _woken(ctx, "failed", None, error) if ctx.folded.family else ()
    return Outcome("failed", ctx.run_id, woken=woken)


async def _block(ctx: RunContext, exc: BaseException) -> Outcome:
    """The code no longer makes the calls the log recorded: hold the run (no timer, no
    worker) with the error on it, for a fix and ``retry(run_id)``."""
    error = describe_error(exc)
    await ctx.append(
        EventType.WORKFLOW_BLOCKED,
        {"error": error},
        {"status": RunStatus.BLOCKED, "error": error, "wake_at": None},
        final=True,
    )
    observability.engine_log(
        "workflow_blocked", level="warning", run_id=ctx.run_id, workflow=ctx.workflow, error=error["message"]
    )
    return Outcome("blocked", ctx.run_id)


async def _cancelled(ctx: RunContext) -> Outcome:
    reason = ctx.folded.cancel_reason
    now = ctx.clock.now()
    await ctx.append(
        EventType.WORKFLOW_CANCELLED,
        {"reason": reason},
        {"status": RunStatus.CANCELLED, "completed_at": now, "wake_at": None},
        final=True,
        at=now,
    )
    observability.engine_log("workflow_cancelled", run_id=ctx.run_id, workflow=ctx.workflow, reason=reason)
    error = {"type": "asyncio.CancelledError", "message": f"run {ctx.run_id!r} was cancelled", "traceback": ""}
    woken = await _woken(ctx, "cancelled", None, error) if ctx.folded.family else ()
    return Outcome("cancelled", ctx.run_id, woken=woken)


async def _continued(ctx: RunContext) -> Outcome:
    """continue_as_new() ended the workflow: the next run exists already (created first);
    record this run's end naming it, and make it due."""
    assert ctx.continued is not None
    next_run = ctx.continued["run_id"]
    now = ctx.clock.now()
    await ctx.append(
        EventType.WORKFLOW_CONTINUED,
        ctx.continued,
        {"status": RunStatus.CONTINUED, "completed_at": now, "wake_at": None},
        final=True,
        at=now,
    )
    observability.engine_log("workflow_continued", run_id=ctx.run_id, workflow=ctx.workflow, next_run=next_run)
    woken = await _woken(ctx, "continued", None, None) if ctx.folded.family else ()
    return Outcome("continued", ctx.run_id, woken=((next_run, ctx.workflow), *woken))


async def _orphaned(ctx: RunContext, previous: str) -> Outcome:
    """A continued run activated before its previous run recorded continuing to it
    (``previous == "wait"``: its start guard fired early) waits for it; one whose previous
    run ended otherwise (crashed after creating it, then cancelled) never runs: it ends
    cancelled."""
    chain = ctx.folded.chain
    assert chain is not None
    if previous == "wait":
        from pyworkflow.continuation import PREDECESSOR_POLL

        wake = ctx.clock.now() + PREDECESSOR_POLL
        await ctx.append(
            EventType.WORKFLOW_SUSPENDED,
            {"wake_at": wake.isoformat(), "waiting_on": [], "previous_run": chain["from"]},
            {"status": _SUSPENDED, "wake_at": wake},
            final=True,
        )
        return Outcome("suspended", ctx.run_id, wake)
    reason = f"the run it continues, {chain['from']!r}, ended {previous} without continuing to it"
    now = ctx.clock.now()
    await ctx.append(
        EventType.WORKFLOW_CANCELLED,
        {"reason": reason},
        {"status": RunStatus.CANCELLED, "completed_at": now, "wake_at": None},
        final=True,
        at=now,
    )
    observability.engine_log("workflow_cancelled", run_id=ctx.run_id, workflow=ctx.workflow, reason=reason)
    return Outcome("cancelled", ctx.run_id)


async def _woken(ctx: RunContext, status: str, result: Any, error: dict[str, Any] | None) -> tuple[Woken, ...]:
    """The runs an ended run with a family makes due: children it started in this
    activation, and its family (see :func:`_family_told`)."""
    return tuple(ctx.children or ()) + await _family_told(ctx, status, result, error)


async def _family_told(ctx: RunContext, status: str, result: Any, error: dict[str, Any] | None) -> tuple[Woken, ...]:
    """After a run's end is recorded: its parent is told through its inbox (the parent
    also polls, should this message be lost with the worker), and its attached children
    still running are cancelled. Returns the runs made due."""
    from pyworkflow.continuation import post_along_chain
    from pyworkflow.history import CHILD_MESSAGE, CallKind

    storage, woken = ctx.storage, list[Woken]()
    parent = ctx.folded.parent
    if parent is not None and status != "continued":  # the chain's last run tells it
        chain = ctx.folded.chain
        payload = {
            "call_id": parent["call_id"],
            "run_id": chain["first_run_id"] if chain else ctx.run_id,  # the id the parent knows
            "status": status,
            "result": result,
            "error": error,
        }
        try:
            await storage.post_message(
                parent["run_id"], CHILD_MESSAGE, payload, idempotency_key=f"child:{parent['call_id']}"
            )
            woken.append((parent["run_id"], parent.get("workflow")))
        except StorageError as exc:  # finished or gone: nobody waits
            observability.engine_log("parent_not_told", run_id=ctx.run_id, parent=parent["run_id"], error=str(exc))
    for rec in ctx.history.values():
        if rec.kind == CallKind.CHILD and rec.args is not None and not rec.args.get("detached"):
            if rec.state in (CallState.WAITING, CallState.CANCELLED):
                child = rec.args["run_id"]
                try:  # an attached child does not outlive its parent (nor its chain)
                    reached, _ = await post_along_chain(
                        storage, child, CANCEL_MESSAGE, {"reason": "its parent ended"}, idempotency_key="cancel"
                    )
                    woken.append((reached, rec.name))
                except StorageError as exc:  # it ended already: nothing to cancel
                    observability.engine_log("child_not_cancelled", run_id=ctx.run_id, child=child, error=str(exc))
    return tuple(woken)


async def _pause(ctx: RunContext, run: WorkflowRun) -> Outcome:
    """pause() held the run: no wake time (timers that fall due meanwhile act after
    unpause, when replay finds them passed), but its deadline still fails it on time."""
    await ctx.append(
        EventType.WORKFLOW_PAUSED,
        {"waiting_on": sorted(ctx.waits)},
        {"status": RunStatus.PAUSED, "wake_at": run.deadline},
        final=True,
    )
    observability.engine_log("workflow_paused", run_id=ctx.run_id, workflow=ctx.workflow)
    return Outcome("paused", ctx.run_id)


async def _suspend(ctx: RunContext, run: WorkflowRun) -> Outcome:
    if ctx.held:
        return await _pause(ctx, run)
    timed = [at for at in ctx.waits.values() if at is not None]
    wake = min(timed) if timed else None  # None: only a message (a signal) wakes the run
    if run.deadline is not None and (wake is None or run.deadline < wake):
        wake = run.deadline  # wake in time to fail the run at its deadline
    # The timer follows wake_at in the same write; a message that arrived meanwhile keeps
    # the run due now (earliest wins, in storage).
    at = wake.isoformat() if wake is not None else None
    await ctx.append(
        EventType.WORKFLOW_SUSPENDED,
        {"wake_at": at, "waiting_on": sorted(ctx.waits)},
        {"status": _SUSPENDED, "wake_at": wake},
        final=True,
    )
    observability.engine_log("workflow_suspended", run_id=ctx.run_id, workflow=ctx.workflow, wake_at=at)
    # Dispatched steps are sent only now: a step sent for a run that then failed is not
    # worth running, and its outcome message finds the run suspended.
    return Outcome("suspended", ctx.run_id, wake, tuple(ctx.dispatches or ()), tuple(ctx.children or ()), ctx.workflow)


class _Renewer:
    """Renews one activation's lease every third of its ttl while it runs (long steps).

    A failed renewal (a storage hiccup) is tried again at once and then on schedule;
    renewals stop only when the lease is really gone (taken over or released). The
    renewers of one event loop share one timer (:class:`_Renewals`): a short activation
    costs a set insertion instead of a timer of its own.
    """

    __slots__ = ("lease", "due", "ctx", "_storage", "_ttl", "_renewals", "_context", "_task")

    def __init__(self, storage: StorageBackend, lease: Lease, ttl: float) -> None:
        self.lease = lease
        self._storage = storage
        self._ttl = ttl
        self._task: asyncio.Task[None] | None = None
        #: Called after each renewal: the activation looks at its inbox (a cancellation).
        #: The activation's run context: told when the lease is gone (it stops its running
        #: steps), and asked after each renewal to look at its inbox (a cancellation).
        self.ctx: RunContext | None = None
        self._context = contextvars.copy_context()  # as a timer of its own would have run in
        loop = asyncio.get_running_loop()
        self._renewals = renewals = _renewals_of(loop)
        self.due = loop.time() + ttl / 3  # loop time of the next renewal
        renewals.add(self)

    def renew(self, loop: asyncio.AbstractEventLoop) -> None:
        self.due = math.inf  # until this renewal is done
        self._task = loop.create_task(self._renew(), context=self._context)

    async def _renew(self) -> None:
        delay = min(1.0, self._ttl / 10)
        while True:
            try:
                renewed = await self._storage.renew_lease(self.lease, self._ttl)
                break
            except Exception as exc:  # noqa: BLE001 - keep trying until the lease is really gone
                observability.engine_log(
                    "lease_renew_failed", level="warning", run_id=self.lease.run_id, error=str(exc)
                )
                if time.time() + delay >= self.lease.expires_at:
                    observability.engine_log("lease_lost", level="warning", run_id=self.lease.run_id)
                    if self.ctx is not None:
                        self.ctx.lease_lost()
                    return
                await asyncio.sleep(delay)
        if renewed is None:
            observability.engine_log("lease_lost", level="warning", run_id=self.lease.run_id)
            if self.ctx is not None:
                self.ctx.lease_lost()
            return
        self.lease = renewed
        if self.ctx is not None:
            await self.ctx.check_inbox()
        if self in self._renewals.active:
            self.due = asyncio.get_running_loop().time() + self._ttl / 3
            self._renewals.wake_by(self.due)

    def stop(self) -> None:
        self._renewals.active.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _Renewals:
    """The renewers of one event loop and the one timer that serves them: it fires at
    the earliest renewal due, starts every renewal due, and is set again for the next.

    No reference to the loop is kept (the table below holds loops weakly); a timer that
    was superseded by an earlier one finds its time no longer current and does nothing.
    """

    __slots__ = ("active", "_at", "__weakref__")

    def __init__(self) -> None:
        self.active: set[_Renewer] = set()
        self._at = math.inf  # loop time the current timer fires at

    def add(self, renewer: _Renewer) -> None:
        self.active.add(renewer)
        if renewer.due < self._at:
            self.wake_by(renewer.due)

    def wake_by(self, at: float) -> None:
        if at < self._at:
            self._at = at
            asyncio.get_running_loop().call_at(at, self._tick, at)

    def _tick(self, at: float) -> None:
        if at != self._at:
            return  # superseded by an earlier timer
        self._at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        following = math.inf
        for renewer in list(self.active):
            if renewer.due <= now:
                renewer.renew(loop)
            elif renewer.due < following:
                following = renewer.due
        if following < math.inf:
            self.wake_by(following)


_RENEWALS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Renewals] = weakref.WeakKeyDictionary()


def _renewals_of(loop: asyncio.AbstractEventLoop) -> _Renewals:
    try:
        renewals = _RENEWALS.get(loop)
        if renewals is None:
            renewals = _RENEWALS[loop] = _Renewals()
    except TypeError:  # a loop that cannot be weakly referenced: a timer of its own
        renewals = _Renewals()
    return renewals
