"""The storage contract every backend implements.

A backend stores, per run: one record (:class:`WorkflowRun`), an append-only event log,
an inbox of messages, at most one timer and at most one lease; plus an index from
idempotency key to run id. All methods are coroutines. A backend must keep these promises
under concurrency from several processes (the contract suite in ``tests/storage`` proves
them):

* **Idempotent creation.** :meth:`create_run` with an idempotency key already in use
  creates nothing and returns the existing run.
* **One writer per sequence number.** :meth:`append_events` writes a batch only if the
  log's last ``seq`` is exactly ``events[0].seq - 1``; otherwise it raises
  :class:`~pyworkflow.errors.SequenceConflictError` and writes nothing. When a
  ``lease_token`` is given, the append is refused with
  :class:`~pyworkflow.errors.LeaseLostError` unless that token still holds the run's lease.
  The batch, its ``run_changes``, the messages it consumes and the lease release it
  asks for are applied together or not at all.
* **One truth for "due".** A run is due when its record's ``wake_at`` is ``None`` or not
  in the future. The timer index is derived from ``wake_at`` and written in the same
  atomic step as every change of it (there is no other way to set a timer; a backend
  that cannot write both atomically, like the file backend, orders its writes so a crash
  can only make a run wake early, never late), by the rule
  of :func:`effective_wake`: **earliest wins** — a run with pending messages is due now,
  whatever later wake time an append asks for; a finished run has no timer.
* **The inbox.** :meth:`post_message` stores a message and makes the run due now in one
  atomic step, without the lease; a repeated idempotency key stores nothing and returns
  the first message's id. Finished and unknown runs refuse messages
  (:class:`~pyworkflow.errors.RunFinishedError`, :class:`~pyworkflow.errors.RunNotFoundError`).
  Messages are numbered per run in arrival order (``seq`` 1, 2, 3 …). An activation
  consumes them by naming their numbers in the append that records them; a message is
  consumed at most once because only the writer holding the log's next seq can append
  (numbers that do not exist or are already consumed are ignored, not refused).
  Two moves leave the timer off ``wake_at`` on purpose: a claim pushes it ahead (below),
  and :meth:`recover_expired_leases` sets it to now for any run it fences, finished ones
  included; :meth:`begin_activation` removes a finished run's leftover timer.
* **Timers claimed once.** :meth:`claim_due_timers` hands each due timer to exactly one
  caller, and pushes its timer ``redeliver_after`` seconds ahead (``wake_at`` is left as
  it is), so a claim whose activation never arrives is claimed again later.
* **Leases expire.** A lease is held until released or until ``ttl`` seconds pass on the
  backend's clock (wall time). An expired lease may be acquired by anyone (until then its
  old holder can still append: fencing happens at takeover or recovery);
  :meth:`recover_expired_leases` turns expired leases into due timers (one atomic step),
  which fences the old holder and makes the run's recovery a normal wake-up.
* **One call to begin.** :meth:`begin_activation` takes the lease and reads the run, its
  log and its pending messages in one atomic step (one round trip on network backends).
* **JSON only.** Everything stored is JSON; no pickle.
* **Corruption is an error.** A record or log that cannot be read back raises
  :class:`~pyworkflow.errors.CorruptedStorageError` naming the run (and the event's seq);
  it is never skipped or reset silently.
* **Counts without reading runs.** :meth:`count_runs` counts runs by status and by
  workflow from what the backend indexes (a ``GROUP BY`` on SQL, set cardinalities on
  Redis), never by decoding records, except where there is no index (the file backend
  reads every record). SQLite, PostgreSQL and memory count in one snapshot.
* **Any loop, any thread.** One backend object may be used from several event loops and
  threads (clients are held per loop inside); :meth:`close` releases all of them.

The rules every backend shares (validating run changes and messages, decoding records
and events, explaining a refused append, encoding times, the earliest-wins rule) live in
this module, once. Times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from os import urandom as _urandom
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from pyworkflow.errors import (
    CorruptedStorageError,
    LeaseLostError,
    RunNotFoundError,
    SequenceConflictError,
    SerializationError,
    StorageUnavailableError,
)
from pyworkflow.events import Event
from pyworkflow.serialization import check_key, clean_text, json_text


class RunStatus(str, Enum):
    """Where a run stands. Stored data: values are never renamed."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    PAUSED = "paused"  # held by pause() at a durable call until unpause(); wakes only for messages
    BLOCKED = "blocked"  # replay diverged from the log: holds until retry() after a code fix
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CONTINUED = "continued"  # ended by continue_as_new(): the chain goes on in the next run

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.CONTINUED})
#: A run that waits: no activation runs it before its wake time or a message.
WAITING_STATUSES = frozenset({RunStatus.SUSPENDED, RunStatus.PAUSED, RunStatus.BLOCKED})

#: Fields of a run that :meth:`StorageBackend.update_run` and ``run_changes`` may set.
MUTABLE_RUN_FIELDS = frozenset({"status", "result", "error", "wake_at", "completed_at"})


class WorkflowRun(BaseModel):
    """The record of one run. The event log is the truth; this is its summary."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow_name: str
    status: RunStatus = RunStatus.PENDING
    input: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    deadline: datetime | None = None
    wake_at: datetime | None = None
    #: The run that started this one as a child (``start_child``/``run_child``), or ``None``.
    parent_run_id: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkflowRun:
        return cls.model_validate_json(raw)


class Timer(BaseModel):
    run_id: str
    wake_at: datetime
    #: The run's workflow, when the backend reads it with the claim (not the file backend):
    #: the name Flower and ``celery inspect`` show for the wake-up.
    workflow_name: str | None = None


class Lease(BaseModel):
    """The exclusive, expiring right of ``owner`` to activate ``run_id``."""

    run_id: str
    owner: str
    token: str
    expires_at: float  # seconds since the epoch, backend wall clock

    @property
    def expired(self) -> bool:
        return time.time() >= self.expires_at


class RunPage(BaseModel):
    runs: list[WorkflowRun]
    next_cursor: str | None = None


@dataclass(frozen=True)
class RunCounts:
    """What :meth:`StorageBackend.count_runs` found: runs per status (every
    :class:`RunStatus` value is a key, zeros included, in the enum's order), runs per
    workflow (only workflows with runs, most runs first, ties by name) and ``total``,
    the sum of ``by_status``."""

    by_status: dict[str, int]
    by_workflow: dict[str, int]
    total: int


class Message(BaseModel):
    """One message in a run's inbox: a signal, a cancellation, a step outcome …

    ``seq`` numbers a run's messages in arrival order (1, 2, 3 …); ``message_id`` is
    ``"{run_id}:{seq}"``. ``consumed`` turns true in the append that records it.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int = Field(ge=1)
    kind: str
    payload: Any = None
    idempotency_key: str | None = None
    posted_at: datetime
    consumed: bool = False

    @property
    def message_id(self) -> str:
        return message_id(self.run_id, self.seq)


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as storage keeps it: an opaque JSON ``body`` (its definition and state,
    read and written by :mod:`pyworkflow.schedules`), the time the tick must look at it
    next (``None``: never, e.g. paused), and a ``version`` bumped by every write, for
    compare-and-set (:meth:`StorageBackend.save_schedule`)."""

    schedule_id: str
    body: str
    due_at: datetime | None
    version: int


ActivationStatus = Literal["leased", "busy", "missing", "finished", "not_due"]


@dataclass
class Activation:
    """What :meth:`StorageBackend.begin_activation` found.

    ``leased``: the lease is taken and ``run``, ``events`` and ``messages`` (pending, in
    arrival order) are loaded. Otherwise nothing was taken: ``busy`` (another holder),
    ``missing`` (no such run), ``finished`` (terminal; its timer was removed), ``not_due``
    (suspended, ``run.wake_at`` in the future and no message pending).

    ``took_over``: the lease was taken from a holder that never released it and let it
    expire (its activation died): the run was interrupted even if nothing says so yet.
    """

    status: ActivationStatus
    run: WorkflowRun | None = None
    lease: Lease | None = None
    events: list[Event] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    took_over: bool = False


def new_run_id() -> str:
    """A unique, URL-safe run id that sorts by creation time (48-bit ms + 80 random bits)."""
    return f"{time.time_ns() // 1_000_000:012x}{_urandom(10).hex()}"  # what secrets.token_hex does


def new_token() -> str:
    return _urandom(12).hex()


def message_id(run_id: str, seq: int) -> str:
    return f"{run_id}:{seq}"


# -- times --------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def to_us(dt: datetime) -> int:
    """Exact microseconds since the epoch, the one integer form of a time in storage
    (float timestamps would round)."""
    return (utc(dt) - _EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def woken_by_message(status: str, wake_at: datetime | None, now: datetime) -> bool:
    """Whether a message posted ``now`` moves the run's ``wake_at`` to ``now`` (earliest
    wins): a later wake time, or a suspended run that waits for messages only (no wake
    time: a signal wait without a timeout)."""
    if wake_at is None:
        return status in WAITING_STATUSES
    return wake_at > now


def not_due(status: str, wake_at: datetime | None, now: datetime, messages_pending: bool) -> bool:
    """Whether ``begin_activation`` leaves the run alone: suspended, no message pending,
    and a wake time still ahead or none at all (it waits for a message)."""
    return status in WAITING_STATUSES and not messages_pending and (wake_at is None or wake_at > now)


def effective_wake(
    requested: datetime | None, *, terminal: bool, messages_pending: bool, now: datetime
) -> datetime | None:
    """The wake time to store, by the earliest-wins rule: a finished run never wakes; a
    run with pending messages is due now, whatever later time was asked; otherwise the
    time asked (``None``: no timer)."""
    if terminal:
        return None
    if messages_pending and (requested is None or requested > now):
        return now
    return requested


# -- validation: one rule in one place -------------------------------------------------------


def check_created_after(operation: str, created_after: Any) -> datetime | None:
    """``created_after`` as a UTC ``datetime`` (a naive one is read as UTC), or ``None``.
    Anything else raises ``TypeError`` naming ``operation`` and the argument."""
    if created_after is None:
        return None
    if not isinstance(created_after, datetime):
        raise TypeError(
            f"{operation}: created_after must be a datetime or None, got {type(created_after).__name__} "
            f"{created_after!r}"
        )
    return utc(created_after)


def tally_runs(by_status: Iterable[tuple[str, int]], by_workflow: Iterable[tuple[str, int]]) -> RunCounts:
    """The :class:`RunCounts` of ``(status, count)`` and ``(workflow, count)`` pairs as a
    backend counted them (a name may come more than once; its counts add up)."""
    statuses = {s.value: 0 for s in RunStatus}
    for status, count in by_status:
        # A status this release does not know (a newer one's, or damaged) is counted under its name.
        statuses[str(status)] = statuses.get(str(status), 0) + int(count)
    workflows: dict[str, int] = {}
    for name, count in by_workflow:
        if count:
            workflows[name] = workflows.get(name, 0) + int(count)
    ranked = dict(sorted(workflows.items(), key=lambda item: (-item[1], item[0])))
    return RunCounts(by_status=statuses, by_workflow=ranked, total=sum(statuses.values()))


def _json_value(what: str, value: Any) -> None:
    """Refuse a value the value policy refuses (see :mod:`pyworkflow.serialization`): not
    JSON, a float that is not finite, a string with a NUL or a lone surrogate. Raises
    :class:`~pyworkflow.errors.SerializationError` (a ``ValueError``) naming ``what``."""
    kind = type(value)
    if kind is int or kind is bool or value is None:
        return
    if kind is str:
        if clean_text(value):
            return
    elif kind is float and value - value == 0.0:  # finite floats only
        return
    json_text(value, what)  # raises unless the value is fine


def escaped_text(value: Any) -> Any:
    """``value`` with NUL characters and lone surrogates in its strings written as
    backslash escapes (``"\\x00"``, ``"\\ud800"``)."""
    if isinstance(value, str):
        if clean_text(value):
            return value
        return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {escaped_text(k): escaped_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escaped_text(v) for v in value]
    return value


def check_run_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate run changes and return them normalised (statuses as :class:`RunStatus`,
    times as UTC ``datetime``). Every backend calls this before writing, so no change can
    leave a record that cannot be read back. Raises ``ValueError`` naming the field
    (:class:`~pyworkflow.errors.SerializationError`, a ``ValueError``, for a ``result``
    or ``error`` the value policy refuses; NUL characters and lone surrogates in an
    ``error``'s text are escaped instead, so a failure can always be recorded)."""
    if not MUTABLE_RUN_FIELDS.issuperset(changes):
        unknown = set(changes) - MUTABLE_RUN_FIELDS
        raise ValueError(f"cannot change run field(s) {sorted(unknown)}; mutable fields: {sorted(MUTABLE_RUN_FIELDS)}")
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "status":
            if type(value) is not RunStatus:  # the engine's own values need no lookup
                try:
                    value = RunStatus(value)
                except ValueError:
                    raise ValueError(
                        f"run field 'status' must be one of {[s.value for s in RunStatus]}, got {value!r}"
                    ) from None
        elif name == "wake_at" or name == "completed_at":
            if value is not None:
                if not isinstance(value, datetime):
                    raise ValueError(f"run field {name!r} must be a datetime or None, got {value!r}")
                if value.tzinfo is None:
                    value = utc(value)
        elif name == "error":
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"run field 'error' must be a dict or None, got {value!r}")
            try:
                _json_value("run field 'error'", value)
            except SerializationError:
                # An error is the engine's description of an exception, whose message may
                # quote any text: a NUL or a lone surrogate is escaped, so a run can always
                # record that it failed. Anything else the policy refuses stays refused.
                value = escaped_text(value)
                _json_value("run field 'error'", value)
        elif name == "result":
            _json_value("run field 'result'", value)
        checked[name] = value
    return checked


def check_batch(run_id: str, events: Sequence[Event]) -> int:
    """Validate a batch's sequence numbers; return the seq the writer expects as last."""
    if not events:
        raise ValueError(f"run {run_id!r}: append_events needs at least one event")
    first: int = events[0].seq
    if len(events) > 1:
        for offset, event in enumerate(events):
            if event.seq != first + offset:
                raise ValueError(f"run {run_id!r}: batch seqs must be consecutive, got {[e.seq for e in events]}")
    return first - 1


def check_append(
    run_id: str,
    events: Sequence[Event],
    lease_token: str | None,
    run_changes: Mapping[str, Any] | None,
    consume: Iterable[int],
    release_lease: bool,
) -> tuple[int, dict[str, Any], list[int]]:
    """Validate an append's arguments before anything is written; return the seq expected
    as last, the checked run changes and the message numbers to consume (sorted, unique)."""
    expected = check_batch(run_id, events)
    changes = check_run_changes(run_changes) if run_changes else {}
    if not consume and type(consume) in (list, tuple):  # the common case: nothing to consume
        seqs: list[int] = []
    else:
        given = list(consume)
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in given):
            raise ValueError(f"run {run_id!r}: consume takes message seqs (ints >= 1), got {given!r}")
        seqs = sorted(set(given))
    if release_lease and lease_token is None:
        raise ValueError(f"run {run_id!r}: release_lease=True needs the lease_token it releases")
    return expected, changes, seqs


MAX_MESSAGE_KIND = 200


def check_message(run_id: str, kind: str, payload: Any, idempotency_key: str | None) -> str:
    """Validate a message before it is posted; return the payload's JSON text (what
    ``json.dumps(payload, allow_nan=False, separators=(",", ":"))`` returns).

    ``ValueError`` for a malformed run id, kind or key; for a payload, kind or key that
    breaks the value policy, :class:`~pyworkflow.errors.SerializationError` (a
    ``ValueError`` too) naming it."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"post_message needs a run id (a non-empty string), got {run_id!r}")
    if not isinstance(kind, str) or not kind or len(kind) > MAX_MESSAGE_KIND:
        raise ValueError(
            f"run {run_id!r}: a message kind is a non-empty string of at most "
            f"{MAX_MESSAGE_KIND} characters, got {kind!r}"
        )
    if not (clean_text(run_id) and clean_text(kind)):
        _json_value("post_message: the run id", run_id)
        _json_value(f"run {run_id!r}: the message kind", kind)
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise ValueError(
                f"run {run_id!r}: a message idempotency_key is a non-empty string or None, got {idempotency_key!r}"
            )
        check_key(idempotency_key, f"run {run_id!r}: the message idempotency_key")
    return json_text(payload, f"run {run_id!r}: the payload of message {kind!r}")


def refused_append(
    run_id: str, *, exists: bool, last_seq: int, expected: int, lease_token: str | None, held_token: str | None
) -> Exception | None:
    """What a refused append raises, in the contract's order (missing run, sequence, lease);
    ``None`` when nothing refuses it."""
    if not exists:
        return RunNotFoundError(run_id)
    if last_seq != expected:
        return SequenceConflictError(run_id, expected, last_seq)
    if lease_token is not None and held_token != lease_token:
        return LeaseLostError(run_id)
    return None


# -- decoding -------------------------------------------------------------------------------


def unavailable(run_id: str | None, exc: BaseException) -> StorageUnavailableError:
    """A driver's "unreachable" error (see :attr:`StorageBackend.unavailable_errors`) as
    the :class:`StorageUnavailableError` it stands for, naming the run."""
    subject = f"run {run_id!r}: " if run_id else ""
    error = StorageUnavailableError(f"{subject}storage unavailable: {type(exc).__name__}: {exc}", run_id=run_id)
    error.__cause__ = exc
    return error


def corrupted(run_id: str, what: str, exc: BaseException | str) -> CorruptedStorageError:
    return CorruptedStorageError(f"run {run_id!r}: the stored {what} cannot be read back: {exc}", run_id=run_id)


def decode_run(raw: str | bytes, run_id: str, *, of_run: bool = True) -> WorkflowRun:
    """A stored run record, read back; ``CorruptedStorageError`` naming ``run_id`` when it
    cannot be, or (``of_run``) when it is the record of another run."""
    try:
        run = WorkflowRun.model_validate_json(raw)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise corrupted(run_id, "run record", exc) from exc
    if of_run and run.run_id != run_id:
        raise corrupted(run_id, "run record", f"it belongs to run {run.run_id!r}")
    return run


_EVENT_LIST = TypeAdapter(list[Event])


def decode_events(bodies: Sequence[str | bytes], run_id: str, first_seq: int = 1) -> list[Event]:
    """Events from their stored JSON texts (seq ``first_seq``, ``first_seq + 1`` …).

    One pass of pydantic's parser over the log joined into one array is the fastest way
    from text to events; when it fails, a slow pass names the broken event's seq.
    """
    if not bodies:
        return []
    try:
        texts = [b.decode() if isinstance(b, bytes) else b for b in bodies]
    except UnicodeDecodeError as exc:
        raise corrupted(run_id, "event log", exc) from exc
    try:
        events = _EVENT_LIST.validate_json("[" + ",".join(texts) + "]")
    except (ValueError, TypeError):
        for offset, body in enumerate(texts):
            try:
                Event.model_validate_json(body)
            except ValueError as exc:
                raise corrupted(run_id, f"event seq {first_seq + offset}", exc) from exc
        raise corrupted(run_id, "event log", "not a valid sequence of events") from None
    for offset, event in enumerate(events):
        if event.seq != first_seq + offset:
            raise corrupted(run_id, f"event seq {first_seq + offset}", f"found seq {event.seq} in its place")
    return events


def decode_message(raw: Mapping[str, Any], run_id: str) -> Message:
    if not isinstance(raw, Mapping):
        raise corrupted(run_id, "message", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return Message.model_validate(raw)
    except ValueError as exc:
        raise corrupted(run_id, f"message {raw.get('seq', '?')}", exc) from exc


def message_payload(text: str | bytes, run_id: str, seq: int) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise corrupted(run_id, f"message {seq}", exc) from exc


class StorageBackend(ABC):
    """The async storage interface. See the module docstring for the promises."""

    #: The URL that selects this backend, with any password redacted.
    url: str = ""
    #: The driver's errors that mean "unreachable for now" (connection refused or cut, a
    #: timeout): the engine retries them like :class:`StorageUnavailableError`.
    unavailable_errors: tuple[type[BaseException], ...] = ()

    async def close(self) -> None:  # noqa: B027 - optional hook: backends without handles need nothing
        """Release connections and handles. The backend may not be used afterwards."""

    async def __aenter__(self) -> StorageBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- runs -----------------------------------------------------------------

    @abstractmethod
    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        """Create ``run`` and append ``events`` (seq 1…n) in one atomic step. A new run
        has no timer (its first activation is sent by whoever starts it).

        If ``run.idempotency_key`` already names a run, nothing is written and that run is
        returned with ``False``; otherwise the new run is returned with ``True``. A run id
        that exists already raises ``ValueError``.
        """

    @abstractmethod
    async def get_run(self, run_id: str) -> WorkflowRun | None:
        """The run's record, or ``None``."""

    @abstractmethod
    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        """Set fields of :data:`MUTABLE_RUN_FIELDS` (``updated_at`` follows); return the
        new record. Checked with :func:`check_run_changes`; the timer follows ``wake_at``
        and ``status`` as in :meth:`append_events`. Raises
        :class:`~pyworkflow.errors.RunNotFoundError`."""

    @abstractmethod
    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs matching every given filter, newest first, ``limit`` per page.

        Pass the returned ``next_cursor`` to get the next page; it is ``None`` on the
        last page. Cursors are opaque strings.
        """

    async def list_children(
        self,
        parent_run_id: str,
        *,
        status: RunStatus | str | None = None,
        workflow_name: str | None = None,
        created_after: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        """The child runs ``parent_run_id`` started, newest first, as :meth:`list_runs`
        pages them (same cursor). Read from the parent's log (its ``child.started``
        events), so it costs one log read and one record per child, on every backend.
        An unknown parent has no children."""
        events = await self.get_events(parent_run_id)
        ids = dict.fromkeys(str(e.data["run_id"]) for e in events if e.type == "child.started")
        after = decode_cursor(cursor) if cursor else None
        runs = [
            run
            for run in [await self.get_run(run_id) for run_id in ids]
            if run is not None and run_matches(run, status, workflow_name, created_after, None, after)
        ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = runs[: max(limit, 0)]
        more = len(runs) > len(page) and bool(page)
        return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if more else None)

    @abstractmethod
    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        """How many runs there are, by status and by workflow (see :class:`RunCounts`):
        the runs :meth:`list_runs` pages through with the same ``created_after`` (runs
        created strictly after it; a naive time is UTC).

        Counted from the backend's index, not its records: a run whose record cannot be
        read back (which listings skip) is still counted, except by the file backend,
        which has no index and reads every record. Counts taken while runs are created or
        change status include some of those changes and not others, unless the backend
        counts in one snapshot (SQLite, PostgreSQL, memory). ``TypeError`` (naming this
        method and the argument) when ``created_after`` is not a ``datetime`` or ``None``
        (:func:`check_created_after`).
        """

    @abstractmethod
    async def delete_run(self, run_id: str) -> bool:
        """Delete the run with its events, messages, timer, lease and idempotency key.

        Returns whether a run was deleted.
        """

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        """Delete finished runs (or runs in ``statuses``) last updated before ``older_than``.

        Returns how many were deleted. Backends may override with a faster query.
        """
        wanted = {RunStatus(s) for s in statuses} if statuses is not None else set(TERMINAL_STATUSES)
        cutoff = utc(older_than)
        deleted = 0
        for status in wanted:
            while True:
                page = await self.list_runs(status=status, limit=500)
                doomed = [r.run_id for r in page.runs if r.updated_at < cutoff]
                while page.next_cursor and len(doomed) < 500:
                    page = await self.list_runs(status=status, limit=500, cursor=page.next_cursor)
                    doomed += [r.run_id for r in page.runs if r.updated_at < cutoff]
                if not doomed:
                    break
                for run_id in doomed:
                    deleted += await self.delete_run(run_id)
        return deleted

    # -- events ---------------------------------------------------------------

    @abstractmethod
    async def append_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        lease_token: str | None = None,
        run_changes: Mapping[str, Any] | None = None,
        consume: Sequence[int] = (),
        release_lease: bool = False,
    ) -> None:
        """Append a batch whose first ``seq`` is one past the log's last, atomically.

        Raises :class:`~pyworkflow.errors.SequenceConflictError` when the log's last seq is
        not ``events[0].seq - 1``, :class:`~pyworkflow.errors.LeaseLostError` when
        ``lease_token`` is given and does not hold the run's lease, and
        :class:`~pyworkflow.errors.RunNotFoundError`; in each case nothing is written
        (:func:`refused_append` picks the error). Arguments are checked first with
        :func:`check_append`. In the same atomic step:

        * ``run_changes`` (fields of :data:`MUTABLE_RUN_FIELDS`) update the record; a
          ``wake_at`` or terminal ``status`` among them sets the timer by
          :func:`effective_wake` (pending messages not consumed here count as pending);
        * the messages numbered in ``consume`` are marked consumed;
        * with ``release_lease``, the lease ``lease_token`` holds is released.
        """

    @abstractmethod
    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events with ``seq > after_seq`` in order, at most ``limit``."""

    # -- timers ---------------------------------------------------------------

    @abstractmethod
    async def get_timer(self, run_id: str) -> Timer | None:
        """The run's timer, or ``None``."""

    @abstractmethod
    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        """Claim up to ``limit`` timers with ``wake_at <= now``, earliest first.

        Each claimed timer is returned to exactly one caller and the timer moves to
        ``now + redeliver_after`` in the same atomic step (the run's ``wake_at`` stays).
        The returned timers carry the wake time they had when claimed. Only due timers
        are read: the cost does not grow with the number of runs asleep.
        """

    # -- inbox ----------------------------------------------------------------

    @abstractmethod
    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        """Store a message for ``run_id`` and make the run due now, atomically; return its
        ``message_id``. Needs no lease.

        Checked first with :func:`check_message` (``ValueError``). A key already used
        for this run stores nothing and returns that message's id. Raises
        :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run and
        :class:`~pyworkflow.errors.RunFinishedError` for a finished one (nothing stored).
        Making due (:func:`woken_by_message`): ``wake_at`` becomes ``min(wake_at, now)``,
        and ``now`` for a suspended run with none (it waits for messages only); the timer
        becomes ``min(timer, now)``.
        """

    @abstractmethod
    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        """The run's messages in arrival order (only unconsumed ones by default)."""

    @abstractmethod
    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        """Decide, take the lease and load, in one atomic step (see :class:`Activation`).

        In order: no run → ``missing``; a finished run → ``finished`` (its timer removed);
        a lease held by another and not expired → ``busy``; a suspended run with no
        pending message whose ``wake_at`` is after ``now`` or unset (it waits for a
        message) → ``not_due`` (:func:`not_due`). Otherwise the lease is taken for
        ``ttl`` seconds and the run, its whole log and its pending messages are returned.
        """

    # -- leases ---------------------------------------------------------------

    @abstractmethod
    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        """Take the run's lease for ``ttl`` seconds if it is free or expired, else ``None``."""

    @abstractmethod
    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a lease still held by ``lease.token``; ``None`` if it was lost."""

    @abstractmethod
    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up, if ``lease.token`` still holds it."""

    @abstractmethod
    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        """Turn up to ``limit`` expired leases into due timers, in one atomic step each.

        The lease is removed (the old holder's later appends are refused) and the run's
        timer is set to now. Returns the run ids.
        """

    # -- schedules --------------------------------------------------------------

    @abstractmethod
    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        """Write a schedule if its stored version is still ``version`` (``0``: it must not
        exist yet); return the new version (``version + 1``), or ``None`` when another
        writer got there first (nothing is written). ``due_at`` is indexed for
        :meth:`due_schedules`."""

    @abstractmethod
    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        """The schedule, or ``None``."""

    @abstractmethod
    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        """Up to ``limit`` schedules in id order, those after the id ``after``."""

    @abstractmethod
    async def delete_schedule(self, schedule_id: str) -> bool:
        """Remove the schedule; ``False`` when there was none."""

    @abstractmethod
    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        """Up to ``limit`` schedules whose ``due_at`` is at or before ``now``, earliest
        first. Reads only what is due (an index), whatever the number of schedules."""

    # -- unreadable runs --------------------------------------------------------

    @abstractmethod
    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        """Ids of up to ``limit`` runs whose stored record cannot be read back.

        Such a run is skipped (and reported with :func:`report_unreadable`) by
        :meth:`list_runs`, :meth:`claim_due_timers` and :meth:`recover_expired_leases`,
        so one damaged run never stops the others; this is where an operator (or a CLI)
        finds it. Reads every run: for operators, not the engine's hot path. A backend
        that cannot hold an unreadable record returns ``[]``.
        """


def page_cursor(created_at: datetime, run_id: str) -> str:
    """The ``list_runs`` cursor that continues after this run (read by :func:`decode_cursor`)."""
    return f"{utc(created_at).isoformat()}|{run_id}"


def encode_cursor(run: WorkflowRun) -> str:
    return page_cursor(run.created_at, run.run_id)


def readable_runs(
    records: Iterable[tuple[str, Any]],
    decode: Callable[[str, Any], WorkflowRun] | None = None,
    operation: str = "list_runs",
) -> list[WorkflowRun]:
    """The runs of ``(run_id, stored record)`` pairs that can be read back, in order; each
    one that cannot is reported (:func:`report_unreadable`) and skipped, so one damaged
    run never hides the others. ``decode(run_id, raw)`` defaults to :func:`decode_run`."""
    runs = []
    for run_id, raw in records:
        try:
            runs.append(decode(run_id, raw) if decode is not None else decode_run(raw, run_id))
        except CorruptedStorageError as exc:
            report_unreadable(run_id, operation, exc)
    return runs


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Cursors order runs newest first by ``(created_at, run_id)``."""
    try:
        created, run_id = cursor.split("|", 1)
        return utc(datetime.fromisoformat(created)), run_id
    except ValueError:
        raise ValueError(f"invalid list_runs cursor {cursor!r}; pass back a next_cursor you were given") from None


def run_matches(
    run: WorkflowRun,
    status: RunStatus | str | None,
    workflow_name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    cursor: tuple[datetime, str] | None,
) -> bool:
    """The list_runs filter, for backends that filter in Python."""
    if status is not None and run.status != RunStatus(status):
        return False
    if workflow_name is not None and run.workflow_name != workflow_name:
        return False
    if created_after is not None and run.created_at <= utc(created_after):
        return False
    if created_before is not None and run.created_at >= utc(created_before):
        return False
    if cursor is not None and (run.created_at, run.run_id) >= cursor:
        return False
    return True


_DSN_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***``: in the userinfo, in a
    ``?password=`` query, or in a ``password=`` key of a libpq key=value string.
    For logs, reprs and errors.

    Passwords are often pasted unencoded, so the userinfo is found without a URL
    parser (which would end the host part at a ``/``, ``?`` or ``#`` inside the
    password): it is what lies between ``scheme://`` and the last ``@``.
    """
    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    scheme, _, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{after}"
    path, question, query = rest.partition("?")
    if question:
        rest = path + "?" + _QUERY_PASSWORD.sub(r"\1***", query)
    return f"{scheme}://{rest}"


def report_unreadable(run_id: str, operation: str, exc: BaseException) -> None:
    """Report a run skipped by ``operation`` because its stored data cannot be read back
    (a warning naming the run): one damaged run must not stop the others, nor vanish
    silently. :meth:`StorageBackend.list_unreadable_runs` lists such runs."""
    from pyworkflow.observability import engine_log

    engine_log("storage_run_unreadable", level="warning", run_id=run_id, operation=operation, error=str(exc))
