"""The schedules of the file backend.

Layout, under ``<root>/schedules``::

    lock                  the lock every schedule operation takes (``flock``)
    s/<sha256(id)>        one schedule: ``{"id", "version", "due", "body"}`` as JSON,
                          replaced whole (written aside, then renamed)
    timers/               the due index, a :class:`~.file_timers.TimerIndex` keyed by
                          the same hash: reading what is due lists only due buckets

A crash between the file and the index leaves an index entry that disagrees with the
file: :meth:`ScheduleFiles.due` trusts the file, so the tick may look at a schedule once
more than needed (harmless) and never misses one, because the index is written first
when a schedule becomes due earlier.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from pyworkflow.storage.base import StoredSchedule, corrupted, from_us, to_us
from pyworkflow.storage.file_io import (
    O_CLOEXEC,
    PRIVATE_FILE_MODE,
    make_private_dirs,
    read_file,
    sync_dir,
    unlink_quiet,
    write_all,
)
from pyworkflow.storage.file_timers import TimerIndex


class ScheduleFiles:
    """Every schedule of one store; each method takes the lock itself."""

    def __init__(self, root: str, *, fsync: bool) -> None:
        base = os.path.join(root, "schedules")
        self._dir = os.path.join(base, "s")
        make_private_dirs(self._dir)
        self._index = TimerIndex(base, fsync=fsync)
        self._fd = os.open(os.path.join(base, "lock"), os.O_RDWR | os.O_CREAT | O_CLOEXEC, PRIVATE_FILE_MODE)
        self.fsync = fsync

    def close(self) -> None:
        self._index.close()
        os.close(self._fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @staticmethod
    def _name(schedule_id: str) -> str:
        return hashlib.sha256(schedule_id.encode("utf-8", "surrogatepass")).hexdigest()

    def _read(self, name: str) -> StoredSchedule | None:
        path = os.path.join(self._dir, name)
        try:
            raw = read_file(path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            due = record["due"]
            return StoredSchedule(
                record["id"], record["body"], None if due is None else from_us(int(due)), int(record["version"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise corrupted(f"schedule:{name}", f"schedule file {path}", exc) from None

    def save(self, schedule_id: str, body: str, due_at: datetime | None, version: int) -> int | None:
        name = self._name(schedule_id)
        due = None if due_at is None else to_us(due_at)
        with self._locked():
            held = self._read(name)
            if (held.version if held is not None else 0) != version:
                return None
            record = {"id": schedule_id, "version": version + 1, "due": due, "body": body}
            with self._index.locked() as index:
                old = index.get(name)
                if due is not None and (old is None or due < old):
                    index.set(name, due)  # earlier first: a crash after this only over-reports
                self._write(name, json.dumps(record).encode())
                index.set(name, due)
            return version + 1

    def _write(self, name: str, data: bytes) -> None:
        path = os.path.join(self._dir, name)
        aside = f"{path}.new"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(aside, path)
        if self.fsync:
            sync_dir(self._dir)

    def get(self, schedule_id: str) -> StoredSchedule | None:
        with self._locked():
            return self._read(self._name(schedule_id))

    def listed(self, after: str | None, limit: int) -> list[StoredSchedule]:
        # Ids are hashed into file names: listing reads every file (an operator's call).
        with self._locked():
            names = [n for n in os.listdir(self._dir) if not n.endswith(".new")]
            found = [s for s in (self._read(n) for n in names) if s is not None]
        found.sort(key=lambda s: s.schedule_id)
        return [s for s in found if after is None or s.schedule_id > after][: max(limit, 0)]

    def delete(self, schedule_id: str) -> bool:
        name = self._name(schedule_id)
        with self._locked():
            if self._read(name) is None:
                return False
            with self._index.locked() as index:
                index.set(name, None)
            unlink_quiet(os.path.join(self._dir, name))
            return True

    def due(self, now: datetime, limit: int) -> list[StoredSchedule]:
        if limit <= 0:
            return []
        now_us = to_us(now)
        with self._locked():
            with self._index.locked() as index:
                entries = index.due(now_us, limit)
            found = []
            for _, name in entries:
                schedule = self._read(name)
                if schedule is not None and schedule.due_at is not None and to_us(schedule.due_at) <= now_us:
                    found.append(schedule)
        return found
