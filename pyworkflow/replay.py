"""The replay context: what a running workflow's durable calls consult and record.

Each durable call (step, sleep) takes the next id from a counter, in call order. If the
run's log holds that call's outcome, the call returns it at once; otherwise it runs and
its events are appended. ``asyncio.gather`` over durable calls starts them in argument
order, so their ids are stable too. Workflow log lines have a counter of their own, so
adding one never shifts the ids of steps and sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from pyworkflow import interceptors as _interceptors
from pyworkflow.backoff import retry_at
from pyworkflow.clock import Clock
from pyworkflow.durations import Duration, wake_time
from pyworkflow.errors import (
    FatalError,
    LeaseLostError,
    NonDeterminismError,
    RunNotFoundError,
    SequenceConflictError,
    SerializationError,
    StepCrashedError,
    StepFailedError,
    StepTimeoutError,
    StorageError,
)
from pyworkflow.events import Event, EventType, new_event
from pyworkflow.history import CANCEL_MESSAGE, PAUSE_MESSAGE, UNPAUSE_MESSAGE, CallKind, CallRecord, CallState, History
from pyworkflow.registry import StepDefinition
from pyworkflow.storage.base import Lease, Message, StorageBackend, WorkflowRun, escaped_text, unavailable

if TYPE_CHECKING:
    from pyworkflow.dispatch import Dispatch


class SuspendSignal(BaseException):
    """The run must wait; the activation ends with the run suspended. Not for user code."""


class AbortSignal(BaseException):
    """This activation may not write any more (lease lost, another writer). Not for user code."""


class ContinueSignal(BaseException):
    """``continue_as_new()`` ended the workflow's code; the activation records the run's
    end and the next run. Not for user code."""

    def __init__(self, next_run_id: str) -> None:
        super().__init__(f"the run continues as {next_run_id!r}")
        self.next_run_id = next_run_id


class WorkflowCancelledError(asyncio.CancelledError):
    """The run was cancelled (``pyworkflow.cancel``): raised at the durable call the run
    waits in, or its next one. An ``asyncio.CancelledError``: the workflow may catch it,
    run cleanup steps, and re-raise (the run ends ``cancelled``) or return a result."""

    def __init__(self, run_id: str, reason: str | None) -> None:
        super().__init__(f"run {run_id!r} was cancelled" + (f": {reason}" if reason else ""))
        self.run_id, self.reason = run_id, reason


#: An event waiting for the next append: type, data, and its own time (or the append's).
_Pending = tuple[str, dict[str, Any], datetime | None]

#: A step the activation began without writing its step.started is written after this long.
DEFERRED_START_FLUSH = 0.5
_STEP_STARTED: str = EventType.STEP_STARTED.value
_STEP_COMPLETED: str = EventType.STEP_COMPLETED.value

#: Storage errors that mean another writer owns the run now: never retried.
_LOST = (LeaseLostError, SequenceConflictError, RunNotFoundError)
#: A storage error while recording is retried with backoff from 50 ms, doubling up to
#: this cap, for as long as the activation's write budget allows (half the lease ttl).
WRITE_RETRY_CAP = 1.0
#: Half the default lease: how long an activation retries a failing write by default.
WRITE_BUDGET = 7.5


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a running step may know about itself (see :func:`pyworkflow.current_step`)."""

    run_id: str
    workflow: str
    step: str
    call_id: int
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and replays: use it to make side effects idempotent."""
        return f"{self.run_id}:{self.call_id}"


#: The fields of a :class:`StepInfo`, which :func:`current_step` builds when asked: a
#: frozen dataclass costs five ``object.__setattr__`` calls, and most steps never ask.
_StepFields = tuple[str, str, str, int, int]

_run: ContextVar[RunContext | None] = ContextVar("pyworkflow_run", default=None)
#: Set (not ``None``) while a step runs: its :class:`StepInfo`, or the fields of one.
_step: ContextVar[StepInfo | _StepFields | None] = ContextVar("pyworkflow_step", default=None)


def current_run() -> RunContext | None:
    return _run.get()


def current_step() -> StepInfo | None:
    """The step running now (inside a step of a workflow run), else ``None``."""
    info = _step.get()
    if type(info) is tuple:
        return StepInfo(*info)
    return info  # type: ignore[return-value]


def describe_error(exc: BaseException) -> dict[str, Any]:
    """An exception as recorded in ``step.failed``/``workflow.failed`` events. NUL
    characters and lone surrogates in its text are written as escapes: every backend can
    store them (PostgreSQL text cannot hold a NUL), and nothing of the message is lost."""
    cls = type(exc)
    described: dict[str, Any] = escaped_text(
        {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
        }
    )
    return described


def rebuild_error(error: Mapping[str, Any]) -> Exception:
    """The exception a recorded step failure stands for, as close to the original as we can.

    Only classes of modules already imported are considered: replaying a log never
    imports code.
    """
    path, message = str(error.get("type", "")), str(error.get("message", ""))
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            try:
                return obj(message)
            except Exception:  # noqa: BLE001 - a constructor wanting other arguments
                break
        break
    return StepFailedError(f"{path}: {message}", error_type=path)


class _SoonFlushes:
    """The activations of one event loop with a completion waiting for the next append:
    one callback on the loop's next turn serves them all (a callback each would cost
    more than the rest of a short step)."""

    __slots__ = ("pending", "__weakref__")

    def __init__(self) -> None:
        self.pending: list[RunContext] = []

    def _run(self) -> None:
        pending, self.pending = self.pending, []
        for ctx in pending:
            ctx._flush_if_idle()


_SOON: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SoonFlushes] = weakref.WeakKeyDictionary()


def _flushes_soon(ctx: RunContext) -> None:
    """Flush ``ctx`` on the running loop's next turn (unless an append came first)."""
    loop = asyncio.get_running_loop()
    try:
        flushes = _SOON.get(loop)
        if flushes is None:
            flushes = _SOON[loop] = _SoonFlushes()
    except TypeError:  # a loop that cannot be weakly referenced
        loop.call_soon(ctx._flush_if_idle)
        return
    if not flushes.pending:
        loop.call_soon(flushes._run)
    flushes.pending.append(ctx)


def _current_task() -> asyncio.Task[Any] | None:
    """The running task. On Python 3.11 ``asyncio.current_task`` is Python code; its
    table is read directly here (a step asks once per attempt), with the public function
    as the fallback where the table is not there."""
    if _CURRENT_TASKS is not None:
        return _CURRENT_TASKS.get(asyncio.get_running_loop())
    return asyncio.current_task()


_CURRENT_TASKS: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)

#: The inline step attempts running now in this process, by task: the run context and
#: the step (for a cancellation or a lost lease to interrupt them). Two module-level
#: tables, so that a step costs two dict writes and no allocation.
_RUNNING_CTX: dict[asyncio.Task[Any], RunContext] = {}
_RUNNING_STEP: dict[asyncio.Task[Any], StepDefinition] = {}


class RunContext:
    """One activation's view of one run: replays recorded calls, records new ones."""

    # Slots: fixed offsets for the many attribute reads of the hot path (an instance dict
    # of this many keys would stop being shared, and every self.x read would slow down).
    __slots__ = (
        "run_id",
        "workflow",
        "storage",
        "clock",
        "lease",
        "_token",
        "history",
        "logged",
        "folded",
        "next_seq",
        "_first_seq",
        "recovering",
        "_must_write",
        "_bumped",
        "consume",
        "release",
        "calls",
        "log_calls",
        "state_calls",
        "buffer",
        "changes",
        "waits",
        "closed",
        "in_flight",
        "_idle",
        "fatal",
        "aborted",
        "storage_failure",
        "write_budget",
        "cancel_delivered",
        "cancel_message",
        "pause_messages",
        "arrived",
        "held",
        "replay_only",
        "stopped",
        "children",
        "timer_wake",
        "_appending",
        "_turns",
        "_flush_scheduled",
        "_flusher",
        "dispatch_guard",
        "dispatches",
        "_parked",
        "continued",
        "events",
        "call_index",
    )

    def __init__(
        self,
        run: WorkflowRun,
        history: History,
        storage: StorageBackend,
        clock: Clock,
        lease: Lease,
    ) -> None:
        self.run_id = run.run_id
        self.workflow = run.workflow_name
        self.storage = storage
        self.clock = clock
        self.lease = lease
        self._token = lease.token
        self.history, self.logged = history.calls, history.logs
        self.folded = history  # signals are matched to waits on the folded log
        self.next_seq = history.last_seq + 1
        self._first_seq = self.next_seq
        # An activation after a crash writes every step.started before the step runs, so
        # a step that keeps killing its worker is counted (see _defer_first_record).
        self.recovering = False
        self._must_write = False  # something buffered must be durable before a step runs
        self._bumped = False
        self.consume: list[int] = []  # inbox messages the next append records as consumed
        self.release = False  # the next append releases the lease (the activation's last)
        self.calls = 0
        self.log_calls = 0
        self.state_calls = 0
        self.buffer: list[_Pending] = []
        self.changes: dict[str, Any] = {}
        #: What the run waits on when it suspends: call id → wake time (``None``: a
        #: message, e.g. a signal wait without a timeout).
        self.waits: dict[int, datetime | None] = {}
        self.closed = False  # no new work may start: suspending, failing or finished
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.fatal: NonDeterminismError | None = None
        self.aborted: BaseException | None = None
        #: A storage error that outlasted the write budget: the activation ends by raising
        #: it (the runtime retries), not as "lost", which means another writer took over.
        self.storage_failure: StorageError | None = None
        #: How long a failing write is retried: half the lease (the engine sets it).
        self.write_budget = WRITE_BUDGET
        #: Set once a cancellation was raised into the workflow in this activation.
        self.cancel_delivered = False
        #: A cancel message seen while the activation runs (see :meth:`check_inbox`), not
        #: yet in the log (its inline steps are found in _RUNNING_CTX).
        self.cancel_message: Message | None = None
        #: pause/unpause messages seen while the activation runs, taken at the next call.
        self.pause_messages: list[Message] | None = None  # made on first use (see _RUNNING_CTX)
        #: Whether any such message waits to be taken (one test per durable call).
        self.arrived = False
        #: Set when pause() holds the run at a durable call: the activation ends paused.
        self.held = False
        #: A replay check (pyworkflow.testing.replay): stop at the first call the log does
        #: not hold, run nothing; ``stopped`` says it did.
        self.replay_only = False
        self.stopped = False
        #: Child runs created in this activation (made on first use), for the runtime to
        #: activate once this activation's last append is written.
        self.children: list[tuple[str, str | None]] | None = None
        #: Whether this activation was woken by time rather than by a message (a parent
        #: then looks at its children itself, should a child's message have been lost).
        self.timer_wake = False
        self._appending = False
        self._turns: deque[asyncio.Future[None]] | None = None  # appends waiting: made when contended
        self._flush_scheduled = False
        self._flusher: asyncio.Task[None] | None = None  # a reference, so the loop cannot drop the task
        # Dispatched steps (Celery runtime only): None runs every step inline.
        self.dispatch_guard: timedelta | None = None
        self.dispatches: list[Dispatch] | None = None  # made by the first dispatch
        self._parked: asyncio.Event | None = None
        #: Set by continue_as_new(): the workflow.continued event's data, for the engine.
        self.continued: dict[str, Any] | None = None
        #: The log as loaded at the activation's start, and an index of it made when
        #: workflow_info() first needs one.
        self.events: list[Event] | None = None
        self.call_index: tuple[dict[int, int], list[int]] | None = None

    @property
    def first_seq(self) -> int:
        """The seq of this activation's first event (one past the log it loaded)."""
        return self._first_seq

    @property
    def parked(self) -> asyncio.Event:
        """Set when a branch parks on a dispatched step (made on first use: only the
        Celery runtime's dispatching activations need it)."""
        if self._parked is None:
            self._parked = asyncio.Event()
        return self._parked

    # -- recording ----------------------------------------------------------------------

    async def append(
        self,
        type: str,
        data: dict[str, Any],
        changes: Mapping[str, Any] | None = None,
        *,
        final: bool = False,
        at: datetime | None = None,
    ) -> None:
        """Append one event (after any buffered ones), with run changes, atomically. The
        ``final`` append of an activation also releases the lease. ``at`` is the event's
        time when the caller already read the clock for it (default: now)."""
        self.release = final
        await self._write(type, data, changes, at)

    async def flush(self) -> None:
        """Write what is buffered, if anything."""
        await self._write(None, None, None)

    async def _write(
        self, type: str | None, data: Any, changes: Mapping[str, Any] | None, at: datetime | None = None
    ) -> None:
        # One append at a time (gather branches share the log's sequence numbers). The
        # common, uncontended case costs a flag test instead of an asyncio.Lock round.
        if self._appending:
            await self._wait_turn()
        self._appending = True
        try:
            if self.aborted is not None:
                raise AbortSignal()
            buffer = self.buffer
            taken = len(buffer)  # a snapshot: more may be buffered while this append runs
            if not taken and type is None:
                return
            now = self.clock.now() if at is None else at
            seq = self.next_seq
            batch = [new_event(seq + i, t, now if when is None else when, d) for i, (t, d, when) in enumerate(buffer)]
            if type is not None:
                batch.append(new_event(seq + taken, type, now, data))
            if changes:
                self.changes.update(changes)
            try:
                await self._append_call(batch)
            except _LOST as exc:
                # Another activation owns this run now; whatever user code does with the
                # signal, this activation writes nothing more.
                self.aborted, self.closed = exc, True
                raise AbortSignal() from exc
            except Exception as exc:
                if not self._retried(exc):
                    raise
                await self._append_retrying(batch, exc)
            self.next_seq = seq + len(batch)
            if _interceptors.CHAIN:
                _interceptors.recorded(self.run_info(), batch)
            if taken:
                del buffer[:taken]
            if self.changes:
                self.changes = {}
            if self.consume:
                self.consume = []
        finally:
            self._appending = False
            if self._turns:
                self._pass_turn()

    def run_info(self) -> _interceptors.RunInfo:
        """This run as interceptors see it."""
        return _interceptors.RunInfo(self.run_id, self.workflow, self.folded.carrier or {})

    def _append_call(self, batch: list[Event]) -> Awaitable[None]:
        """The storage call of an append (a plain function: no coroutine layer of its own)."""
        return self.storage.append_events(
            self.run_id,
            batch,
            lease_token=self._token,
            run_changes=self.changes or None,
            consume=self.consume,
            release_lease=self.release,
        )

    async def _wait_turn(self) -> None:
        while self._appending:
            turn = asyncio.get_running_loop().create_future()
            if self._turns is None:
                self._turns = deque()
            self._turns.append(turn)
            await turn

    def _pass_turn(self) -> None:
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _retried(self, exc: Exception) -> bool:
        """Whether a failed append is worth trying again: a storage error, or a driver's
        "unreachable" error (not made per activation: a tuple each time costs the GC)."""
        return isinstance(exc, StorageError) or isinstance(exc, self.storage.unavailable_errors)

    async def _append_retrying(self, batch: list[Event], error: BaseException) -> None:
        """The append again, after a storage error (connection cut, database locked), with
        backoff, within the write budget: only another writer means this activation lost
        the run. An error that outlasts the budget ends the activation with
        :attr:`storage_failure` set."""
        from pyworkflow import observability

        deadline = time.monotonic() + self.write_budget
        delay, attempt = 0.05, 0
        while time.monotonic() + delay <= deadline:
            attempt += 1
            observability.engine_log(
                "storage_write_retry", level="warning", run_id=self.run_id, error=str(error), attempt=attempt
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, WRITE_RETRY_CAP)
            try:
                await self._append_call(batch)
                return
            except _LOST as exc:
                self.aborted, self.closed = exc, True
                raise AbortSignal() from exc
            except Exception as exc:
                if not self._retried(exc):
                    raise
                error = exc
        failure = error if isinstance(error, StorageError) else unavailable(self.run_id, error)
        self.aborted, self.closed, self.storage_failure = failure, True, failure
        raise AbortSignal() from error

    def buffer_event(self, type: str, data: dict[str, Any]) -> None:
        """Record ``type`` with the next append (log lines, resume markers, completions),
        stamped with the time it happened."""
        self.buffer.append((type, data, self.clock.now()))

    def record_soon(self, type: str, data: dict[str, Any]) -> None:
        """Record ``type`` with the next append, or on the next loop turn if none comes.

        A step's completion goes this way: the workflow's next durable call (usually
        straight after) carries it in the same write, and when nothing follows at once
        (another gather branch still busy) it is written on the next turn of the loop.
        The step is no more exposed to a re-run than if it were written at once.
        """
        self.buffer_event(type, data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            _flushes_soon(self)

    def _flush_if_idle(self) -> None:
        self._flush_scheduled = False
        if self.buffer and not self._appending and self.aborted is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        # A refused write sets ctx.aborted; the activation then ends as "lost".
        with contextlib.suppress(AbortSignal):
            await self.flush()

    # -- durable calls ------------------------------------------------------------------

    def _next_call(self) -> int:
        self.calls += 1
        return self.calls

    def next_log_call(self) -> int | None:
        """The id for a workflow log line, or ``None`` when replay already recorded it."""
        self.log_calls += 1
        return None if self.log_calls in self.logged else self.log_calls

    def _expect(self, rec: CallRecord, call_id: int, kind: CallKind, name: str) -> None:
        if rec.kind == kind and rec.name == name:
            return
        self.fatal = NonDeterminismError(
            f"run {self.run_id!r}: durable call #{call_id} was recorded as {rec.kind} {rec.name!r} "
            f"but the workflow now calls {kind} {name!r}; workflow code must make the same durable "
            "calls in the same order on every replay (use steps for anything non-deterministic)",
            run_id=self.run_id,
            call_id=call_id,
            recorded=f"{rec.kind} {rec.name}",
            called=f"{kind} {name}",
        )
        self.closed = True
        raise self.fatal

    def _wait(self, call_id: int, until: datetime | None) -> NoReturn:
        self.waits[call_id] = until
        self.closed = True
        raise SuspendSignal()

    # -- for the durable calls defined elsewhere (signals, state, webhooks) --------------

    def begin_call(self, kind: CallKind, name: str) -> tuple[int, CallRecord | None]:
        """The next durable call's id and its record, if the log has one (checked to be
        the same kind and name: NonDeterminismError otherwise). A call where the run's
        cancellation is delivered raises it."""
        if self.arrived:
            self.admit_arrived()
        call_id = self._next_call()
        rec = self.history.get(call_id)
        if rec is not None:
            self._expect(rec, call_id, kind, name)
            if rec.state == CallState.CANCELLED:
                raise self.cancelled()
        elif self.folded.cancel_pending:
            self.cancel_here(call_id, kind, name)
        elif self.folded.paused:
            self.hold(call_id)
        elif self.replay_only:
            self.frontier()
        return call_id, rec

    @property
    def recorded_calls(self) -> int:
        """The highest durable call id the log holds (0: none)."""
        return max(self.history, default=0)

    def frontier(self) -> None:
        """A new durable call: in a replay check, the log ends here; stop."""
        if self.replay_only:
            self.stopped = self.closed = True
            raise SuspendSignal()

    def hold(self, call_id: int) -> NoReturn:
        """pause(): end the activation here, before this call does anything; the run is
        ``paused`` until a message (unpause, cancel) moves it, then replays to here."""
        self.held = True
        self._wait(call_id, None)

    def lease_lost(self) -> None:
        """The lease is gone (taken over, or expired while renewals failed): nothing more
        may be written, and the inline steps running now are cancelled at their next
        ``await``, so a step does not go on in two places while another worker retries it."""
        if self.aborted is None:
            self.aborted = LeaseLostError(self.run_id)
        self.closed = True
        for task, _ in self.running_steps():
            task.cancel()

    def running_steps(self) -> list[tuple[asyncio.Task[Any], StepDefinition]]:
        """The tasks running this activation's inline step attempts now, and their steps."""
        return [(task, _RUNNING_STEP[task]) for task, ctx in list(_RUNNING_CTX.items()) if ctx is self]

    async def check_inbox(self) -> None:
        """Look at the inbox while this activation runs (called with each lease renewal):
        a cancellation interrupts the inline steps that allow it; it, a pause or an
        unpause is taken into the log at the next durable call."""
        if self.aborted is not None:
            return
        try:
            messages = await self.storage.get_messages(self.run_id)
        except Exception:  # noqa: BLE001 - the next renewal looks again
            return
        seen = {m.seq for m in self.pause_messages or ()}
        for message in messages:
            if message.seq in self.consume or message.seq in seen:
                continue
            if message.kind == CANCEL_MESSAGE:
                if self.folded.cancel_requested or self.cancel_message is not None:
                    continue
                self.cancel_message = message
                self.arrived = True
                for task, defn in self.running_steps():
                    if not defn.finish_on_cancel:
                        task.cancel()
            elif message.kind in (PAUSE_MESSAGE, UNPAUSE_MESSAGE):
                if self.pause_messages is None:
                    self.pause_messages = []
                self.pause_messages.append(message)
                self.arrived = True

    def admit_arrived(self) -> None:
        """Move the messages seen mid-activation into the log, in arrival order (consumed
        with the next append): a cancellation cancels what waits, or the next new call; a
        pause holds the run at its next new call."""
        arrived = list(self.pause_messages or ())
        if self.cancel_message is not None:
            arrived.append(self.cancel_message)
        self.cancel_message, self.pause_messages, self.arrived = None, None, False
        for message in sorted(arrived, key=lambda m: m.seq):
            admitted = self.folded.admit(message.kind, message.payload, message.seq)
            self.consume.append(message.seq)
            if admitted is not None:
                self.buffer.append((admitted[0], admitted[1], message.posted_at))
                self.folded.apply(new_event(self.folded.last_seq + 1, admitted[0], message.posted_at, admitted[1]))
                self._must_write = True

    def cancelled(self) -> WorkflowCancelledError:
        """The error a cancelled call raises (the same on every replay)."""
        self.cancel_delivered = True
        return WorkflowCancelledError(self.run_id, self.folded.cancel_reason)

    def cancel_here(self, call_id: int, kind: CallKind, name: str) -> NoReturn:
        """Deliver the pending cancellation at this new call: recorded, then raised."""
        self.decide(EventType.CALL_CANCELLED, {"call_id": call_id, "kind": str(kind), "name": name})
        self.folded.cancel_call(call_id, kind, name)
        raise self.cancelled()

    def decide(self, type: str, data: dict[str, Any]) -> None:
        """Record a decision taken on the folded log (a wait that took a buffered signal,
        a timeout): with the next append, and before any step runs, so nothing done on
        the strength of it happens unrecorded."""
        if self.aborted is not None or self.fatal is not None:
            raise SuspendSignal()
        self.buffer_event(type, data)
        self._must_write = True

    def decide_folded(self, type: str, data: dict[str, Any]) -> None:
        """:meth:`decide`, and fold the event into this activation's view of the log at
        once (later calls of this activation see it, as replay will)."""
        self.decide(type, data)
        self.folded.apply(new_event(self.folded.last_seq + 1, type, self.clock.now(), data))

    def suspend_on(self, call_id: int, until: datetime | None) -> NoReturn:
        """End the activation waiting on ``call_id`` until ``until`` (``None``: until a
        message arrives)."""
        self._wait(call_id, until)

    def next_state_call(self) -> int | None:
        """The index of a ``set_state`` call, or ``None`` when replay already recorded it."""
        self.state_calls += 1
        states = self.folded.states
        return None if states is not None and self.state_calls in states else self.state_calls

    def _begin(self) -> None:
        if self.closed:
            raise SuspendSignal()
        self.in_flight += 1

    def _end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no step of this activation is running (gather branches finish)."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def value(
        self, kind: str, produce: Callable[[], Any], encode: Callable[[Any], Any], decode: Callable[[Any], Any]
    ) -> Any:
        """A non-deterministic value (time, uuid, random) recorded once, replayed after.

        Recorded with the next append: anything durable that depends on the value is
        written after it, so a crash before then only means a fresh value next time,
        which nothing recorded has seen.
        """
        call_id = self._next_call()
        rec = self.history.get(call_id)
        if rec is not None:
            self._expect(rec, call_id, CallKind.VALUE, kind)
            return decode(rec.result)
        value = produce()
        self.buffer_event(EventType.VALUE_RECORDED, {"call_id": call_id, "kind": kind, "value": encode(value)})
        self._must_write = True  # a step may use it: it is written before any step runs
        return value

    async def sleep(self, value: Duration | datetime) -> None:
        now = self.clock.now()
        wake = wake_time(value, now)
        if self.arrived:
            self.admit_arrived()
        call_id = self._next_call()
        rec = self.history.get(call_id)
        if rec is not None:
            self._expect(rec, call_id, CallKind.SLEEP, "sleep")
            if rec.state == CallState.COMPLETED:
                return
            if rec.state == CallState.CANCELLED:
                raise self.cancelled()
            assert rec.wake_at is not None
            wake = rec.wake_at
        elif self.folded.cancel_pending:
            self.cancel_here(call_id, CallKind.SLEEP, "sleep")
        elif self.folded.paused:
            self.hold(call_id)
        elif self.replay_only:
            self.frontier()
        else:
            self._begin()
            try:
                await self.append(EventType.SLEEP_CREATED, {"call_id": call_id, "wake_at": wake.isoformat()})
            finally:
                self._end()
        if wake > now:
            self._wait(call_id, wake)
        if self.closed:
            raise SuspendSignal()
        # Rides on the next write: unrecorded, a replay finds the wake time passed again.
        self.buffer_event(EventType.SLEEP_COMPLETED, {"call_id": call_id})

    async def step(self, defn: StepDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.arrived:
            self.admit_arrived()
        self.calls = call_id = self.calls + 1
        rec = self.history.get(call_id)
        attempt = 1
        if rec is not None:
            self._expect(rec, call_id, CallKind.STEP, defn.name)
            if rec.state == CallState.COMPLETED:
                return defn.signature.decode_result(rec.result)
            if rec.state == CallState.FAILED:
                raise rebuild_error(rec.error or {})
            if rec.state == CallState.CANCELLED:
                raise self.cancelled()
            if rec.dispatched_at is not None and rec.state in (CallState.DISPATCHED, CallState.STARTED):
                return await self._await_dispatched(defn, call_id, rec)
            attempt = rec.attempt + 1
            if rec.state == CallState.RETRYING and rec.wake_at is not None and rec.wake_at > self.clock.now():
                self._wait(call_id, rec.wake_at)
        elif self.folded.cancel_pending:
            self.cancel_here(call_id, CallKind.STEP, defn.name)
        if self.folded.paused:
            self.hold(call_id)  # no new step, nor a new attempt, starts while paused
        if self.replay_only:
            self.frontier()  # a replay check runs no step
        if self.dispatch_guard is not None and defn.queue is not None:
            return await self._dispatch(defn, call_id, defn.signature.encode_args(args, kwargs))
        # The step gets its arguments decoded from what is recorded, as a replay would.
        payload, args, kwargs = defn.signature.encode_args_for_call(args, kwargs)
        if self.closed:
            raise SuspendSignal()
        self.in_flight += 1
        base = rec.attempt_base if rec is not None else 0
        try:
            if rec is not None and rec.state == CallState.STARTED and rec.attempt - base >= defn.retry.max_attempts:
                crashed = crashed_error(defn, self.run_id, call_id, rec.attempt)
                await self.append(*failure_event(defn, call_id, rec.attempt, crashed, self.clock.now(), final=True))
                raise crashed
            if rec is None and self.recovering and not self._bumped:
                # The crashed activation wrote nothing: it died in its first step, which it
                # had not recorded yet (see _defer_first_record). Count that attempt.
                self._bumped = True
                if not any(r.state == CallState.STARTED and r.dispatched_at is None for r in self.history.values()):
                    attempt = 2
                    if attempt > defn.retry.max_attempts:
                        crashed = crashed_error(defn, self.run_id, call_id, 1)
                        await self.append(*failure_event(defn, call_id, 1, crashed, self.clock.now(), final=True))
                        raise crashed
            while True:
                started = {"call_id": call_id, "step": defn.name, "attempt": attempt, "args": payload}
                if self._may_defer(rec, attempt):
                    self._defer_first_record(started)
                else:
                    # step.started is written before the step body runs
                    self.release = False
                    await self._write(_STEP_STARTED, started, None)
                token = _step.set((self.run_id, self.workflow, defn.name, call_id, attempt))
                task = _current_task()
                if task is not None:
                    _RUNNING_CTX[task] = self
                    _RUNNING_STEP[task] = defn
                try:  # what execute_step does, without a coroutine of its own
                    try:
                        if _interceptors.CHAIN:
                            result = await _intercepted_attempt(defn, args, kwargs, self.run_info(), call_id, attempt)
                        elif defn.timeout is None:
                            result = await defn.fn(*args, **kwargs)
                        else:
                            result = await _with_timeout(defn, defn.timeout, args, kwargs)
                    finally:
                        _step.reset(token)
                        if task is not None:
                            del _RUNNING_CTX[task], _RUNNING_STEP[task]
                    encoded = defn.signature.encode_result(result)
                except Exception as exc:  # noqa: BLE001 - every step failure is recorded
                    if await self._attempt_failed(defn, call_id, attempt, exc, base):
                        raise
                    attempt += 1
                    continue
                except BaseException as exc:
                    if self.aborted is not None and isinstance(exc, asyncio.CancelledError) and task is not None:
                        task.uncancel()  # stopped by lease_lost: this activation ends as "lost"
                        raise AbortSignal() from None
                    if self.cancel_message is not None and isinstance(exc, asyncio.CancelledError) and task is not None:
                        # interrupted by check_inbox: the run's cancellation, delivered here
                        task.uncancel()
                        self.admit_arrived()
                        # delivered here: in the log this attempt began before the request,
                        # which the fold reads as this call cancelled
                        self.folded.cancel_pending = False
                        raise self.cancelled() from None
                    failure = user_base_exception(exc, f"step {defn.name!r}")
                    if failure is None:
                        raise  # the activation itself is cancelled or closed
                    # Recorded once as the step's failure, never retried; the workflow
                    # sees an ordinary exception, and replay rebuilds the same one.
                    await self.append(*failure_event(defn, call_id, attempt, failure, self.clock.now(), final=True))
                    raise failure from exc
                self._must_write = True
                self.buffer.append(
                    (
                        _STEP_COMPLETED,
                        {"call_id": call_id, "step": defn.name, "attempt": attempt, "result": encoded},
                        self.clock.now(),
                    )
                )
                if not self._flush_scheduled:  # record_soon
                    self._flush_scheduled = True
                    _flushes_soon(self)
                return defn.signature.decode_result(encoded)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    def _may_defer(self, rec: CallRecord | None, attempt: int) -> bool:
        """Whether this step's ``step.started`` may wait for its completion: only for an
        activation's first record, when nothing buffered must be durable first."""
        return (
            rec is None
            and attempt == 1
            and not self.recovering
            and not self._must_write
            and self.next_seq == self._first_seq
            and not self._appending
        )

    def _defer_first_record(self, started: dict[str, Any]) -> None:
        """Buffer the activation's first ``step.started`` instead of writing it.

        Whatever is buffered before an activation's first step (the resume marker, inbox
        messages, which stay pending until written) loses nothing if the worker dies, so
        the first write can wait for the step's completion: one storage round trip fewer
        per activation. A step still running after ``DEFERRED_START_FLUSH`` seconds is
        written anyway, so long steps show as started. A worker dying before that write
        leaves its lease to expire; the tick then posts an ``interrupted`` message, and
        the next activation writes every step.started first and counts the unrecorded
        attempt, so a step that keeps killing its worker still fails with
        StepCrashedError after its attempts.
        """
        self.buffer.append((_STEP_STARTED, started, self.clock.now()))
        self._must_write = True  # a second step (gather) or anything after waits for this one
        asyncio.get_running_loop().call_later(DEFERRED_START_FLUSH, self._flush_if_idle)

    async def _attempt_failed(
        self, defn: StepDefinition, call_id: int, attempt: int, exc: Exception, base: int = 0
    ) -> bool:
        """Record a failed attempt. True: the step failed for good. Otherwise the run
        suspends until the retry is due, or (due already) the caller retries at once."""
        now = self.clock.now()
        event_type, data = failure_event(defn, call_id, attempt, exc, now, base=base)
        await self.append(event_type, data)
        if event_type == EventType.STEP_FAILED:
            return True
        resume_at = datetime.fromisoformat(data["resume_at"])
        if resume_at > now:
            self._wait(call_id, resume_at)
        return False

    # -- dispatched steps (Celery runtime) -------------------------------------------------

    async def _dispatch(self, defn: StepDefinition, call_id: int, payload: dict[str, Any]) -> Any:
        from pyworkflow.dispatch import Dispatch

        self._begin()
        try:
            await self.append(
                EventType.STEP_DISPATCHED,
                {"call_id": call_id, "step": defn.name, "queue": defn.queue, "args": payload},
            )
        finally:
            self._end()
        if self.dispatches is None:
            self.dispatches = []
        carrier = self.folded.carrier if _interceptors.CHAIN else None
        self.dispatches.append(Dispatch(self.run_id, call_id, defn.name, defn.queue, carrier))
        assert self.dispatch_guard is not None
        return await self._park(call_id, self.clock.now() + self.dispatch_guard)

    async def _await_dispatched(self, defn: StepDefinition, call_id: int, rec: CallRecord) -> Any:
        assert rec.dispatched_at is not None
        self.frontier()  # a replay check stops at a step still out with a step worker
        guard = self.dispatch_guard if self.dispatch_guard is not None else timedelta(0)
        if self.clock.now() - rec.dispatched_at >= guard and rec.args is not None:
            # Nothing was heard of the step for the whole guard time: its message was
            # lost (the worker that sent it died first). Send it again; a duplicate is
            # harmless, its completion is recorded once.
            return await self._dispatch(defn, call_id, rec.args)
        return await self._park(call_id, rec.dispatched_at + guard)

    async def _park(self, call_id: int, check_at: datetime) -> Any:
        """Wait for a dispatched step without ending the activation at once, so that
        sibling branches of an ``asyncio.gather`` dispatch their steps too."""
        if self.closed:
            raise SuspendSignal()
        self.waits[call_id] = check_at
        self.parked.set()
        await asyncio.get_running_loop().create_future()  # cancelled when the run suspends
        raise AssertionError("unreachable: a parked call is only ever cancelled")


def crashed_error(defn: StepDefinition, run_id: str, call_id: int, attempts: int) -> StepCrashedError:
    # Every allowed attempt began and none ended: the step keeps killing its worker
    # (OOM, segfault). Fail it instead of looping forever.
    return StepCrashedError(
        f"step {defn.name!r} (call #{call_id}) of run {run_id!r}: its worker died during "
        f"{attempts} attempt(s), the limit is {defn.retry.max_attempts}",
        run_id=run_id,
        step=defn.name,
    )


async def execute_step(
    defn: StepDefinition,
    info: StepInfo,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run: _interceptors.RunInfo | None = None,
) -> Any:
    """Run one attempt of a step and return its encoded result (``run``: the run, for
    interceptors, when the attempt is a dispatched one)."""
    token = _step.set(info)
    try:
        if _interceptors.CHAIN and run is not None:
            result = await _intercepted_attempt(defn, args, kwargs, run, info.call_id, info.attempt, dispatched=True)
        elif defn.timeout is None:
            result = await defn.fn(*args, **kwargs)
        else:
            result = await _with_timeout(defn, defn.timeout, args, kwargs)
    finally:
        _step.reset(token)
    return defn.signature.encode_result(result)


async def _intercepted_attempt(
    defn: StepDefinition,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    run: _interceptors.RunInfo,
    call_id: int,
    attempt: int,
    *,
    dispatched: bool = False,
) -> Any:
    """One attempt of a step's body (with its timeout), wrapped by the interceptors."""
    info = _interceptors.StepAttemptInfo(run, defn.name, call_id, attempt, dispatched)

    def body() -> Awaitable[Any]:
        if defn.timeout is None:
            return defn.fn(*args, **kwargs)
        return _with_timeout(defn, defn.timeout, args, kwargs)

    return await _interceptors.around_step(info, body)


def user_base_exception(exc: BaseException, where: str) -> Exception | None:
    """The ordinary exception that stands for a ``BaseException`` user code raised
    (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a ``CancelledError`` of
    its own, any other), or ``None`` when ``exc`` is not the user's to report: the
    engine's own signals, a real cancellation of the running task (it is cancelling), a
    coroutine closed from outside a running task.

    Such an exception must never reach the event loop that runs activations: asyncio
    re-raises ``KeyboardInterrupt`` and ``SystemExit`` out of the loop itself, and a
    Celery pool process treats them as its own end.
    """
    if isinstance(exc, Exception):
        return exc
    if isinstance(exc, SuspendSignal | AbortSignal | ContinueSignal):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a close() from outside, not the user's
        return None
    if task is None:
        return None
    if isinstance(exc, asyncio.CancelledError) and task.cancelling():
        return None  # the task was really cancelled (a parked branch, a shutdown)
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    detail = str(exc)
    error = StepFailedError(
        f"{where} raised {name}{f': {detail}' if detail else ''}; a BaseException from user code "
        "fails the call at once (no retry) and never reaches the worker",
        error_type=f"{cls.__module__}.{cls.__qualname__}",
    )
    error.__cause__ = exc
    return error


def failure_event(
    defn: StepDefinition,
    call_id: int,
    attempt: int,
    exc: BaseException,
    now: datetime,
    *,
    final: bool = False,
    base: int = 0,
) -> tuple[str, dict[str, Any]]:
    """``step.failed`` or ``step.retrying`` for a failed attempt, by the step's policy.
    ``base``: the attempts made before a ``retry(run_id)``, which do not count."""
    data: dict[str, Any] = {"call_id": call_id, "step": defn.name, "attempt": attempt, "error": describe_error(exc)}
    # An unencodable result is a bug: retrying cannot fix it.
    if final or isinstance(exc, FatalError | SerializationError) or attempt - base >= defn.retry.max_attempts:
        return EventType.STEP_FAILED, data
    data["resume_at"] = retry_at(defn.retry, attempt - base, getattr(exc, "retry_after", None), now).isoformat()
    return EventType.STEP_RETRYING, data


async def _with_timeout(defn: StepDefinition, seconds: float, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        async with asyncio.timeout(seconds) as scope:
            return await defn.fn(*args, **kwargs)
    except TimeoutError:
        if scope.expired():
            raise StepTimeoutError(f"step {defn.name!r} timed out after {seconds:g}s", step=defn.name) from None
        raise
