"""The replay state machine: a run's log folded into the state of each durable call.

Every reader of a run — the activation, the dispatched-step worker, and the tools that
inspect runs — folds the log here, one handler per event type, so the rules of attempts,
retries, crashes and dispatch live in one place. Messages from the run's inbox pass
through :meth:`History.admit`, which turns each into the event it stands for (or refuses
a stale one) by the same rules.

A log this machine cannot read (a step event without ``call_id``, a wake time that is not
a time) raises :class:`~pyworkflow.errors.CorruptedHistoryError` naming the run and the
event's seq. Event types it does not know (written by a newer version) are skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pyworkflow.errors import CorruptedHistoryError
from pyworkflow.events import LOG_EVENT_TYPES, Event, EventType


class CallKind(str, Enum):
    STEP = "step"
    SLEEP = "sleep"
    VALUE = "value"
    SIGNAL = "signal"  # a wait for the next signal of a name
    WEBHOOK = "webhook"
    CHILD = "child"  # a child workflow run: args {"run_id", "detached"}, result its result
    CONTINUE = "continue"  # continue_as_new(): args {"run_id"} of the next run; ends the run

    def __str__(self) -> str:
        return self.value


class CallState(str, Enum):
    DISPATCHED = "dispatched"  # sent to a step worker, not yet heard of
    STARTED = "started"  # an attempt began and has not ended (running, or its worker died)
    RETRYING = "retrying"  # an attempt failed; the next one is due at ``wake_at``
    WAITING = "waiting"  # a sleep not yet over
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"  # a signal wait whose timeout was recorded before a signal
    CANCELLED = "cancelled"  # the run's cancellation was delivered here: it raises CancelledError

    def __str__(self) -> str:
        return self.value


SETTLED = frozenset({CallState.COMPLETED, CallState.FAILED, CallState.TIMED_OUT, CallState.CANCELLED})
#: Message kinds the engine itself sends; other kinds are recorded as ``message.received``.
STEP_MESSAGE = "step"
#: A signal sent to the run: payload ``{"name": str, "payload": JSON}``.
SIGNAL_MESSAGE = "signal"
#: A request to cancel the run: payload ``{"reason": str | None}``.
CANCEL_MESSAGE = "cancel"
#: A child run's end, posted to its parent: ``{call_id, run_id, status, result, error}``.
CHILD_MESSAGE = "child"
#: Requests to hold the run at its next durable call, and to let it go on.
PAUSE_MESSAGE = "pause"
UNPAUSE_MESSAGE = "unpause"
#: Posted by the tick to a run whose lease expired: its last activation died.
INTERRUPTED_MESSAGE = "interrupted"


@dataclass(slots=True)
class CallRecord:
    kind: CallKind
    name: str
    state: CallState
    attempt: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    wake_at: datetime | None = None
    dispatched_at: datetime | None = None  # steps sent to a step worker: when last heard of
    args: dict[str, Any] | None = None
    #: Attempts before the last ``retry(run_id)``: the step's attempts count from here.
    attempt_base: int = 0


@dataclass
class History:
    """The folded log of one run."""

    run_id: str
    calls: dict[int, CallRecord] = field(default_factory=dict)
    logs: set[int] = field(default_factory=set)
    # The three below are made on first use: most runs have none, and every container
    # allocated per activation costs the garbage collector more than its own size.
    #: ``set_state`` calls already recorded (their own counter, like log lines).
    states: set[int] | None = None
    #: Signals received and not yet taken by a wait, per name, in arrival order.
    signals: dict[str, deque[Any]] | None = None
    #: Signal waits not yet satisfied, per name, in the order they began.
    signal_waits: dict[str, deque[int]] | None = None
    #: Cancellation: requested (with its reason), and not yet delivered to any call.
    cancel_requested: bool = False
    cancel_reason: str | None = None
    cancel_pending: bool = False
    #: Held by pause() (until unpause(); a cancellation lifts it).
    paused: bool = False
    #: ``patched()`` markers in the log (made on first use).
    patches: set[str] | None = None
    #: The run's parent ``{"run_id", "call_id", "detached", "workflow"}`` when it is a child run, and
    #: whether it has a parent or children at all (its end must tell them).
    parent: dict[str, Any] | None = None
    family: bool = False
    #: ``{"from", "first_run_id", "index"}`` when continue_as_new started this run, and
    #: whether it took over what the previous run left unconsumed (``messages.inherited``).
    chain: dict[str, Any] | None = None
    inherited: bool = False
    #: ``{"id", "scheduled_at"}`` when a schedule started this run.
    schedule: dict[str, Any] | None = None
    #: What interceptors recorded with the run's start (trace context …), if anything.
    carrier: dict[str, str] | None = None
    last_seq: int = 0

    def apply(self, event: Event) -> None:
        """Fold one event (the log's next) into the call records."""
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            try:
                handler(self, event.data, event.timestamp)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CorruptedHistoryError(
                    f"run {self.run_id!r}: event seq {event.seq} ({event.type}) cannot be replayed: "
                    f"{type(exc).__name__}: {exc}",
                    run_id=self.run_id,
                    seq=event.seq,
                ) from None
        elif event.type in LOG_EVENT_TYPES and isinstance(event.data.get("call_id"), int):
            self.logs.add(event.data["call_id"])
        self.last_seq = event.seq

    def admit(self, kind: str, payload: Any, message_seq: int) -> tuple[str, dict[str, Any]] | None:
        """The event an inbox message stands for, or ``None`` when it is stale (a step
        outcome for an attempt already settled, a duplicate delivery)."""
        if kind == SIGNAL_MESSAGE:
            if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
                return None  # not a signal this version can deliver
            return EventType.SIGNAL_RECEIVED, {
                "message": message_seq,
                "name": payload["name"],
                "payload": payload.get("payload"),
            }
        if kind == CANCEL_MESSAGE:
            if self.cancel_requested:
                return None  # asked twice: the first request stands
            reason = payload.get("reason") if isinstance(payload, dict) else None
            return EventType.CANCEL_REQUESTED, {"message": message_seq, "reason": reason}
        if kind == CHILD_MESSAGE:
            if not isinstance(payload, dict):
                return None
            rec = self.calls.get(payload.get("call_id"))  # type: ignore[arg-type]
            if rec is None or rec.kind != CallKind.CHILD or rec.state != CallState.WAITING or rec.args is None:
                return None  # not waited for (the poll recorded it first, or a stray message)
            if rec.args.get("run_id") != payload.get("run_id"):
                return None
            return EventType.CHILD_COMPLETED, dict(payload)
        if kind == PAUSE_MESSAGE:
            if self.paused or self.cancel_requested:
                return None  # already paused, or being cancelled
            return EventType.PAUSE_REQUESTED, {"message": message_seq}
        if kind == UNPAUSE_MESSAGE:
            return (EventType.PAUSE_LIFTED, {"message": message_seq}) if self.paused else None
        if kind != STEP_MESSAGE:
            return EventType.MESSAGE_RECEIVED, {"message": message_seq, "kind": kind, "payload": payload}
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            return None
        type_, data = payload.get("type"), payload["data"]
        rec = self.calls.get(data.get("call_id"))  # type: ignore[arg-type,unused-ignore]
        if rec is None or rec.kind != CallKind.STEP or rec.name != data.get("step") or rec.state in SETTLED:
            return None
        attempt = data.get("attempt")
        if type_ == EventType.STEP_STARTED:
            return (type_, data) if attempt == rec.attempt + 1 else None
        if type_ in (EventType.STEP_COMPLETED, EventType.STEP_FAILED, EventType.STEP_RETRYING):
            return (type_, data) if rec.state == CallState.STARTED and attempt == rec.attempt else None
        return None

    # -- signals: which wait takes which signal is decided by the log's order alone ------

    def signal_received(self, name: str, payload: Any) -> None:
        """A signal enters the log: the oldest wait for its name takes it, else it waits
        in the buffer for the next wait of that name."""
        waits = self.signal_waits.get(name) if self.signal_waits else None
        if waits:
            rec = self.calls[waits.popleft()]
            rec.state, rec.result = CallState.COMPLETED, payload
        else:
            if self.signals is None:
                self.signals = {}
            self.signals.setdefault(name, deque()).append(payload)

    def signal_waiting(self, call_id: int, name: str, timeout_at: datetime | None) -> CallRecord:
        """A wait begins: it takes the oldest buffered signal of its name at once, if any,
        else it waits (until ``timeout_at``, when set)."""
        rec = self.calls[call_id] = CallRecord(CallKind.SIGNAL, name, CallState.WAITING, wake_at=timeout_at)
        buffered = self.signals.get(name) if self.signals else None
        if buffered:
            rec.state, rec.result = CallState.COMPLETED, buffered.popleft()
        else:
            if self.signal_waits is None:
                self.signal_waits = {}
            self.signal_waits.setdefault(name, deque()).append(call_id)
        return rec

    def signal_timed_out(self, call_id: int) -> None:
        rec = self.calls[call_id]
        if rec.kind != CallKind.SIGNAL:
            raise TypeError(f"call #{call_id} is a {rec.kind}, not a signal wait")
        if rec.state == CallState.WAITING:
            rec.state = CallState.TIMED_OUT
            if self.signal_waits and call_id in self.signal_waits.get(rec.name, ()):
                self.signal_waits[rec.name].remove(call_id)

    def mark_patch(self, patch_id: str) -> None:
        if self.patches is None:
            self.patches = set()
        self.patches.add(patch_id)

    # -- cancellation: delivered where the run waits, else at its next durable call -------

    def request_cancel(self, reason: str | None) -> None:
        """The run is to be cancelled: every call still waiting for an outcome (a sleep, a
        signal wait, a step retrying, dispatched or interrupted) is cancelled; when none
        is, the next durable call will be (:meth:`cancel_call`)."""
        self.cancel_requested, self.cancel_reason, self.paused = True, reason, False
        delivered = False
        for rec in self.calls.values():
            if rec.state not in SETTLED:
                rec.state = CallState.CANCELLED
                delivered = True
        self.signal_waits = None
        self.cancel_pending = not delivered

    def cancel_call(self, call_id: int, kind: str, name: str) -> CallRecord:
        """The pending cancellation is delivered at durable call ``call_id``."""
        rec = self.calls[call_id] = CallRecord(CallKind(kind), name, CallState.CANCELLED)
        self.cancel_pending = False
        return rec


def fold(run_id: str, events: Iterable[Event]) -> History:
    history = History(run_id)
    for event in events:
        history.apply(event)
    return history


# -- one handler per event type ------------------------------------------------------------

Handler = Callable[[History, dict[str, Any], datetime], None]


def _step(history: History, data: dict[str, Any]) -> CallRecord:
    call_id = data["call_id"]
    if not isinstance(call_id, int):
        raise TypeError(f"call_id must be an int, got {call_id!r}")
    rec = history.calls.get(call_id)
    if rec is None:
        rec = history.calls[call_id] = CallRecord(CallKind.STEP, str(data["step"]), CallState.STARTED)
    return rec


def _step_dispatched(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = _step(history, data)
    rec.state, rec.dispatched_at, rec.args = CallState.DISPATCHED, at, data.get("args")


def _step_started(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = _step(history, data)
    rec.state, rec.attempt, rec.args = CallState.STARTED, int(data["attempt"]), data.get("args")
    if rec.dispatched_at is not None:
        rec.dispatched_at = at  # last heard of


def _step_completed(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = _step(history, data)
    rec.state, rec.attempt, rec.result = CallState.COMPLETED, int(data.get("attempt", rec.attempt)), data.get("result")


def _step_failed(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = _step(history, data)
    rec.state, rec.attempt, rec.error = CallState.FAILED, int(data.get("attempt", rec.attempt)), data.get("error")


def _step_retrying(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = _step(history, data)
    rec.state, rec.attempt, rec.error = CallState.RETRYING, int(data.get("attempt", rec.attempt)), data.get("error")
    rec.wake_at = datetime.fromisoformat(data["resume_at"])


def _value_recorded(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])] = CallRecord(
        CallKind.VALUE, str(data["kind"]), CallState.COMPLETED, result=data["value"]
    )


def _sleep_created(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])] = CallRecord(
        CallKind.SLEEP, "sleep", CallState.WAITING, wake_at=datetime.fromisoformat(data["wake_at"])
    )


def _sleep_completed(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])].state = CallState.COMPLETED


def _signal_received(history: History, data: dict[str, Any], at: datetime) -> None:
    history.signal_received(str(data["name"]), data.get("payload"))


def _signal_waiting(history: History, data: dict[str, Any], at: datetime) -> None:
    timeout_at = data.get("timeout_at")
    history.signal_waiting(
        int(data["call_id"]), str(data["name"]), None if timeout_at is None else datetime.fromisoformat(timeout_at)
    )


def _signal_timed_out(history: History, data: dict[str, Any], at: datetime) -> None:
    history.signal_timed_out(int(data["call_id"]))


def _cancel_requested(history: History, data: dict[str, Any], at: datetime) -> None:
    reason = data.get("reason")
    history.request_cancel(None if reason is None else str(reason))


def _call_cancelled(history: History, data: dict[str, Any], at: datetime) -> None:
    history.cancel_call(int(data["call_id"]), str(data["kind"]), str(data["name"]))


def _workflow_retried(history: History, data: dict[str, Any], at: datetime) -> None:
    """``retry(run_id)``: every failed step runs again, due now, with fresh attempts."""
    for rec in history.calls.values():
        if rec.kind == CallKind.STEP and rec.state == CallState.FAILED:
            rec.state, rec.wake_at, rec.attempt_base = CallState.RETRYING, at, rec.attempt


def _patch_marked(history: History, data: dict[str, Any], at: datetime) -> None:
    history.mark_patch(str(data["patch_id"]))


def _workflow_started(history: History, data: dict[str, Any], at: datetime) -> None:
    parent = data.get("parent")
    if parent is not None:
        history.parent, history.family = dict(parent), True
    chain = data.get("continued")
    if chain is not None:
        history.chain = {
            "from": str(chain["from"]),
            "first_run_id": str(chain["first_run_id"]),
            "index": int(chain["index"]),
        }
    schedule = data.get("schedule")
    if schedule is not None:
        history.schedule = dict(schedule)
    carrier = data.get("carrier")
    if carrier is not None:
        history.carrier = dict(carrier)


def _workflow_continued(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])] = CallRecord(
        CallKind.CONTINUE, str(data["workflow"]), CallState.COMPLETED, args={"run_id": str(data["run_id"])}
    )


def _messages_inherited(history: History, data: dict[str, Any], at: datetime) -> None:
    history.inherited = True


def _child_started(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])] = CallRecord(
        CallKind.CHILD,
        str(data["workflow"]),
        CallState.WAITING,
        args={"run_id": str(data["run_id"]), "detached": bool(data.get("detached"))},
    )
    history.family = True


def _child_completed(history: History, data: dict[str, Any], at: datetime) -> None:
    rec = history.calls[int(data["call_id"])]
    if rec.kind != CallKind.CHILD:
        raise TypeError(f"call #{data['call_id']} is a {rec.kind}, not a child run")
    if rec.state != CallState.WAITING:
        return  # cancelled meanwhile: the child's end changes nothing
    if data.get("status") == "completed":
        rec.state, rec.result = CallState.COMPLETED, data.get("result")
    else:
        rec.state, rec.error = CallState.FAILED, data.get("error") or {}


def _pause_requested(history: History, data: dict[str, Any], at: datetime) -> None:
    history.paused = True


def _pause_lifted(history: History, data: dict[str, Any], at: datetime) -> None:
    history.paused = False


def _state_set(history: History, data: dict[str, Any], at: datetime) -> None:
    if history.states is None:
        history.states = set()
    history.states.add(int(data["index"]))


def _webhook_created(history: History, data: dict[str, Any], at: datetime) -> None:
    history.calls[int(data["call_id"])] = CallRecord(
        CallKind.WEBHOOK,
        str(data["name"]),
        CallState.COMPLETED,
        result={"token": str(data["token"]), "url": data.get("url")},
    )


_HANDLERS: dict[str, Handler] = {
    EventType.STEP_DISPATCHED: _step_dispatched,
    EventType.STEP_STARTED: _step_started,
    EventType.STEP_COMPLETED: _step_completed,
    EventType.STEP_FAILED: _step_failed,
    EventType.STEP_RETRYING: _step_retrying,
    EventType.VALUE_RECORDED: _value_recorded,
    EventType.SLEEP_CREATED: _sleep_created,
    EventType.SLEEP_COMPLETED: _sleep_completed,
    EventType.SIGNAL_RECEIVED: _signal_received,
    EventType.SIGNAL_WAITING: _signal_waiting,
    EventType.SIGNAL_TIMED_OUT: _signal_timed_out,
    EventType.STATE_SET: _state_set,
    EventType.WEBHOOK_CREATED: _webhook_created,
    EventType.CANCEL_REQUESTED: _cancel_requested,
    EventType.CALL_CANCELLED: _call_cancelled,
    EventType.PAUSE_REQUESTED: _pause_requested,
    EventType.PAUSE_LIFTED: _pause_lifted,
    EventType.PATCH_MARKED: _patch_marked,
    EventType.WORKFLOW_RETRIED: _workflow_retried,
    EventType.WORKFLOW_STARTED: _workflow_started,
    EventType.CHILD_STARTED: _child_started,
    EventType.CHILD_COMPLETED: _child_completed,
    EventType.WORKFLOW_CONTINUED: _workflow_continued,
    EventType.MESSAGES_INHERITED: _messages_inherited,
}
