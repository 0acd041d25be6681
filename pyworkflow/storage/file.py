"""Storage in a directory of JSON files, shared safely by processes on one machine.

Layout, under the root directory (``./.pyworkflow`` unless told otherwise)::

    runs/<run_id>.jsonl   everything about one run, append-only JSON lines: its record,
                          events, messages, consumption marks and lease (the format is
                          in :mod:`~pyworkflow.storage.file_log`); also the run's lock
                          (:mod:`~pyworkflow.storage.file_runs`)
    keys/<sha256(key)>    an idempotency key: its run's id; also the key's lock
    timers/               the timer index (:mod:`~pyworkflow.storage.file_timers`)
    leases.log            ids of runs that took a lease since the last recovery
    leases.lock           held by whoever runs recover_expired_leases

Nothing in a run file is ever rewritten, so every change to a run (an event batch with
its record change, consumed messages and lease release; a posted message with its wake
time) is one ``write`` of whole lines to an ``O_APPEND`` descriptor: it lands entirely
or, cut short, is truncated away, and a write cut by a crash is found by every reader.
Files only grow until delete_run or prune_runs removes them (with their messages).

Locking. A run's file is its lock (``flock``); a key's file is locked while the key is
claimed, ``timers/lock`` guards the timer files, and ``leases.log`` is locked shared to
append and exclusively to compact. Locks are only taken in the order ``leases.lock``,
key, run, then ``timers/lock`` or ``leases.log``, so they cannot deadlock. One instance
serves one thread at a time (an internal mutex), so threads may share it.

Timers. The timer follows the record's ``wake_at`` by the earliest-wins rule, set under
the run's lock by the call that changes ``wake_at`` or ``status``. The timer files are
not the run file, so the two are written one after the other, in the order that makes a
crash in between harmless: a timer moved earlier (a message posted, an earlier wake) is
moved before the run file is written, a timer moved later or removed after it. A crash
leaves at worst a timer earlier than the record asks; the activation it starts finds
the run not due and puts the timer back at ``wake_at``.

Creation. The creator makes the run file with ``O_EXCL``, locks it at once and writes
the record and first events in one ``write``; until then the file is empty, which
counts as no run. Under the key's lock, an idempotency key is made to name its run just
before the run is created; a crash in between leaves a key naming a run that does not
exist, which the next creator with that key takes over: holding the same lock, nobody
else can be halfway. A lease asked for on a run that does not exist (the engine does
so when a guard timer fires for a run that was never created) is kept nowhere and
holds nothing: were the run created after all, appends made with it are refused.

Durability. With ``fsync=False`` (the default) every finished call survives the crash
of any process, but not a power loss or kernel crash: data may still be in the page
cache. With ``fsync=True`` files and directories are flushed before a call returns, at
a few milliseconds a call.

Cost. The hot path never looks at other runs and most calls read nothing but what
other writers appended since (see :mod:`~pyworkflow.storage.file_runs`). get_events
and begin_activation read the run's file. claim_due_timers reads only due timers;
recover_expired_leases reads the runs named in ``leases.log``. list_runs, count_runs and
prune_runs read every run file: they are for operators, not for the engine's hot path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from pyworkflow.clock import utcnow
from pyworkflow.errors import ConfigurationError, CorruptedStorageError, RunFinishedError, RunNotFoundError
from pyworkflow.events import Event
from pyworkflow.storage import file_io
from pyworkflow.storage.base import (
    TERMINAL_STATUSES,
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
    from_us,
    message_id,
    new_token,
    not_due,
    refused_append,
    report_unreadable,
    run_matches,
    tally_runs,
    to_us,
    utc,
    woken_by_message,
)
from pyworkflow.storage.file_io import (
    O_CLOEXEC,
    PRIVATE_FILE_MODE,
    make_private_dirs,
    pread_to_end,
    pwrite_all,
    read_file,
    write_all,
)
from pyworkflow.storage.file_log import (
    SET,
    RunLog,
    decode_located,
    encode_append,
    encode_changes,
    encode_creation,
    encode_message,
    scan,
    split_lines,
)
from pyworkflow.storage.file_runs import RunFiles, check_id
from pyworkflow.storage.file_schedules import ScheduleFiles
from pyworkflow.storage.file_timers import TimerIndex

DEFAULT_PATH = "./.pyworkflow"


class FileStorageBackend(StorageBackend):
    """Runs, logs, inboxes, timers and leases as files under ``path``. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = False) -> None:
        given = DEFAULT_PATH if path is None else os.fspath(path)
        self.url = f"file://{given}"
        # Absolute, so a later chdir does not move the store under our feet.
        self.root = os.path.abspath(given)
        self.fsync = fsync
        self._files = RunFiles(os.path.join(self.root, "runs"), fsync=fsync)
        self._keys = os.path.join(self.root, "keys")
        make_private_dirs(self._keys)
        self._timers = TimerIndex(self.root, fsync=fsync)
        self._schedules = ScheduleFiles(self.root, fsync=fsync)
        self._lease_log = os.path.join(self.root, "leases.log")
        self._recovery_fd = os.open(
            os.path.join(self.root, "leases.lock"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE
        )
        self._lease_log_fd = os.open(
            self._lease_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE
        )
        self._mutex = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> FileStorageBackend:
        """``file:///abs/path`` or ``file://./relative/path``: the path is what follows ``file://``."""
        prefix = "file://"
        if url[: len(prefix)].lower() != prefix or len(url) == len(prefix):
            raise ConfigurationError(
                f"not a file storage URL: {url!r}; expected file:///absolute/path or file://./relative/path"
            )
        return cls(url[len(prefix) :])

    async def close(self) -> None:
        with self._mutex:
            if self._files.closed:
                return
            self._files.close()
            self._timers.close()
            self._schedules.close()
            os.close(self._recovery_fd)
            os.close(self._lease_log_fd)

    # -- runs -----------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        check_id(run.run_id)
        key = run.idempotency_key
        data = encode_creation(run, events)
        with self._open():
            if key is None:
                self._files.create(run, data, len(events))
            else:
                # A retried start is the common case for a used key: answer it without the key's lock.
                existing = self._run_of_key(key) or self._create_with_key(run, key, data, len(events))
                if existing is not None:
                    return existing, False
            if run.wake_at is not None:  # the start guard: due if no activation ever ran it
                self._set_timer(run.run_id, run.wake_at)
            return run, True

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        with self._open():
            return self._files.get(run_id)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        checked = check_run_changes(changes)
        with self._open(), self._files.locked(run_id) as handle:
            run, fields, retime = _changed(handle.log.record(), checked, pending=bool(handle.log.pending))
            timed = not retime or self._timer_first(run_id, run.wake_at)
            self._files.write(handle, SET + encode_changes(run, fields) + b"}\n", 1)
            handle.log.run = run
            if not timed:
                self._set_timer(run_id, run.wake_at)
            return run

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
        # Reads every run: an operator's query, not the engine's hot path.
        after = decode_cursor(cursor) if cursor else None
        with self._open():
            runs = [
                r
                for r in self._files.scan()
                if run_matches(r, status, workflow_name, created_after, created_before, after)
            ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = runs[:limit]
        more = len(runs) > limit
        return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if more and page else None)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        # No index to count from: every record is read, as list_runs reads them.
        after = check_created_after("count_runs", created_after)
        with self._open():
            runs = self._files.scan("count_runs")
        if after is not None:
            runs = [r for r in runs if r.created_at > after]
        return tally_runs(Counter(str(r.status) for r in runs).items(), Counter(r.workflow_name for r in runs).items())

    async def delete_run(self, run_id: str) -> bool:
        with self._open():
            return self._delete(run_id, None)

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        with self._open():
            return self._files.unreadable(max(limit, 0))

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        # One scan instead of the base class's repeated pages; each deletion checks the
        # record again under the run's lock, since it may have changed since the scan.
        wanted = {RunStatus(s) for s in statuses} if statuses is not None else set(TERMINAL_STATUSES)
        cutoff = utc(older_than)

        def doomed(run: WorkflowRun) -> bool:
            return run.status in wanted and run.updated_at < cutoff

        deleted = 0
        with self._open():
            self._files.remove_leftovers()
            for run in self._files.scan("prune_runs"):
                if doomed(run):
                    deleted += self._delete(run.run_id, doomed)
        return deleted

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
        expected, changes, seqs = check_append(run_id, events, lease_token, run_changes, consume, release_lease)
        with self._open(), self._files.locked(run_id) as handle:
            log = handle.log
            refusal = refused_append(
                run_id,
                exists=True,
                last_seq=log.last_seq,
                expected=expected,
                lease_token=lease_token,
                held_token=None if log.lease is None else log.lease.token,
            )
            if refusal is not None:
                raise refusal
            consumed = [n for n in seqs if n in log.pending]
            run, encoded, retime = log.record(), None, False
            if changes:
                left = len(log.pending) > len(consumed)  # messages still pending after this append
                run, fields, retime = _changed(run, changes, pending=left)
                encoded = encode_changes(run, fields)
            data, lines = encode_append(events, encoded, consumed, release_lease)
            timed = not retime or self._timer_first(run_id, run.wake_at)
            # The batch, its record change, consumption marks and lease release: one write.
            self._files.write(handle, data, lines)
            log.run, log.last_seq = run, events[-1].seq
            log.consume(consumed)
            if release_lease:
                log.lease = None
            if not timed:
                self._set_timer(run_id, run.wake_at)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        with self._open():
            try:
                handle = self._files.lock(run_id, shared=True, read=False)
            except RunNotFoundError:
                return []
            try:
                data = self._files.read_all(handle)
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)
        first = max(after_seq, 0)
        end = None if limit is None else first + max(limit, 0)
        return _events(run_id, self._files.path(run_id), data, first, end)

    # -- timers ---------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        check_id(run_id)
        with self._open(), self._timers.locked() as timers:
            key = timers.get(run_id)
        return None if key is None else Timer.model_construct(run_id=run_id, wake_at=from_us(key))

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        later = to_us(utc(now) + timedelta(seconds=redeliver_after))
        with self._open(), self._timers.locked() as timers:
            claimed = timers.claim(to_us(now), later, limit)
        return [Timer.model_construct(run_id=run_id, wake_at=from_us(key)) for key, run_id in claimed]

    # -- schedules ------------------------------------------------------------

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        with self._open():
            return self._schedules.save(schedule_id, body, due_at, version)

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        with self._open():
            return self._schedules.get(schedule_id)

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        with self._open():
            return self._schedules.listed(after, limit)

    async def delete_schedule(self, schedule_id: str) -> bool:
        with self._open():
            return self._schedules.delete(schedule_id)

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        with self._open():
            return self._schedules.due(now, limit)

    # -- inbox ----------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        text = check_message(run_id, kind, payload, idempotency_key)
        with self._open(), self._files.locked(run_id) as handle:
            log = handle.log
            if idempotency_key is not None and idempotency_key in log.keys:
                return message_id(run_id, log.keys[idempotency_key])
            run = log.record()
            if run.status.is_terminal:
                raise RunFinishedError(run_id, run.status.value)
            now = utcnow()
            message = Message(
                run_id=run_id,
                seq=log.count + 1,
                kind=kind,
                payload=json.loads(text),  # a copy: later changes by the caller do not leak in
                idempotency_key=idempotency_key,
                posted_at=now,
            )
            changed = None
            if woken_by_message(run.status, run.wake_at, now):
                run = run.model_copy(update={"wake_at": now, "updated_at": now})
                changed = encode_changes(run, {"wake_at"})
            # The timer first: a crash before the message lands only wakes the run early.
            with self._timers.locked() as timers:
                timers.lower(run_id, to_us(now))
            self._files.write(handle, encode_message(message, changed), 1)
            log.add(message)
            log.run = run
            return message.message_id

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        with self._open():
            try:
                handle = self._files.lock(run_id, shared=True, read=pending_only)
            except RunNotFoundError:
                return []
            try:
                if pending_only:
                    return list(handle.log.pending.values())
                data = self._files.read_all(handle)
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)
        log = RunLog(history=True)
        log.feed(run_id, self._files.path(run_id), data, events=False)
        return log.messages()

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        with self._open():
            try:
                handle = self._files.lock(run_id)
            except RunNotFoundError:
                return Activation("missing")
            try:
                log = handle.log
                run = log.record()
                if run.status.is_terminal:
                    self._set_timer(run_id, None)
                    return Activation("finished", run)
                clock = time.time()
                if log.lease is not None and log.lease.expires_at > clock:
                    return Activation("busy", run)
                wake = run.wake_at
                if not_due(run.status, wake, utc(now), bool(log.pending)):
                    self._set_timer(run_id, wake)  # a claim, or a crash, may have left it earlier
                    return Activation("not_due", run)
                events = _events(run_id, self._files.path(run_id), self._files.read_all(handle), 0, None)
                lease = Lease.model_construct(run_id=run_id, owner=owner, token=new_token(), expires_at=clock + ttl)
                took_over = log.lease is not None  # an expired lease nobody released: its holder died
                self._log_lease(run_id)  # logged before it exists, so recovery never misses a lease
                self._files.set_lease(handle, lease)
                return Activation("leased", run, lease, events, list(log.pending.values()), took_over)
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    # -- leases ---------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        with self._open():
            try:
                handle = self._files.lock(run_id)
            except RunNotFoundError:
                # The engine activates runs whose creation never happened (a guard timer is
                # set first) and expects a lease, then finds no run. Such a lease is kept
                # nowhere: it holds nothing, and should the run appear after all, the first
                # append made with it raises LeaseLostError.
                return Lease.model_construct(
                    run_id=run_id, owner=owner, token=new_token(), expires_at=time.time() + ttl
                )
            try:
                now = time.time()
                held = handle.log.lease
                if held is not None and held.expires_at > now:
                    return None
                lease = Lease.model_construct(run_id=run_id, owner=owner, token=new_token(), expires_at=now + ttl)
                self._log_lease(run_id)
                self._files.set_lease(handle, lease)
                return lease
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        try:
            with self._open(), self._files.locked(lease.run_id) as handle:
                held = handle.log.lease
                if held is None or held.token != lease.token:
                    return None
                renewed = held.model_copy(update={"expires_at": time.time() + ttl})
                self._files.set_lease(handle, renewed)
                return renewed
        except RunNotFoundError:
            return None

    async def release_lease(self, lease: Lease) -> None:
        try:
            with self._open(), self._files.locked(lease.run_id) as handle:
                held = handle.log.lease
                if held is not None and held.token == lease.token:
                    # Its line in leases.log stays until the next recovery drops it.
                    self._files.set_lease(handle, None)
        except RunNotFoundError:
            return

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        with self._open():
            fcntl.flock(self._recovery_fd, fcntl.LOCK_EX)  # one recoverer at a time compacts the log
            try:
                fd = os.open(self._lease_log, os.O_RDWR | O_CLOEXEC)
                try:
                    return self._recover(fd, limit)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(self._recovery_fd, fcntl.LOCK_UN)

    # -- helpers ----------------------------------------------------------------

    @contextmanager
    def _open(self) -> Iterator[None]:
        """Hold the instance's mutex; refuse a closed instance."""
        with self._mutex:
            if self._files.closed:
                raise RuntimeError(f"{self!r} is closed")
            yield

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            file_io.sync_dir(path)

    def _timer_first(self, run_id: str, wake: datetime | None) -> bool:
        """Move the timer to ``wake`` now if that makes it earlier; whether it is right now."""
        key = None if wake is None else to_us(wake)
        with self._timers.locked() as timers:
            old = timers.get(run_id)
            if key is not None and (old is None or key < old):
                timers.set(run_id, key)
                return True
            return key == old

    def _set_timer(self, run_id: str, wake: datetime | None) -> None:
        with self._timers.locked() as timers:
            timers.set(run_id, None if wake is None else to_us(wake))

    # -- idempotency keys and deletion ----------------------------------------------

    def _key_path(self, key: str) -> str:
        return f"{self._keys}/{hashlib.sha256(key.encode()).hexdigest()}"

    def _create_with_key(self, run: WorkflowRun, key: str, data: bytes, events: int) -> WorkflowRun | None:
        """Create the run under the key's lock, or return the run that already owns the key."""
        fd = self._lock_key(key)
        try:
            owner = _parse_owner(os.pread(fd, 1024, 0))
            if owner is not None:
                existing = self._files.get(owner)
                if existing is not None:
                    return existing
                # Otherwise its creator crashed before finishing, or the run was deleted.
            if os.path.lexists(self._files.path(run.run_id)):
                raise ValueError(f"run {run.run_id!r} already exists")
            self._set_key_owner(fd, run.run_id)
            try:
                self._files.create(run, data, events)
            except BaseException:
                self._set_key_owner(fd, owner)
                raise
            return None
        finally:
            os.close(fd)  # releases the key's lock

    def _run_of_key(self, key: str) -> WorkflowRun | None:
        """The run a key names, read without the key's lock: ``None`` means ask under the lock."""
        try:
            owner = _parse_owner(read_file(self._key_path(key)))
            return None if owner is None else self._files.get(owner)
        except (FileNotFoundError, CorruptedStorageError):
            # Perhaps a read torn by a concurrent writer; the locked path decides.
            return None

    def _lock_key(self, key: str) -> int:
        path = self._key_path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink > 0:
                    return fd
            except BaseException:
                os.close(fd)
                raise
            # Deleted while we waited; lock the file that now holds the key instead.
            os.close(fd)

    def _set_key_owner(self, fd: int, run_id: str | None) -> None:
        # Readers stop at the first newline, so a longer old value left behind by a
        # crash between the write and the truncate does no harm.
        data = b"" if run_id is None else run_id.encode() + b"\n"
        pwrite_all(fd, data, 0)
        os.ftruncate(fd, len(data))
        if self.fsync:
            os.fsync(fd)
            self._sync_dir(self._keys)

    def _delete(self, run_id: str, only_if: Callable[[WorkflowRun], bool] | None) -> bool:
        try:
            handle = self._files.lock(run_id, read=False)
        except RunNotFoundError:
            return False
        try:
            try:
                self._files.catch_up(run_id, handle, os.fstat(handle.fd).st_size)
                record = handle.log.run
            except CorruptedStorageError:
                record = None  # an unreadable run can still be deleted
            if only_if is not None and (record is None or not only_if(record)):
                return False
            # Its timer first: a crash before the unlink leaves a run to delete again, never a
            # timer that wakes a run that is gone. Its messages go with its file.
            self._set_timer(run_id, None)
            os.unlink(self._files.path(run_id))  # anyone waiting for its lock then finds it unlinked
            self._sync_dir(self._files.directory)
        finally:
            self._files.forget(run_id)  # closing the file releases the run's lock
        if record is not None and record.idempotency_key is not None:
            self._release_key(record.idempotency_key, run_id)
        return True

    def _release_key(self, key: str, run_id: str) -> None:
        fd = self._lock_key(key)
        try:
            if _parse_owner(os.pread(fd, 1024, 0)) == run_id:
                os.unlink(self._key_path(key))
                self._sync_dir(self._keys)
        finally:
            os.close(fd)

    # -- lease recovery ---------------------------------------------------------------------

    def _log_lease(self, run_id: str) -> None:
        """Note in leases.log that the run holds a lease (the caller holds the run lock)."""
        fcntl.flock(self._lease_log_fd, fcntl.LOCK_SH)  # appenders share; compaction excludes them
        try:
            write_all(self._lease_log_fd, run_id.encode() + b"\n")
            if self.fsync:
                file_io.fdatasync(self._lease_log_fd)
        finally:
            fcntl.flock(self._lease_log_fd, fcntl.LOCK_UN)

    def _recover(self, log_fd: int, limit: int) -> list[str]:
        """Check the runs leases.log names; recover expired leases; keep the log to held ones."""
        fcntl.flock(log_fd, fcntl.LOCK_EX)
        try:
            seen = pread_to_end(log_fd)
        finally:
            fcntl.flock(log_fd, fcntl.LOCK_UN)
        # Without the log's lock from here: acquirers append (holding a run's lock) meanwhile.
        recovered: list[str] = []
        keep: list[str] = []
        for run_id in _lease_log_ids(seen):
            outcome = "held" if len(recovered) >= limit else self._recover_lease(run_id)
            if outcome == "held":
                keep.append(run_id)
            elif outcome == "recovered":
                recovered.append(run_id)
        self._compact_lease_log(log_fd, len(seen), keep)
        return recovered

    def _recover_lease(self, run_id: str) -> Literal["gone", "held", "recovered"]:
        """Turn the run's lease into a due timer if it expired; "gone" when it has none."""
        try:
            with self._files.locked(run_id) as handle:
                lease = handle.log.lease
                if lease is None:
                    return "gone"
                if lease.expires_at > time.time():
                    return "held"
                # Timer first: a crash before the lease is cleared only repeats the recovery.
                self._set_timer(run_id, utcnow())
                self._files.set_lease(handle, None)
                return "recovered"
        except RunNotFoundError:
            return "gone"
        except CorruptedStorageError as exc:
            # Skipped, so the others are recovered. Its lease needs no removal to fence
            # its holder: every write reads the file first and refuses it. It leaves
            # leases.log; list_unreadable_runs names it until it is repaired or deleted.
            report_unreadable(run_id, "recover_expired_leases", exc)
            return "gone"

    def _compact_lease_log(self, fd: int, seen: int, keep: list[str]) -> None:
        """Rewrite leases.log as ``keep`` plus whatever was appended after the first ``seen`` bytes."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            tail = pread_to_end(fd, seen)
            data = b"".join(run_id.encode() + b"\n" for run_id in keep) + tail
            # A crash before the truncate leaves old lines after the new ones: at worst
            # runs checked twice, never a lease forgotten.
            pwrite_all(fd, data, 0)
            os.ftruncate(fd, len(data))
            if self.fsync:
                os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


# -- module helpers ------------------------------------------------------------------------


def _changed(run: WorkflowRun, changes: Mapping[str, Any], *, pending: bool) -> tuple[WorkflowRun, set[str], bool]:
    """``run`` with checked ``changes``, the fields they set, and whether the timer follows:
    a change of ``wake_at`` or ``status`` stores the wake time :func:`effective_wake` gives."""
    now = utcnow()
    values = {**changes, "updated_at": now}
    retime = "wake_at" in changes or "status" in changes
    if retime:
        status: RunStatus = values.get("status", run.status)
        values["wake_at"] = effective_wake(
            values.get("wake_at", run.wake_at), terminal=status.is_terminal, messages_pending=pending, now=now
        )
    return run.model_copy(update=values), set(values), retime


def _events(run_id: str, path: str, data: bytes, first: int, end: int | None) -> list[Event]:
    """Events ``first + 1`` … ``end`` of a whole run file."""
    bodies, numbers, _ = scan(run_id, path, split_lines(run_id, path, data, 0), 1)
    # The n-th event holds seq n, which decode_located checks for every event it returns.
    return decode_located(run_id, path, bodies[first:end], first + 1, numbers[first:end])


def _parse_owner(raw: bytes) -> str | None:
    """The run id a key file names, or ``None`` when it names none.

    Empty means a creator crashed before naming its run; a value that cannot be a run
    id names no run either. In both cases the next creator takes the key over.
    """
    owner, newline, _ = raw.partition(b"\n")
    run_id = owner.decode("utf-8", "replace")
    try:
        check_id(run_id)
    except ValueError:
        return None
    return run_id if newline else None


def _lease_log_ids(data: bytes) -> list[str]:
    """Distinct run ids in leases.log, in order. Lines that cannot be run ids are what
    a crashed compaction can leave; they name nothing, so they are dropped."""
    ids: dict[str, None] = {}
    for line in data.split(b"\n"):
        run_id = line.decode("utf-8", "replace")
        try:
            check_id(run_id)
        except ValueError:
            continue
        ids[run_id] = None
    return list(ids)
