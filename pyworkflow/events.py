"""The event log's records.

An event is immutable: ``seq`` (1, 2, 3 … per run), ``type``, ``timestamp`` (UTC) and
``data`` (JSON). ``v`` is the schema version of ``data`` for that type, so later
releases can change a payload and still read logs written before.

Event types and their ``data`` keys are stored data: they are chosen once and never
renamed. Readers must tolerate types they do not know (a newer writer may add some).

==================== =========================================================
type                 data
==================== =========================================================
workflow.started     workflow, input {args, kwargs}, idempotency_key, deadline; parent
                     (a child run), continued {from, first_run_id, index} (a run started
                     by continue_as_new), schedule {id, scheduled_at} (started by a schedule)
workflow.resumed     reason
workflow.interrupted previous activation died mid-run (lease expired); reason
workflow.suspended   wake_at (ISO time or null), waiting_on
workflow.completed   result
workflow.failed      error {type, message, traceback}
step.started         call_id, step, attempt, args
step.completed       call_id, step, attempt, result
step.failed          call_id, step, attempt, error
step.retrying        call_id, step, attempt, error, resume_at
step.dispatched      call_id, step, queue, args (sent to a step worker; Celery runtime)
value.recorded       call_id, kind ("now", "uuid4", "random"), value
sleep.created        call_id, wake_at
sleep.completed      call_id
message.received     message (its seq in the inbox), kind, payload: a message of a
                     kind this version gives no meaning of its own
signal.received      message (its seq in the inbox), name, payload: a signal sent to
                     the run; the oldest waiting ``wait_for_signal(name)`` takes it,
                     else it is buffered for the next one (FIFO per name)
signal.waiting       call_id, name, timeout_at (ISO time or null): a wait began; it
                     takes a buffered signal of its name at once if there is one
signal.timed_out     call_id: the wait's timeout came before a signal (whichever is
                     recorded first decides)
state.set            index (its own counter), key, value: published by ``set_state``
webhook.created      call_id, name, token, url, secret (null without one)
cancel.requested     message, reason: ``cancel()`` reached the run; every call still
                     waiting (sleep, signal wait, step retrying or dispatched or
                     running) is cancelled here and raises ``CancelledError``
call.cancelled       call_id, kind, name: the cancellation was delivered at this new
                     durable call (the run was waiting on nothing when it came)
workflow.cancelled   reason: the run ended cancelled (``CancelledError`` left the workflow)
pause.requested      message: ``pause()`` reached the run; it holds at its next new
                     durable call (a step, a sleep, a signal wait)
pause.lifted         message: ``unpause()`` reached the run; it goes on from there
workflow.paused      waiting_on: an activation held the run (status ``paused``); only
                     a message (unpause, cancel, a signal) moves it again
patch.marked         patch_id: ``patched(patch_id)`` was first reached on new code
workflow.blocked     error: replay met another durable call than the log recorded; the run
                     holds (status ``blocked``) until ``retry(run_id)`` after a fix
workflow.retried     previous_status, error: ``retry(run_id)`` continued a failed or
                     blocked run; failed steps run again with fresh attempts
child.started        call_id, workflow, run_id, detached: a child run was created (its
                     id derived from this run's and the call's) before this was recorded
child.completed      call_id, run_id, status, result, error: the child ended (from its
                     message in the inbox, or found by the parent's poll)
workflow.continued   call_id, run_id, workflow: ``continue_as_new()`` ended the run
                     (status ``continued``); ``run_id`` names the next run of the chain,
                     created (with these arguments) before this was recorded
messages.inherited   run_id, count: the first activation of a continued run took over
                     what the previous run (``run_id``) left unconsumed; the signals,
                     cancellation and pause requests follow as their own events, in the
                     order they reached the previous run
log.info/warning/    message, fields, call_id (workflow code) or step_call_id
error/debug
==================== =========================================================
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class EventType(str, Enum):
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_SUSPENDED = "workflow.suspended"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_INTERRUPTED = "workflow.interrupted"
    STEP_STARTED = "step.started"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_RETRYING = "step.retrying"
    STEP_DISPATCHED = "step.dispatched"
    VALUE_RECORDED = "value.recorded"
    SLEEP_CREATED = "sleep.created"
    SLEEP_COMPLETED = "sleep.completed"
    MESSAGE_RECEIVED = "message.received"
    SIGNAL_RECEIVED = "signal.received"
    SIGNAL_WAITING = "signal.waiting"
    SIGNAL_TIMED_OUT = "signal.timed_out"
    STATE_SET = "state.set"
    WEBHOOK_CREATED = "webhook.created"
    CANCEL_REQUESTED = "cancel.requested"
    CALL_CANCELLED = "call.cancelled"
    WORKFLOW_CANCELLED = "workflow.cancelled"
    PAUSE_REQUESTED = "pause.requested"
    PAUSE_LIFTED = "pause.lifted"
    WORKFLOW_PAUSED = "workflow.paused"
    PATCH_MARKED = "patch.marked"
    WORKFLOW_BLOCKED = "workflow.blocked"
    WORKFLOW_RETRIED = "workflow.retried"
    CHILD_STARTED = "child.started"
    CHILD_COMPLETED = "child.completed"
    WORKFLOW_CONTINUED = "workflow.continued"
    MESSAGES_INHERITED = "messages.inherited"
    LOG_INFO = "log.info"
    LOG_WARNING = "log.warning"
    LOG_ERROR = "log.error"
    LOG_DEBUG = "log.debug"

    def __str__(self) -> str:
        return self.value


LOG_EVENT_TYPES = frozenset({"log.info", "log.warning", "log.error", "log.debug"})
EVENT_SCHEMA_VERSION = 1


class Event(BaseModel):
    """One record of a run's append-only log."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    type: str
    timestamp: datetime
    data: dict[str, Any] = Field(default_factory=dict)
    v: int = EVENT_SCHEMA_VERSION

    @classmethod
    def new(cls, seq: int, type: str, timestamp: datetime, data: dict[str, Any]) -> Event:
        """Build an event the engine made itself, skipping validation.

        The activation builds several events per step; ``model_construct`` costs ~9 µs
        each, this well under 1 µs. It sets exactly what ``model_construct`` sets (a test
        holds the two equal).
        """
        if cls is not Event:
            values = {"seq": seq, "type": type, "timestamp": timestamp, "data": data, "v": EVENT_SCHEMA_VERSION}
            return trusted(cls, values)
        return new_event(seq, type, timestamp, data)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        return cls.model_validate_json(raw)


M = TypeVar("M", bound=BaseModel)
_new = object.__new__
_Setter = Callable[[Any, Any], None]


def _slot_setter(cls: type[BaseModel], name: str) -> _Setter:
    """The ``__set__`` of the descriptor behind ``cls``'s attribute ``name`` (a slot or
    ``__dict__``): calling it skips pydantic's ``__setattr__`` and costs well under
    ``object.__setattr__``, which looks the descriptor up on every call."""
    for klass in cls.__mro__:
        descriptor = vars(klass).get(name)
        if descriptor is not None:
            return descriptor.__set__  # type: ignore[no-any-return]
    raise AttributeError(f"{cls.__name__} has no slot {name!r}")


class _Builder(NamedTuple):
    set_dict: _Setter
    set_fields_set: _Setter
    set_extra: _Setter
    set_private: _Setter
    fields_set: set[str]


_BUILDERS: dict[type[BaseModel], _Builder] = {}


def _builder(cls: type[BaseModel]) -> _Builder:
    builder = _BUILDERS.get(cls)
    if builder is None:
        builder = _BUILDERS[cls] = _Builder(
            _slot_setter(cls, "__dict__"),
            _slot_setter(cls, "__pydantic_fields_set__"),
            _slot_setter(cls, "__pydantic_extra__"),
            _slot_setter(cls, "__pydantic_private__"),
            set(cls.model_fields),
        )
    return builder


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """A model built from values we made ourselves, without validation.

    ``values`` must hold every field. Equivalent to ``model_construct`` (a test holds
    them equal) at a fraction of its cost, for the activation's hot path.

    Every model built here shares one "fields set" per class: it names every field, so
    the only in-place change pydantic makes to it (``add`` of a field name on assignment)
    changes nothing, and ``model_copy`` copies it before updating. Sharing saves a set
    per model, which the garbage collector would otherwise walk for as long as the
    model lives (a memory backend keeps every event).
    """
    set_dict, set_fields_set, set_extra, set_private, fields_set = _BUILDERS.get(cls) or _builder(cls)
    model = _new(cls)
    set_dict(model, values)
    set_fields_set(model, fields_set)
    set_extra(model, None)
    set_private(model, None)
    return model


_set_event_dict, _set_event_fields_set, _set_event_extra, _set_event_private, _EVENT_FIELDS = _builder(Event)


def new_event(seq: int, type: str, timestamp: datetime, data: dict[str, Any]) -> Event:
    """:meth:`Event.new`, as a plain function for the engine's hot path."""
    event = _new(Event)
    _set_event_dict(event, {"seq": seq, "type": type, "timestamp": timestamp, "data": data, "v": EVENT_SCHEMA_VERSION})
    _set_event_fields_set(event, _EVENT_FIELDS)
    _set_event_extra(event, None)
    _set_event_private(event, None)
    return event
