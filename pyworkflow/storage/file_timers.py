"""The timer index of the file backend.

Layout, under ``<root>/timers``::

    lock                        the one lock every timer operation takes (``flock``)
    wake/<run_id>               the run's timer: its wake time (the truth)
    index/<bucket>/<us>.<run>   the index: one empty file per timer, in the bucket of
                                its wake time (``us >> 32``: about 72 minutes each)

Times are microseconds since the epoch (:func:`~pyworkflow.storage.base.to_us`). A
timer is changed in the order new index entry, truth, old entry, so a crash in between
leaves an extra entry (skipped and removed by claims), never a lost timer.

claim reads only what is due: the bucket names (one per 72 minutes that holds a timer,
not one per timer), then the entries of the buckets that are due, earliest first. Empty
buckets are removed by the claims that pass them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyworkflow.errors import CorruptedStorageError
from pyworkflow.storage.base import corrupted
from pyworkflow.storage.file_io import (
    O_CLOEXEC,
    PRIVATE_FILE_MODE,
    make_private_dirs,
    pwrite_all,
    read_file,
    sync_dir,
    unlink_quiet,
)

_BUCKET_BITS = 32
_WIDTH = 20  # digits and sign of any wake time: one write replaces the old value whole


class TimerIndex:
    """Timers of the runs in one store. Callers hold :meth:`locked` around every call."""

    def __init__(self, root: str, *, fsync: bool) -> None:
        base = os.path.join(root, "timers")
        self._wake = os.path.join(base, "wake")
        self._index = os.path.join(base, "index")
        make_private_dirs(self._wake)
        make_private_dirs(self._index)
        self._fd = os.open(os.path.join(base, "lock"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE)
        self.fsync = fsync

    def close(self) -> None:
        os.close(self._fd)

    @contextmanager
    def locked(self) -> Iterator[TimerIndex]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield self
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def entry(self, key: int, run_id: str) -> str:
        """The index entry of a timer at ``key`` microseconds."""
        return f"{self._index}/{key >> _BUCKET_BITS}/{key}.{run_id}"

    def get(self, run_id: str) -> int | None:
        path = f"{self._wake}/{run_id}"
        try:
            raw = read_file(path)
        except FileNotFoundError:
            return None
        try:
            return int(raw)
        except ValueError:
            raise _bad(run_id, path, f"not a timer: {raw[:60]!r}") from None

    def set(self, run_id: str, key: int | None) -> None:
        """Make the run's timer ``key`` (``None``: no timer)."""
        old = self.get(run_id)
        if old == key:
            return
        truth = f"{self._wake}/{run_id}"
        if key is None:
            os.unlink(truth)
        else:
            entry = self.entry(key, run_id)
            make_private_dirs(os.path.dirname(entry))
            os.close(os.open(entry, os.O_WRONLY | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE))
            fd = os.open(truth, os.O_WRONLY | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE)
            try:
                pwrite_all(fd, b"%0*d\n" % (_WIDTH, key), 0)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        if old is not None:
            unlink_quiet(self.entry(old, run_id))
        if self.fsync:
            if key is not None:
                sync_dir(os.path.dirname(self.entry(key, run_id)))
            sync_dir(self._wake)

    def lower(self, run_id: str, key: int) -> None:
        """Make the timer ``key`` unless it is earlier already."""
        old = self.get(run_id)
        if old is None or key < old:
            self.set(run_id, key)

    def claim(self, now_key: int, later_key: int, limit: int) -> list[tuple[int, str]]:
        """Move up to ``limit`` timers due at ``now_key`` to ``later_key``, earliest first;
        return them with the time each had."""
        claimed = self.due(now_key, limit)
        for _, run_id in claimed:
            self.set(run_id, later_key)
        return claimed

    def due(self, now_key: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` timers due at ``now_key``, earliest first, with their times."""
        found: list[tuple[int, str]] = []
        for bucket in sorted(_numbers(self._index, os.listdir(self._index))):
            if bucket > now_key >> _BUCKET_BITS or len(found) >= limit:
                break
            path = f"{self._index}/{bucket}"
            for key, run_id in sorted(_entries(path)):
                if key > now_key or len(found) >= limit:
                    break
                if self.get(run_id) != key:
                    # Left by a crash between adding a timer's entry and removing the old one.
                    unlink_quiet(self.entry(key, run_id))
                    continue
                found.append((key, run_id))
            try:
                os.rmdir(path)  # only when empty
            except OSError:
                pass
        return found


def _numbers(directory: str, names: list[str]) -> list[int]:
    try:
        return [int(name) for name in names]
    except ValueError:
        raise CorruptedStorageError(
            f"{directory}: holds a name that is not a timer bucket: {sorted(names)[:5]}", path=directory
        ) from None


def _entries(bucket: str) -> Iterator[tuple[int, str]]:
    for name in os.listdir(bucket):
        stamp, dot, run_id = name.partition(".")
        try:
            key = int(stamp)
        except ValueError:
            key = None
        if key is None or not (dot and run_id):
            raise _bad(run_id or name, f"{bucket}/{name}", "not a timer index entry (<wake>.<run id>)")
        yield key, run_id


def _bad(run_id: str, path: str, why: str) -> CorruptedStorageError:
    error = corrupted(run_id, f"timer {path}", why)
    return CorruptedStorageError(error.message, run_id=run_id, path=path)
