"""The run files of the file backend (``runs/<run_id>.jsonl``): opening, locking,
reading and appending them, and each instance's cache of open ones.

Everything about a run happens under ``fcntl.flock`` on its file: exclusive to change
it, shared to read it. ``flock`` belongs to an open file, so two instances exclude each
other even inside one process (``lockf`` would not). Once locked, a caller checks that
the file still has a name, since a run can be deleted while others wait.

Each instance keeps, for at most 128 recently used runs, the open file and what it says
(a :class:`~pyworkflow.storage.file_log.RunLog`), so most calls cost one ``flock``, one
``fstat`` and at most one ``write``: a file is read again only when another writer has
appended since, and then only what was appended.

An empty run file is a creation not yet finished (or whose creator crashed): it counts
as no run, and :meth:`RunFiles.remove_leftovers` removes it an hour later.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from pyworkflow.errors import CorruptedStorageError, RunNotFoundError
from pyworkflow.storage import file_io
from pyworkflow.storage.base import Lease, WorkflowRun, report_unreadable
from pyworkflow.storage.file_io import O_CLOEXEC, pread_all, unlink_quiet
from pyworkflow.storage.file_log import RunLog, bad, encode_lease

_HANDLE_CACHE_SIZE = 128  # one open file per run: well under the usual limit of 1024
_LEFTOVER_AGE = 3600.0  # seconds before remove_leftovers removes the file of a crashed creation


def check_id(run_id: str) -> None:
    # Run ids become file names: keep them inside their directory.
    if not run_id or run_id[0] == "." or "/" in run_id or "\0" in run_id or len(run_id) > 200:
        raise ValueError(f"run id {run_id!r} cannot name a file: it needs 1-200 characters, no leading '.' and no '/'")


class RunHandle:
    """An open run file (also the run's lock) and what it said when this instance last read it."""

    __slots__ = ("fd", "log")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.log = RunLog()


class RunFiles:
    """The run files under ``directory``, for one instance (one thread at a time)."""

    def __init__(self, directory: str, *, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync
        # the store's root too (its parent): created first, private, before anything in it
        file_io.make_private_dirs(directory)
        self._handles: OrderedDict[str, RunHandle] = OrderedDict()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        while self._handles:
            os.close(self._handles.popitem()[1].fd)

    def path(self, run_id: str) -> str:
        return f"{self.directory}/{run_id}.jsonl"

    @contextmanager
    def locked(self, run_id: str, *, shared: bool = False) -> Iterator[RunHandle]:
        """The run's handle, locked and up to date. Raises RunNotFoundError, and
        CorruptedStorageError for a file that cannot be read back."""
        handle = self.lock(run_id, shared=shared)
        try:
            yield handle
        finally:
            fcntl.flock(handle.fd, fcntl.LOCK_UN)

    def lock(self, run_id: str, *, shared: bool = False, read: bool = True) -> RunHandle:
        """Lock the run's file, and unless ``read=False`` bring the handle up to date.
        The caller unlocks."""
        check_id(run_id)
        path = self.path(run_id)
        while True:
            handle = self._handles.get(run_id)
            if handle is None:
                try:
                    handle = RunHandle(os.open(path, os.O_RDWR | os.O_APPEND | O_CLOEXEC))
                except FileNotFoundError:
                    raise RunNotFoundError(run_id) from None
                self._remember(run_id, handle)
            else:
                self._handles.move_to_end(run_id)
            fcntl.flock(handle.fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            st = os.fstat(handle.fd)
            if st.st_nlink == 0:
                # Deleted while we had it open (perhaps created again since): start over.
                self.forget(run_id)
                continue
            if st.st_size == 0:
                # Being created (or its creator crashed): no run yet.
                self.forget(run_id)
                raise RunNotFoundError(run_id)
            if read and st.st_size != handle.log.size:
                try:
                    self.catch_up(run_id, handle, st.st_size)
                except BaseException:
                    self.forget(run_id)  # half read: the next call reads the file afresh
                    raise
            return handle

    def catch_up(self, run_id: str, handle: RunHandle, size: int) -> None:
        """Read and check what was appended since this instance last looked."""
        log = handle.log
        if size < log.size:
            why = f"the file shrank from {log.size} to {size} bytes; it is append-only"
            raise bad(run_id, self.path(run_id), log.lines, why)
        log.feed(run_id, self.path(run_id), pread_all(handle.fd, size - log.size, log.size))

    def read_all(self, handle: RunHandle) -> bytes:
        """The whole file (the caller holds its lock)."""
        return pread_all(handle.fd, os.fstat(handle.fd).st_size, 0)

    def write(self, handle: RunHandle, data: bytes, lines: int) -> None:
        """Append whole lines in one write; undone if it does not land whole. Needs the exclusive lock."""
        log = handle.log
        try:
            written = os.write(handle.fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write to a run file ({written} of {len(data)} bytes)")
            if self.fsync:
                file_io.fdatasync(handle.fd)
        except BaseException:
            # Should the truncate fail too, the next reader reports a truncated line.
            os.ftruncate(handle.fd, log.size)
            raise
        log.size += written
        log.lines += lines

    def set_lease(self, handle: RunHandle, lease: Lease | None) -> None:
        self.write(handle, encode_lease(lease), 1)
        handle.log.lease = lease

    def get(self, run_id: str) -> WorkflowRun | None:
        try:
            with self.locked(run_id, shared=True) as handle:
                return handle.log.record()
        except RunNotFoundError:
            return None

    def create(self, run: WorkflowRun, data: bytes, events: int) -> None:
        """Create the run's file, locked before anyone can see what is in it."""
        path = self.path(run.run_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_CLOEXEC, file_io.PRIVATE_FILE_MODE)
        except FileExistsError:
            raise ValueError(f"run {run.run_id!r} already exists") from None
        handle = RunHandle(fd)
        try:
            # Whoever locks it before us finds it empty: to them the run does not exist yet.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.write(handle, data, 1 + events)
            if self.fsync:
                file_io.sync_dir(self.directory)
        except BaseException:
            os.close(fd)
            unlink_quiet(path)
            raise
        handle.log.last_seq, handle.log.run = events, run
        self._remember(run.run_id, handle)
        fcntl.flock(fd, fcntl.LOCK_UN)

    def forget(self, run_id: str) -> None:
        handle = self._handles.pop(run_id, None)
        if handle is not None:
            os.close(handle.fd)  # also drops any lock held through it

    def _remember(self, run_id: str, handle: RunHandle) -> None:
        self.forget(run_id)
        self._handles[run_id] = handle
        if len(self._handles) > _HANDLE_CACHE_SIZE:
            os.close(self._handles.popitem(last=False)[1].fd)

    # -- every run: for operators, not the engine's hot path -------------------------------

    def scan(self, operation: str = "list_runs") -> list[WorkflowRun]:
        """Every readable run; one that cannot be read back is reported and skipped."""
        runs: list[WorkflowRun] = []
        for run_id in self._ids():
            try:
                run = self._peek(run_id)
            except CorruptedStorageError as exc:
                report_unreadable(run_id, operation, exc)
                continue
            if run is not None:  # else deleted, or not yet created, while we looked
                runs.append(run)
        return runs

    def unreadable(self, limit: int) -> list[str]:
        """Ids of up to ``limit`` runs whose record cannot be read back, in id order."""
        found: list[str] = []
        for run_id in sorted(self._ids()):
            if len(found) >= limit:
                break
            try:
                self._peek(run_id)
            except CorruptedStorageError:
                found.append(run_id)
        return found

    def _ids(self) -> list[str]:
        return [
            name[: -len(".jsonl")]
            for name in os.listdir(self.directory)
            if name.endswith(".jsonl") and not name.startswith(".")
        ]

    def _peek(self, run_id: str) -> WorkflowRun | None:
        """The record alone, without caching the file: a scan would flush the cache."""
        path = self.path(run_id)
        try:
            fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            st = os.fstat(fd)
            if st.st_nlink == 0 or st.st_size == 0:
                return None
            data = pread_all(fd, st.st_size, 0)
        finally:
            os.close(fd)
        log = RunLog()
        log.feed(run_id, path, data, events=False)
        return log.run

    def remove_leftovers(self) -> None:
        """Remove the files of creations that never finished; young ones may be in progress."""
        cutoff = time.time() - _LEFTOVER_AGE
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if st.st_size == 0 and st.st_mtime < cutoff:
                    unlink_quiet(entry.path)
