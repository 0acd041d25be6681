"""In-process storage: fast, thread-safe, gone when the process exits.

For unit tests and benchmarks. Several event loops (threads) may share one instance.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pyworkflow.clock import utcnow
from pyworkflow.errors import RunFinishedError, RunNotFoundError
from pyworkflow.events import Event, trusted
from pyworkflow.storage.base import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    Activation,
    Lease,
    Message,
    RunCounts,
    RunPage,
    RunStatus,
    StorageBackend,
    StoredSchedule,
    Timer,
    WorkflowRun,
    check_append,
    check_batch,
    check_created_after,
    check_message,
    check_run_changes,
    decode_cursor,
    effective_wake,
    encode_cursor,
    message_id,
    not_due,
    refused_append,
    run_matches,
    tally_runs,
    utc,
    woken_by_message,
)


def _new_token() -> str:
    return os.urandom(12).hex()  # as storage.base.new_token, without its three Python frames


class InMemoryStorageBackend(StorageBackend):
    url = "memory://"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, WorkflowRun] = {}
        self._events: dict[str, list[Event]] = {}
        self._keys: dict[str, str] = {}
        self._timers: dict[str, datetime] = {}
        self._leases: dict[str, Lease] = {}
        self._inbox: dict[str, list[Message]] = {}
        self._message_keys: dict[tuple[str, str], int] = {}
        self._schedules: dict[str, StoredSchedule] = {}

    # -- runs -----------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        with self._lock:
            key = run.idempotency_key
            if key is not None and key in self._keys:
                return self._runs[self._keys[key]], False
            if run.run_id in self._runs:
                raise ValueError(f"run {run.run_id!r} already exists")
            self._runs[run.run_id] = run
            self._events[run.run_id] = list(events)
            if key is not None:
                self._keys[key] = run.run_id
            if run.wake_at is not None:  # the start guard: due if no activation ever ran it
                self._timers[run.run_id] = run.wake_at
            return run, True

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        return self._runs.get(run_id)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        checked = check_run_changes(changes)
        with self._lock:
            return self._apply(run_id, checked)

    def _apply(self, run_id: str, changes: Mapping[str, Any]) -> WorkflowRun:
        """Apply checked changes; the timer follows ``wake_at`` and ``status``."""
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        values = {**run.__dict__, **changes, "updated_at": utcnow()}
        if "wake_at" in changes or "status" in changes:
            wake = values["wake_at"] = effective_wake(
                values["wake_at"],
                terminal=values["status"] in TERMINAL_STATUSES,
                messages_pending=self._pending(run_id),
                now=values["updated_at"],
            )
            if wake is None:
                self._timers.pop(run_id, None)
            else:
                self._timers[run_id] = wake
        run = trusted(WorkflowRun, values)
        self._runs[run_id] = run
        return run

    def _pending(self, run_id: str) -> bool:
        inbox = self._inbox.get(run_id)
        return inbox is not None and any(not m.consumed for m in inbox)

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
        after = decode_cursor(cursor) if cursor else None
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if run_matches(r, status, workflow_name, created_after, created_before, after)
            ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = runs[:limit]
        more = len(runs) > limit
        return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if more and page else None)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        after = check_created_after("count_runs", created_after)
        with self._lock:  # one snapshot
            runs = list(self._runs.values())
        if after is not None:
            runs = [r for r in runs if r.created_at > after]
        return tally_runs(Counter(str(r.status) for r in runs).items(), Counter(r.workflow_name for r in runs).items())

    async def delete_run(self, run_id: str) -> bool:
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is None:
                return False
            self._events.pop(run_id, None)
            self._timers.pop(run_id, None)
            self._leases.pop(run_id, None)
            for message in self._inbox.pop(run_id, ()):
                if message.idempotency_key is not None:
                    self._message_keys.pop((run_id, message.idempotency_key), None)
            if run.idempotency_key is not None:
                self._keys.pop(run.idempotency_key, None)
            return True

    # -- events ---------------------------------------------------------------

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
        expected, changes, consumed = check_append(run_id, events, lease_token, run_changes, consume, release_lease)
        with self._lock:
            log = self._events.get(run_id)
            held = self._leases.get(run_id)
            if (
                log is None
                or len(log) != expected
                or (lease_token is not None and (held is None or held.token != lease_token))
            ):  # refused: the shared rule says why
                refusal = refused_append(
                    run_id,
                    exists=log is not None,
                    last_seq=len(log or ()),
                    expected=expected,
                    lease_token=lease_token,
                    held_token=held.token if held is not None else None,
                )
                if refusal is not None:
                    raise refusal
            assert log is not None
            log.extend(events)
            if consumed:
                inbox = self._inbox.get(run_id, [])
                for n in consumed:
                    if n <= len(inbox):
                        inbox[n - 1] = inbox[n - 1].model_copy(update={"consumed": True})
            if changes:
                self._apply(run_id, changes)
            if release_lease:
                self._leases.pop(run_id, None)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        log = self._events.get(run_id, [])
        end = None if limit is None else after_seq + limit
        return log[after_seq:end]

    # -- timers ---------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        wake_at = self._timers.get(run_id)
        return None if wake_at is None else Timer(run_id=run_id, wake_at=wake_at)

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        now = utc(now)
        later = now + timedelta(seconds=redeliver_after)
        with self._lock:
            due = sorted((w, r) for r, w in self._timers.items() if w <= now)[:limit]
            for _, run_id in due:
                self._timers[run_id] = later
            names = [run.workflow_name if (run := self._runs.get(r)) is not None else None for _, r in due]
        return [Timer(run_id=r, wake_at=w, workflow_name=n) for (w, r), n in zip(due, names, strict=True)]

    # -- inbox ----------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        check_message(run_id, kind, payload, idempotency_key)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if idempotency_key is not None and (run_id, idempotency_key) in self._message_keys:
                return message_id(run_id, self._message_keys[(run_id, idempotency_key)])
            if run.status.is_terminal:
                raise RunFinishedError(run_id, run.status.value)
            inbox = self._inbox.setdefault(run_id, [])
            now = utcnow()
            message = Message(
                run_id=run_id,
                seq=len(inbox) + 1,
                kind=kind,
                payload=payload,
                idempotency_key=idempotency_key,
                posted_at=now,
            )
            inbox.append(message)
            if idempotency_key is not None:
                self._message_keys[(run_id, idempotency_key)] = message.seq
            if woken_by_message(run.status, run.wake_at, now):
                self._runs[run_id] = run.model_copy(update={"wake_at": now, "updated_at": now})
            timer = self._timers.get(run_id)
            self._timers[run_id] = now if timer is None else min(timer, now)
            return message.message_id

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        with self._lock:
            return [m for m in self._inbox.get(run_id, ()) if not (pending_only and m.consumed)]

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return Activation("missing")
            if run.status in TERMINAL_STATUSES:
                self._timers.pop(run_id, None)
                return Activation("finished", run)
            clock = time.time()
            held = self._leases.get(run_id)
            if held is not None and held.expires_at > clock:
                return Activation("busy", run)
            if run.status in WAITING_STATUSES and not_due(
                run.status, run.wake_at, utc(now), bool(self._pending(run_id))
            ):
                if run.wake_at is not None:
                    self._timers[run_id] = run.wake_at  # a timer that fired early waits again
                else:
                    self._timers.pop(run_id, None)
                return Activation("not_due", run)
            lease = trusted(Lease, {"run_id": run_id, "owner": owner, "token": _new_token(), "expires_at": clock + ttl})
            self._leases[run_id] = lease
            inbox = self._inbox.get(run_id)
            messages = [m for m in inbox if not m.consumed] if inbox else []
            return Activation("leased", run, lease, list(self._events[run_id]), messages, held is not None)

    # -- leases ---------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        now = time.time()
        with self._lock:
            held = self._leases.get(run_id)
            if held is not None and held.expires_at > now:
                return None
            lease = trusted(Lease, {"run_id": run_id, "owner": owner, "token": _new_token(), "expires_at": now + ttl})
            self._leases[run_id] = lease
            return lease

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        with self._lock:
            held = self._leases.get(lease.run_id)
            if held is None or held.token != lease.token:
                return None
            renewed = held.model_copy(update={"expires_at": time.time() + ttl})
            self._leases[lease.run_id] = renewed
            return renewed

    async def release_lease(self, lease: Lease) -> None:
        with self._lock:
            held = self._leases.get(lease.run_id)
            if held is not None and held.token == lease.token:
                del self._leases[lease.run_id]

    # -- schedules ------------------------------------------------------------

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        with self._lock:
            held = self._schedules.get(schedule_id)
            if (held.version if held is not None else 0) != version:
                return None
            due = None if due_at is None else utc(due_at)
            self._schedules[schedule_id] = StoredSchedule(schedule_id, body, due, version + 1)
            return version + 1

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        with self._lock:
            return self._schedules.get(schedule_id)

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        with self._lock:
            ids = sorted(i for i in self._schedules if after is None or i > after)[: max(limit, 0)]
            return [self._schedules[i] for i in ids]

    async def delete_schedule(self, schedule_id: str) -> bool:
        with self._lock:
            return self._schedules.pop(schedule_id, None) is not None

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        # A scan: this backend serves tests and demos, where schedules are few.
        now = utc(now)
        with self._lock:
            due = [s for s in self._schedules.values() if s.due_at is not None and s.due_at <= now]
        due.sort(key=lambda s: (s.due_at, s.schedule_id))
        return due[: max(limit, 0)]

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        return []  # it holds validated records only: nothing here can fail to read back

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        now = time.time()
        with self._lock:
            expired = [r for r, lease in self._leases.items() if lease.expires_at <= now][:limit]
            for run_id in expired:
                del self._leases[run_id]
                self._timers[run_id] = utcnow()
        return expired
