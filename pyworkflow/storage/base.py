"""The storage contract every backend implements.

A backend stores, per run: one record (:class:`WorkflowRun`), an append-only event log,
at most one timer and at most one lease; plus an index from idempotency key to run id.
All methods are coroutines. A backend must keep these promises under concurrency from
several processes (the contract suite in ``tests/storage`` proves them):

* **Idempotent creation.** :meth:`create_run` with an idempotency key already in use
  creates nothing and returns the existing run.
* **One writer per sequence number.** :meth:`append_events` writes a batch only if the
  log's last ``seq`` is exactly ``events[0].seq - 1``; otherwise it raises
  :class:`~pyworkflow.errors.SequenceConflictError` and writes nothing. When a
  ``lease_token`` is given, the append is refused with
  :class:`~pyworkflow.errors.LeaseLostError` unless that token still holds the run's lease.
  The batch and its ``run_changes`` are applied together or not at all.
* **Timers claimed once.** :meth:`claim_due_timers` hands each due timer to exactly one
  caller, and pushes its wake time ``redeliver_after`` seconds ahead instead of deleting
  it, so a claim whose activation never arrives is claimed again later (no lost wake-up).
  A timer disappears only through :meth:`cancel_timer` or a new :meth:`schedule_timer`.
* **Leases expire.** A lease is held until released or until ``ttl`` seconds pass on the
  backend's clock (wall time). An expired lease may be acquired by anyone;
  :meth:`recover_expired_leases` turns expired leases into due timers (one atomic step),
  which fences the old holder and makes the run's recovery a normal wake-up.
* **JSON only.** Everything stored is JSON; no pickle.
* **Corruption is an error.** A record or log that cannot be read back raises
  :class:`~pyworkflow.errors.CorruptedStorageError` naming the run; it is never skipped
  or reset silently.

Times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pyworkflow.events import Event


class RunStatus(str, Enum):
    """Where a run stands. Stored data: values are never renamed."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})

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

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkflowRun:
        return cls.model_validate_json(raw)


class Timer(BaseModel):
    run_id: str
    wake_at: datetime


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


def new_run_id() -> str:
    """A unique, URL-safe run id that sorts by creation time (48-bit ms + 80 random bits)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def new_token() -> str:
    return secrets.token_hex(12)


def utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def check_run_changes(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - MUTABLE_RUN_FIELDS
    if unknown:
        raise ValueError(f"cannot change run field(s) {sorted(unknown)}; mutable fields: {sorted(MUTABLE_RUN_FIELDS)}")


def check_batch(run_id: str, events: Sequence[Event]) -> int:
    """Validate a batch's sequence numbers; return the seq the writer expects as last."""
    if not events:
        raise ValueError(f"run {run_id!r}: append_events needs at least one event")
    first = events[0].seq
    if len(events) == 1:
        return first - 1
    for offset, event in enumerate(events):
        if event.seq != first + offset:
            raise ValueError(f"run {run_id!r}: batch seqs must be consecutive, got {[e.seq for e in events]}")
    return first - 1


class StorageBackend(ABC):
    """The async storage interface. See the module docstring for the promises."""

    #: The URL that selects this backend, with any password redacted.
    url: str = ""

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
        """Create ``run`` and append ``events`` (seq 1…n) in one atomic step.

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
        new record. Raises :class:`~pyworkflow.errors.RunNotFoundError`."""

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

    @abstractmethod
    async def delete_run(self, run_id: str) -> bool:
        """Delete the run with its events, timer, lease and idempotency key.

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
    ) -> None:
        """Append a batch whose first ``seq`` is one past the log's last, atomically.

        Raises :class:`~pyworkflow.errors.SequenceConflictError` when the log's last seq is
        not ``events[0].seq - 1``, :class:`~pyworkflow.errors.LeaseLostError` when
        ``lease_token`` is given and does not hold the run's lease, and
        :class:`~pyworkflow.errors.RunNotFoundError`; in each case nothing is written.
        ``run_changes`` (fields of :data:`MUTABLE_RUN_FIELDS`) update the run record in the
        same atomic step.
        """

    @abstractmethod
    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events with ``seq > after_seq`` in order, at most ``limit``."""

    # -- timers ---------------------------------------------------------------

    @abstractmethod
    async def schedule_timer(self, run_id: str, wake_at: datetime) -> None:
        """Set the run's timer (a run has at most one; this replaces it)."""

    @abstractmethod
    async def cancel_timer(self, run_id: str) -> None:
        """Remove the run's timer if it has one."""

    @abstractmethod
    async def get_timer(self, run_id: str) -> Timer | None:
        """The run's timer, or ``None``."""

    @abstractmethod
    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        """Claim up to ``limit`` timers with ``wake_at <= now``, earliest first.

        Each claimed timer is returned to exactly one caller and its ``wake_at`` moves to
        ``now + redeliver_after`` in the same atomic step. The returned timers carry the
        wake time they had when claimed.
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


def encode_cursor(run: WorkflowRun) -> str:
    return f"{run.created_at.isoformat()}|{run.run_id}"


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
    For logs, reprs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}" if at and ":" in userinfo else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc, query=_QUERY_PASSWORD.sub(r"\1***", parts.query)))
