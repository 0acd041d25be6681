"""Storage in a directory of JSON files, shared safely by processes on one machine.

Layout, under the root directory (``./.pyworkflow`` unless told otherwise)::

    runs/<run_id>.jsonl          everything about one run, append-only JSON lines; also
                                 the run's lock file. Line 1 is {"run": record}; then
                                 events ({"seq": ...}), mixed with {"set": changed
                                 record fields} and {"lease": lease or null} lines
    keys/<sha256(key)>           an idempotency key: its run's id; also the key's lock
    timers/lock                  the one lock all timer operations take
    timers/runs/<run_id>         the run's timer: its wake time (the truth)
    timers/due/<wake>.<run_id>   the index: names sort by wake time
    leases.log                   ids of runs that took a lease since the last recovery
    leases.lock                  held by whoever runs recover_expired_leases

A run's record is its first line with every later ``set`` line applied; its lease is
the last ``lease`` line. Nothing in a run file is ever rewritten, so every change to a
run, even an event batch together with its ``run_changes``, is one ``write`` of whole
lines to an ``O_APPEND`` descriptor: it lands entirely or, cut short, is truncated away.
Files only grow (a record change or lease renewal adds a short line) until delete_run
or prune_runs removes them.

Locking. Everything about a run happens under ``fcntl.flock`` on its file: exclusive to
change it, shared to read it. ``flock`` belongs to an open file, so two instances
exclude each other even inside one process (``lockf`` would not). Once locked, a caller
checks that the file still has a name, since a run can be deleted while others wait. A
key's file is locked while the key is claimed, ``timers/lock`` guards the timer files,
and ``leases.log`` is locked shared to append and exclusively to compact. Locks are
only taken in the order ``leases.lock``, key, run, then ``timers/lock`` or
``leases.log``, so they cannot deadlock. One instance serves one thread at a time (an
internal mutex), so threads may share it.

Creation. The creator makes the run file with ``O_EXCL``, locks it at once and writes
the record and first events in one ``write``. An empty run file is a creation not yet
finished (or whose creator crashed): it counts as no run, and prune_runs removes it an
hour later. Under the key's lock, an idempotency key is made to name its run just
before the run is created; a crash in between leaves a key naming a run that does not
exist, which the next creator with that key takes over: holding the same lock, nobody
else can be halfway. A lease asked for on a run that does not exist (the engine does
so when a guard timer fires for a run that was never created) is kept nowhere and
holds nothing: were the run created after all, appends made with it are refused.

Durability. With ``fsync=False`` (the default) every finished call survives the crash
of any process, but not a power loss or kernel crash: data may still be in the page
cache. With ``fsync=True`` files and directories are flushed before a call returns, at
a few milliseconds a call.

Cost. The hot path (create_run, get_run, append_events, get_events, the lease and timer
calls) never looks at other runs. Each instance keeps, for at most 128 recently used
runs, the open run file with its size and what it says (last seq, record, lease), so
most calls cost one ``flock``, one ``fstat`` and at most one ``write``: the file is read
again only when another writer has appended since, and then only what was appended.
get_events reads the run's file. create_run creates one file; timer calls create and
remove small index files; nothing else on the hot path changes a directory, which is
what is slow on most file systems. claim_due_timers lists the names in ``timers/due``
(one per pending timer, no reads) and touches only the timers it claims;
recover_expired_leases reads the runs named in ``leases.log``. list_runs and prune_runs
read every run file: they are for operators, not for the engine's hot path.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from pyworkflow.clock import utcnow
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    LeaseLostError,
    RunNotFoundError,
    SequenceConflictError,
)
from pyworkflow.events import Event
from pyworkflow.storage.base import (
    MUTABLE_RUN_FIELDS,
    TERMINAL_STATUSES,
    Lease,
    RunPage,
    RunStatus,
    StorageBackend,
    Timer,
    WorkflowRun,
    check_batch,
    check_run_changes,
    decode_cursor,
    encode_cursor,
    new_token,
    run_matches,
    utc,
)

DEFAULT_PATH = "./.pyworkflow"

_HANDLE_CACHE_SIZE = 128  # one open file per run: well under the usual limit of 1024
_LEFTOVER_AGE = 3600.0  # seconds before prune_runs removes the file of a crashed creation
_EPOCH = datetime(1, 1, 1, tzinfo=UTC)  # wake keys count from here, so they are never negative
_MICROSECOND = timedelta(microseconds=1)
_WAKE_DIGITS = 19
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

# How a run file's lines that are not events begin. Events never begin like this: an
# event has no such fields, and this module writes every line itself.
_RUN = b'{"run":'
_SET = b'{"set":'
_LEASE = b'{"lease":'
_NOT_EVENTS = (_RUN, _SET, _LEASE)
_SETTABLE = MUTABLE_RUN_FIELDS | {"updated_at"}

_events_adapter: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class _RunHandle:
    """An open run file (also the run's lock) and what it said when this instance last read it.

    ``size`` bytes, ``lines`` lines of it have been read and checked; ``run`` and
    ``lease`` are the record and lease they describe (``run`` is ``None`` until read).
    """

    __slots__ = ("fd", "size", "lines", "last_seq", "run", "lease")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.lines = 0
        self.last_seq = 0
        self.run: WorkflowRun | None = None
        self.lease: Lease | None = None

    def record(self) -> WorkflowRun:
        if self.run is None:
            raise RuntimeError("the run file has not been read yet")
        return self.run


class FileStorageBackend(StorageBackend):
    """Runs, logs, timers and leases as files under ``path``. See the module docstring."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = False) -> None:
        given = DEFAULT_PATH if path is None else os.fspath(path)
        self.url = f"file://{given}"
        # Absolute, so a later chdir does not move the store under our feet.
        self.root = os.path.abspath(given)
        self.fsync = fsync
        self._runs = os.path.join(self.root, "runs")
        self._keys = os.path.join(self.root, "keys")
        self._timer_runs = os.path.join(self.root, "timers", "runs")
        self._timer_due = os.path.join(self.root, "timers", "due")
        self._lease_log = os.path.join(self.root, "leases.log")
        for directory in (self._runs, self._keys, self._timer_runs, self._timer_due):
            os.makedirs(directory, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | _O_CLOEXEC
        self._timers_fd = os.open(os.path.join(self.root, "timers", "lock"), flags, 0o644)
        self._recovery_fd = os.open(os.path.join(self.root, "leases.lock"), flags, 0o644)
        self._lease_log_fd = os.open(self._lease_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o644)
        self._handles: OrderedDict[str, _RunHandle] = OrderedDict()
        self._mutex = threading.Lock()
        self._closed = False

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
            if self._closed:
                return
            self._closed = True
            while self._handles:
                os.close(self._handles.popitem()[1].fd)
            for fd in (self._timers_fd, self._recovery_fd, self._lease_log_fd):
                os.close(fd)

    # -- runs -----------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        _check_id(run.run_id)
        key = run.idempotency_key
        data = _RUN + _dump(run) + b"}\n" + _encode_events(events)
        with self._mutex:
            self._check_open()
            if key is None:
                self._create(run, data, len(events))
                return run, True
            # A retried start is the common case for a used key: answer it without the key's lock.
            existing = self._run_of_key(key) or self._create_with_key(run, key, data, len(events))
            return (existing, False) if existing is not None else (run, True)

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        with self._mutex:
            return self._get_run(run_id)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        check_run_changes(changes)
        with self._mutex:
            handle = self._lock_run(run_id)
            try:
                run = _changed(handle.record(), changes)
                self._write(handle, _set_line(run, changes), 1)
                handle.run = run
                return run
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

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
        with self._mutex:
            runs = [
                r
                for r in self._scan_runs()
                if run_matches(r, status, workflow_name, created_after, created_before, after)
            ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        page = runs[:limit]
        more = len(runs) > limit
        return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if more and page else None)

    async def delete_run(self, run_id: str) -> bool:
        with self._mutex:
            return self._delete(run_id, None)

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        # One scan instead of the base class's repeated pages; each deletion checks the
        # record again under the run's lock, since it may have changed since the scan.
        wanted = {RunStatus(s) for s in statuses} if statuses is not None else set(TERMINAL_STATUSES)
        cutoff = utc(older_than)

        def doomed(run: WorkflowRun) -> bool:
            return run.status in wanted and run.updated_at < cutoff

        deleted = 0
        with self._mutex:
            self._remove_leftovers()
            for run in self._scan_runs():
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
    ) -> None:
        expected = check_batch(run_id, events)
        if run_changes:
            check_run_changes(run_changes)
        data = _encode_events(events)
        with self._mutex:
            handle = self._lock_run(run_id)
            try:
                if handle.last_seq != expected:
                    raise SequenceConflictError(run_id, expected, handle.last_seq)
                if lease_token is not None and (handle.lease is None or handle.lease.token != lease_token):
                    raise LeaseLostError(run_id)
                if not run_changes:
                    self._write(handle, data, len(events))
                    handle.last_seq = events[-1].seq
                    return
                # The batch and its record change in one write: both land or neither.
                run = _changed(handle.record(), run_changes)
                self._write(handle, data + _set_line(run, run_changes), len(events) + 1)
                handle.last_seq, handle.run = events[-1].seq, run
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        with self._mutex:
            try:
                handle = self._lock_run(run_id, shared=True, read=False)
            except RunNotFoundError:
                return []
            try:
                data = _pread_all(handle.fd, os.fstat(handle.fd).st_size, 0)
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)
        path = self._run_path(run_id)
        lines = _split_lines(run_id, path, data, 0)
        numbers = [n for n, line in enumerate(lines, 1) if not line.startswith(_NOT_EVENTS)]
        first = max(after_seq, 0)
        end = None if limit is None else first + max(limit, 0)
        # The n-th event holds seq n, which _decode_events checks for every event it returns.
        wanted = numbers[first:end]
        return _decode_events(run_id, path, [lines[n - 1] for n in wanted], first + 1, wanted)

    # -- timers ---------------------------------------------------------------

    async def schedule_timer(self, run_id: str, wake_at: datetime) -> None:
        _check_id(run_id)
        with self._mutex:
            self._lock_timers()
            try:
                self._set_timer(run_id, _wake_key(wake_at))
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)

    async def cancel_timer(self, run_id: str) -> None:
        _check_id(run_id)
        # No timer now means the cancel is done: it takes effect before any later schedule.
        if not os.path.exists(self._timer_path(run_id)):
            return
        with self._mutex:
            self._lock_timers()
            try:
                self._drop_timer(run_id)
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)

    async def get_timer(self, run_id: str) -> Timer | None:
        _check_id(run_id)
        with self._mutex:
            self._lock_timers()
            try:
                key = self._read_timer(run_id)
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)
        return None if key is None else Timer.model_construct(run_id=run_id, wake_at=_wake_time(key))

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        now_key = _wake_key(now)
        later_key = _wake_key(utc(now) + timedelta(seconds=redeliver_after))
        claimed: list[Timer] = []
        with self._mutex:
            self._lock_timers()
            try:
                for key, run_id in self._due_entries(now_key):
                    if len(claimed) >= limit:
                        break
                    if self._read_timer(run_id) != key:
                        # Left by a crash between adding a timer's entry and removing the old one.
                        _unlink_quiet(self._due_path(key, run_id))
                        continue
                    self._set_timer(run_id, later_key)
                    claimed.append(Timer.model_construct(run_id=run_id, wake_at=_wake_time(key)))
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)
        return claimed

    # -- leases ---------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        with self._mutex:
            try:
                handle = self._lock_run(run_id)
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
                if handle.lease is not None and handle.lease.expires_at > now:
                    return None
                lease = Lease.model_construct(run_id=run_id, owner=owner, token=new_token(), expires_at=now + ttl)
                # Logged before it exists, so recovery never misses a lease.
                self._log_lease(run_id)
                self._set_lease(handle, lease)
                return lease
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        with self._mutex:
            try:
                handle = self._lock_run(lease.run_id)
            except RunNotFoundError:
                return None
            try:
                held = handle.lease
                if held is None or held.token != lease.token:
                    return None
                renewed = held.model_copy(update={"expires_at": time.time() + ttl})
                self._set_lease(handle, renewed)
                return renewed
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    async def release_lease(self, lease: Lease) -> None:
        with self._mutex:
            try:
                handle = self._lock_run(lease.run_id)
            except RunNotFoundError:
                return
            try:
                if handle.lease is not None and handle.lease.token == lease.token:
                    # Its line in leases.log stays until the next recovery drops it.
                    self._set_lease(handle, None)
            finally:
                fcntl.flock(handle.fd, fcntl.LOCK_UN)

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        with self._mutex:
            self._check_open()
            fcntl.flock(self._recovery_fd, fcntl.LOCK_EX)  # one recoverer at a time compacts the log
            try:
                fd = os.open(self._lease_log, os.O_RDWR | _O_CLOEXEC)
                try:
                    return self._recover(fd, limit)
                finally:
                    os.close(fd)
            finally:
                fcntl.flock(self._recovery_fd, fcntl.LOCK_UN)

    # -- paths ----------------------------------------------------------------

    def _run_path(self, run_id: str) -> str:
        return f"{self._runs}/{run_id}.jsonl"

    def _timer_path(self, run_id: str) -> str:
        return f"{self._timer_runs}/{run_id}"

    def _due_path(self, key: int, run_id: str) -> str:
        return f"{self._timer_due}/{key:0{_WAKE_DIGITS}d}.{run_id}"

    def _key_path(self, key: str) -> str:
        return f"{self._keys}/{hashlib.sha256(key.encode()).hexdigest()}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    def _sync_dir(self, path: str) -> None:
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- run files --------------------------------------------------------------

    def _remember(self, run_id: str, handle: _RunHandle) -> None:
        old = self._handles.pop(run_id, None)
        if old is not None:
            os.close(old.fd)
        self._handles[run_id] = handle
        if len(self._handles) > _HANDLE_CACHE_SIZE:
            os.close(self._handles.popitem(last=False)[1].fd)

    def _forget(self, run_id: str) -> None:
        handle = self._handles.pop(run_id, None)
        if handle is not None:
            os.close(handle.fd)  # also drops any lock held through it

    def _lock_run(self, run_id: str, *, shared: bool = False, read: bool = True) -> _RunHandle:
        """Lock the run's file, and unless ``read=False`` bring the handle up to date.

        The caller unlocks. Raises RunNotFoundError, and CorruptedStorageError for a file
        that cannot be read back.
        """
        self._check_open()
        _check_id(run_id)
        path = self._run_path(run_id)
        while True:
            handle = self._handles.get(run_id)
            if handle is None:
                try:
                    handle = _RunHandle(os.open(path, os.O_RDWR | os.O_APPEND | _O_CLOEXEC))
                except FileNotFoundError:
                    raise RunNotFoundError(run_id) from None
                self._remember(run_id, handle)
            else:
                self._handles.move_to_end(run_id)
            fcntl.flock(handle.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            st = os.fstat(handle.fd)
            if st.st_nlink == 0:
                # Deleted while we had it open (perhaps created again since): start over.
                self._forget(run_id)
                continue
            if st.st_size == 0:
                # Being created (or its creator crashed): no run yet.
                self._forget(run_id)
                raise RunNotFoundError(run_id)
            if read and st.st_size != handle.size:
                try:
                    self._catch_up(run_id, handle, st.st_size)
                except BaseException:
                    fcntl.flock(handle.fd, fcntl.LOCK_UN)
                    raise
            return handle

    def _catch_up(self, run_id: str, handle: _RunHandle, size: int) -> None:
        """Read and check what was appended since this instance last looked."""
        path = self._run_path(run_id)
        if size < handle.size:
            why = f"the file shrank from {handle.size} to {size} bytes; it is append-only"
            raise _corrupt(run_id, path, handle.lines, why)
        lines = _split_lines(run_id, path, _pread_all(handle.fd, size - handle.size, handle.size), handle.lines)
        run, lease = handle.run, handle.lease
        events: list[bytes] = []
        numbers: list[int] = []
        for number, line in enumerate(lines, handle.lines + 1):
            if line.startswith(_RUN) and run is None:
                run = _parse_run(run_id, path, number, line)
            elif run is None:
                raise _corrupt(run_id, path, number, "the file must begin with the run record")
            elif line.startswith(_SET):
                run = _apply_set(run_id, path, number, run, line)
            elif line.startswith(_LEASE):
                lease = _parse_lease(run_id, path, number, line)
            elif line.startswith(_RUN):
                raise _corrupt(run_id, path, number, "a second run record")
            else:
                events.append(line)
                numbers.append(number)
        _decode_events(run_id, path, events, handle.last_seq + 1, numbers)
        # Only now, all of it checked, does the handle move on.
        handle.size, handle.lines, handle.last_seq = size, handle.lines + len(lines), handle.last_seq + len(events)
        handle.run, handle.lease = run, lease

    def _write(self, handle: _RunHandle, data: bytes, lines: int) -> None:
        """Append whole lines in one write; undone if it does not land whole. Needs the exclusive lock."""
        try:
            written = os.write(handle.fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write to a run file ({written} of {len(data)} bytes)")
            if self.fsync:
                _fdatasync(handle.fd)
        except BaseException:
            # Should the truncate fail too, the next reader reports a truncated line.
            os.ftruncate(handle.fd, handle.size)
            raise
        handle.size += written
        handle.lines += lines

    def _set_lease(self, handle: _RunHandle, lease: Lease | None) -> None:
        self._write(handle, _LEASE + (b"null" if lease is None else _dump(lease)) + b"}\n", 1)
        handle.lease = lease

    def _get_run(self, run_id: str) -> WorkflowRun | None:
        try:
            handle = self._lock_run(run_id, shared=True)
        except RunNotFoundError:
            return None
        fcntl.flock(handle.fd, fcntl.LOCK_UN)
        return handle.record()

    # -- creating and deleting runs ---------------------------------------------

    def _create(self, run: WorkflowRun, data: bytes, events: int) -> None:
        """Create the run's file, locked before anyone can see what is in it."""
        path = self._run_path(run.run_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | _O_CLOEXEC, 0o644)
        except FileExistsError:
            raise ValueError(f"run {run.run_id!r} already exists") from None
        handle = _RunHandle(fd)
        try:
            # Whoever locks it before us finds it empty: to them the run does not exist yet.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._write(handle, data, 1 + events)
            self._sync_dir(self._runs)
        except BaseException:
            os.close(fd)
            _unlink_quiet(path)
            raise
        handle.last_seq, handle.run = events, run
        self._remember(run.run_id, handle)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _create_with_key(self, run: WorkflowRun, key: str, data: bytes, events: int) -> WorkflowRun | None:
        """Create the run under the key's lock, or return the run that already owns the key."""
        fd = self._lock_key(key)
        try:
            owner = _key_owner(fd)
            if owner is not None:
                existing = self._get_run(owner)
                if existing is not None:
                    return existing
                # Otherwise its creator crashed before finishing, or the run was deleted.
            if os.path.lexists(self._run_path(run.run_id)):
                raise ValueError(f"run {run.run_id!r} already exists")
            self._set_key_owner(fd, run.run_id)
            try:
                self._create(run, data, events)
            except BaseException:
                self._set_key_owner(fd, owner)
                raise
            return None
        finally:
            os.close(fd)  # releases the key's lock

    def _run_of_key(self, key: str) -> WorkflowRun | None:
        """The run a key names, read without the key's lock: ``None`` means ask under the lock."""
        try:
            owner = _parse_owner(_read_file(self._key_path(key)))
            return None if owner is None else self._get_run(owner)
        except (FileNotFoundError, CorruptedStorageError):
            # Perhaps a read torn by a concurrent writer; the locked path decides.
            return None

    def _lock_key(self, key: str) -> int:
        path = self._key_path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
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
        _pwrite_all(fd, data, 0)
        os.ftruncate(fd, len(data))
        if self.fsync:
            os.fsync(fd)
            self._sync_dir(self._keys)

    def _delete(self, run_id: str, only_if: Callable[[WorkflowRun], bool] | None) -> bool:
        try:
            handle = self._lock_run(run_id, read=False)
        except RunNotFoundError:
            return False
        try:
            try:
                self._catch_up(run_id, handle, os.fstat(handle.fd).st_size)
                record = handle.run
            except CorruptedStorageError:
                record = None  # an unreadable run can still be deleted
            if only_if is not None and (record is None or not only_if(record)):
                fcntl.flock(handle.fd, fcntl.LOCK_UN)
                return False
            # Its timer first: a crash before the unlink leaves a run to delete again, never a
            # timer that wakes a run that is gone.
            self._lock_timers()
            try:
                self._drop_timer(run_id)
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)
            os.unlink(self._run_path(run_id))  # anyone waiting for its lock then finds it unlinked
            self._sync_dir(self._runs)
        except BaseException:
            self._forget(run_id)
            raise
        self._forget(run_id)  # closing the file releases the run's lock
        if record is not None and record.idempotency_key is not None:
            self._release_key(record.idempotency_key, run_id)
        return True

    def _release_key(self, key: str, run_id: str) -> None:
        fd = self._lock_key(key)
        try:
            if _key_owner(fd) == run_id:
                os.unlink(self._key_path(key))
                self._sync_dir(self._keys)
        finally:
            os.close(fd)

    def _scan_runs(self) -> list[WorkflowRun]:
        runs: list[WorkflowRun] = []
        for name in os.listdir(self._runs):
            if name.endswith(".jsonl") and not name.startswith("."):
                run = self._peek_run(name[: -len(".jsonl")])
                if run is not None:  # else deleted, or not yet created, while we looked
                    runs.append(run)
        return runs

    def _peek_run(self, run_id: str) -> WorkflowRun | None:
        """The record alone, without caching the file: a scan would flush the cache."""
        path = self._run_path(run_id)
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0 or st.st_size == 0:
                return None
            lines = _split_lines(run_id, path, _pread_all(fd, st.st_size, 0), 0)
        finally:
            os.close(fd)
        if not lines[0].startswith(_RUN):
            raise _corrupt(run_id, path, 1, "the file must begin with the run record")
        run = _parse_run(run_id, path, 1, lines[0])
        for number, line in enumerate(lines[1:], 2):
            if line.startswith(_SET):
                run = _apply_set(run_id, path, number, run, line)
        return run

    def _remove_leftovers(self) -> None:
        """Remove the files of creations that never finished; young ones may be in progress."""
        cutoff = time.time() - _LEFTOVER_AGE
        with os.scandir(self._runs) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if st.st_size == 0 and st.st_mtime < cutoff:
                    _unlink_quiet(entry.path)

    # -- timers (callers hold the timers lock) ------------------------------------------

    def _lock_timers(self) -> None:
        self._check_open()
        fcntl.flock(self._timers_fd, fcntl.LOCK_EX)

    def _read_timer(self, run_id: str) -> int | None:
        path = self._timer_path(run_id)
        try:
            raw = _read_file(path)
        except FileNotFoundError:
            return None
        try:
            return int(raw)
        except ValueError:
            raise _corrupt(run_id, path, 1, f"not a timer: {raw[:60]!r}") from None

    def _set_timer(self, run_id: str, key: int) -> None:
        # New index entry, then the truth, then the old entry: a crash in between leaves
        # an extra entry (skipped and removed by claims), never a lost timer.
        old = self._read_timer(run_id)
        if old != key:
            os.close(os.open(self._due_path(key, run_id), os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o644))
        # Always the same length, so one write replaces the old value whole.
        fd = os.open(self._timer_path(run_id), os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, b"%0*d\n" % (_WAKE_DIGITS, key), 0)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if old is not None and old != key:
            _unlink_quiet(self._due_path(old, run_id))
        self._sync_dir(self._timer_due)
        self._sync_dir(self._timer_runs)

    def _drop_timer(self, run_id: str) -> None:
        old = self._read_timer(run_id)
        if old is None:
            return
        os.unlink(self._timer_path(run_id))
        _unlink_quiet(self._due_path(old, run_id))
        self._sync_dir(self._timer_runs)

    def _due_entries(self, now_key: int) -> list[tuple[int, str]]:
        """Index entries due at ``now_key``, earliest first."""
        due: list[tuple[int, str]] = []
        for name in os.listdir(self._timer_due):
            stamp, dot, run_id = name.partition(".")
            if not (dot and run_id and stamp.isdigit()):
                path = os.path.join(self._timer_due, name)
                raise _corrupt(run_id or name, path, 0, "not a timer index entry (<wake>.<run id>)")
            key = int(stamp)
            if key <= now_key:
                due.append((key, run_id))
        due.sort()
        return due

    # -- lease recovery ---------------------------------------------------------------------

    def _log_lease(self, run_id: str) -> None:
        """Note in leases.log that the run holds a lease (the caller holds the run lock)."""
        fcntl.flock(self._lease_log_fd, fcntl.LOCK_SH)  # appenders share; compaction excludes them
        try:
            _write_all(self._lease_log_fd, run_id.encode() + b"\n")
            if self.fsync:
                _fdatasync(self._lease_log_fd)
        finally:
            fcntl.flock(self._lease_log_fd, fcntl.LOCK_UN)

    def _recover(self, log_fd: int, limit: int) -> list[str]:
        """Check the runs leases.log names; recover expired leases; keep the log to held ones."""
        fcntl.flock(log_fd, fcntl.LOCK_EX)
        try:
            seen = _pread_to_end(log_fd)
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
            handle = self._lock_run(run_id)
        except RunNotFoundError:
            return "gone"
        try:
            if handle.lease is None:
                return "gone"
            if handle.lease.expires_at > time.time():
                return "held"
            # Timer first: a crash before the lease is cleared only repeats the recovery.
            self._lock_timers()
            try:
                self._set_timer(run_id, _wake_key(utcnow()))
            finally:
                fcntl.flock(self._timers_fd, fcntl.LOCK_UN)
            self._set_lease(handle, None)
            return "recovered"
        finally:
            fcntl.flock(handle.fd, fcntl.LOCK_UN)

    def _compact_lease_log(self, fd: int, seen: int, keep: list[str]) -> None:
        """Rewrite leases.log as ``keep`` plus whatever was appended after the first ``seen`` bytes."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            tail = _pread_to_end(fd, seen)
            data = b"".join(run_id.encode() + b"\n" for run_id in keep) + tail
            # A crash before the truncate leaves old lines after the new ones: at worst
            # runs checked twice, never a lease forgotten.
            _pwrite_all(fd, data, 0)
            os.ftruncate(fd, len(data))
            if self.fsync:
                os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


# -- module helpers ------------------------------------------------------------------------


def _check_id(run_id: str) -> None:
    # Run ids become file names: keep them inside their directory.
    if not run_id or run_id[0] == "." or "/" in run_id or "\0" in run_id or len(run_id) > 200:
        raise ValueError(f"run id {run_id!r} cannot name a file: it needs 1-200 characters, no leading '.' and no '/'")


def _corrupt(run_id: str, path: str, line: int, why: str) -> CorruptedStorageError:
    where = f"{path}, line {line}" if line > 0 else path
    return CorruptedStorageError(
        f"run {run_id!r}: {where}: {why}; nothing was changed (restore the file or delete the run)",
        run_id=run_id,
        path=path,
        line=line,
    )


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _dump(model: WorkflowRun | Lease) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def _changed(run: WorkflowRun, changes: Mapping[str, Any]) -> WorkflowRun:
    if "status" in changes:
        changes = {**changes, "status": RunStatus(changes["status"])}
    return run.model_copy(update={**changes, "updated_at": utcnow()})


def _set_line(run: WorkflowRun, changes: Mapping[str, Any]) -> bytes:
    """The line that records ``changes`` (and the new ``updated_at``) of ``run``."""
    fields = {*changes, "updated_at"}
    return _SET + run.__pydantic_serializer__.to_json(run, include=fields) + b"}\n"


def _inner(run_id: str, path: str, number: int, line: bytes, prefix: bytes) -> bytes:
    """The value in a ``{"<name>": value}`` line."""
    if not line.endswith(b"}"):
        raise _corrupt(run_id, path, number, "not a JSON object")
    return line[len(prefix) : -1]


def _parse_run(run_id: str, path: str, number: int, line: bytes) -> WorkflowRun:
    try:
        run = WorkflowRun.model_validate_json(_inner(run_id, path, number, line, _RUN))
    except ValidationError as exc:
        raise _corrupt(run_id, path, number, f"unreadable run record ({_first_error(exc)})") from None
    if run.run_id != run_id:
        raise _corrupt(run_id, path, number, f"the record belongs to run {run.run_id!r}")
    return run


def _apply_set(run_id: str, path: str, number: int, run: WorkflowRun, line: bytes) -> WorkflowRun:
    try:
        changes = json.loads(_inner(run_id, path, number, line, _SET))
        if not isinstance(changes, dict) or not set(changes) <= _SETTABLE:
            raise ValueError(f"only {sorted(_SETTABLE)} may be set")
        return WorkflowRun.model_validate({**run.__dict__, **changes})
    except ValidationError as exc:
        raise _corrupt(run_id, path, number, f"unreadable record change ({_first_error(exc)})") from None
    except ValueError as exc:
        raise _corrupt(run_id, path, number, f"unreadable record change ({exc})") from None


def _parse_lease(run_id: str, path: str, number: int, line: bytes) -> Lease | None:
    value = _inner(run_id, path, number, line, _LEASE)
    if value == b"null":
        return None
    try:
        lease = Lease.model_validate_json(value)
    except ValidationError as exc:
        raise _corrupt(run_id, path, number, f"unreadable lease ({_first_error(exc)})") from None
    if lease.run_id != run_id:
        raise _corrupt(run_id, path, number, f"the lease belongs to run {lease.run_id!r}")
    return lease


def _encode_events(events: Sequence[Event]) -> bytes:
    return b"".join([event.__pydantic_serializer__.to_json(event) + b"\n" for event in events])


def _split_lines(run_id: str, path: str, data: bytes, lines_before: int) -> list[bytes]:
    """The complete lines of ``data``; a last line without its newline is corruption."""
    lines = data.split(b"\n")
    if lines[-1]:
        line = lines_before + len(lines)
        raise _corrupt(run_id, path, line, "the last line is truncated (no trailing newline): a write did not finish")
    del lines[-1]
    return lines


def _decode_events(run_id: str, path: str, lines: list[bytes], first_seq: int, numbers: list[int]) -> list[Event]:
    """Parse event lines that must hold seqs ``first_seq``, ``first_seq + 1``, …

    ``numbers`` are the lines' numbers in the file, for the error messages.
    """
    try:
        events = _events_adapter.validate_json(b"[" + b",".join(lines) + b"]")
    except ValidationError:
        events = None
    if events is None or len(events) != len(lines):
        # Slow path, only to say which line is bad.
        events = []
        for number, line in zip(numbers, lines, strict=True):
            try:
                events.append(Event.model_validate_json(line))
            except ValidationError as exc:
                raise _corrupt(run_id, path, number, f"not a valid event ({_first_error(exc)})") from None
    for offset, (number, event) in enumerate(zip(numbers, events, strict=True)):
        if event.seq != first_seq + offset:
            why = f"holds seq {event.seq} where seq {first_seq + offset} belongs (gap or duplicate)"
            raise _corrupt(run_id, path, number, why)
    return events


def _wake_key(when: datetime) -> int:
    """Microseconds since year 1: exact, never negative, and sorts like the time."""
    return (utc(when) - _EPOCH) // _MICROSECOND


def _wake_time(key: int) -> datetime:
    return _EPOCH + timedelta(microseconds=key)


def _key_owner(fd: int) -> str | None:
    return _parse_owner(os.pread(fd, 1024, 0))


def _parse_owner(raw: bytes) -> str | None:
    """The run id a key file names, or ``None`` when it names none.

    Empty means a creator crashed before naming its run; a value that cannot be a run
    id names no run either. In both cases the next creator takes the key over.
    """
    owner, newline, _ = raw.partition(b"\n")
    run_id = owner.decode("utf-8", "replace")
    try:
        _check_id(run_id)
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
            _check_id(run_id)
        except ValueError:
            continue
        ids[run_id] = None
    return list(ids)


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        return _pread_to_end(fd)
    finally:
        os.close(fd)


def _pread_to_end(fd: int, offset: int = 0) -> bytes:
    chunk = os.pread(fd, 1 << 16, offset)
    if len(chunk) < 1 << 16:
        return chunk  # short read of a regular file: the end (one call for small files)
    chunks = [chunk]
    while chunk:
        offset += len(chunk)
        chunk = os.pread(fd, 1 << 16, offset)
        chunks.append(chunk)
    return b"".join(chunks)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
