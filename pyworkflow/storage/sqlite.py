"""SQLite storage: one file, no server, safe for several processes on one machine.

The embedded default (``./pyworkflow.db``). Select it with ``sqlite:///relative.db`` or
``sqlite:////absolute/path.db`` (SQLAlchemy's spelling), optionally with
``?synchronous=FULL``.

**Permissions.** A database file this backend creates is private to its owner (0600,
whatever the umask), and so are its ``-wal`` and ``-shm`` files (SQLite gives them the
database file's mode). A file that exists already is never changed: to share the
database with a group, create the (empty) file first with the mode you want.

**Durability.** The database runs in WAL mode. With ``synchronous="NORMAL"`` (the default)
a commit is written to the WAL but not fsynced: it survives a crash of the process, but
the last commits before a power loss or OS crash may be lost (the file stays consistent).
``synchronous="FULL"`` fsyncs every commit, so it also survives power loss, at the price
of one fsync per write (several times the cost of the write itself).

**Several processes.** Each process opens its own connection to the file. Every write
that checks and then writes runs in a ``BEGIN IMMEDIATE`` transaction, holding SQLite's
single write lock from the check to the commit, so the contract's promises hold across
processes (lease writes are single statements). Readers never block writers (WAL); a
writer waits up to :data:`BUSY_TIMEOUT` seconds for the lock. Threads sharing a backend
take turns on its connection. The file must be on a local filesystem (WAL needs shared
memory). The async methods call sqlite3 directly on the loop's thread: an operation takes
microseconds, less than a hand-off to a thread pool would cost.

**Schema** (:mod:`pyworkflow.storage.sqlite_schema`). The version lives in ``PRAGMA
user_version``; opening a database runs the missing migrations in one ``BEGIN IMMEDIATE``
transaction. A version newer than this code knows raises
:class:`~pyworkflow.errors.ConfigurationError`. ``runs`` holds the record as JSON plus
the columns queries filter on and ``last_seq``, which an append checks and moves;
``events`` and ``messages`` (the inbox, with a partial index of the unconsumed) are
clustered by ``(run_id, seq)``; ``timers`` follows each record's ``wake_at`` by
:func:`~pyworkflow.storage.base.effective_wake`, indexed by wake time so a claim reads only
due timers. Times are integer epoch microseconds (UTC); lease expiry is epoch seconds.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic_core import from_json, to_json

from pyworkflow.clock import utcnow
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    RunFinishedError,
    RunNotFoundError,
    StorageError,
)
from pyworkflow.events import Event
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
    corrupted,
    decode_cursor,
    decode_events,
    decode_message,
    decode_run,
    effective_wake,
    from_us,
    message_id,
    message_payload,
    new_token,
    not_due,
    page_cursor,
    readable_runs,
    redact_url,
    refused_append,
    tally_runs,
    to_us,
    utc,
    woken_by_message,
)
from pyworkflow.storage.sqlite_schema import MIGRATIONS as MIGRATIONS  # re-exported
from pyworkflow.storage.sqlite_schema import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported
from pyworkflow.storage.sqlite_schema import migrate

#: Seconds a writer waits for another connection's write lock before giving up.
BUSY_TIMEOUT: Final = 30.0

SYNCHRONOUS_MODES: Final = ("NORMAL", "FULL")

_BUSY_CODES: Final = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

_INSERT_RUN: Final = (
    "INSERT INTO runs (run_id, workflow_name, status, idempotency_key, created_at, updated_at, last_seq, record)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT: Final = "INSERT INTO events (run_id, seq, body) VALUES (?, ?, ?)"
# An append reads the run once for everything: the log's end, the lease holder, the record.
_APPEND_CHECK: Final = (
    "SELECT r.last_seq, l.token, r.record FROM runs r LEFT JOIN leases l ON l.run_id = r.run_id WHERE r.run_id = ?"
)
_ACTIVATION_CHECK: Final = (
    "SELECT r.record, l.expires_at FROM runs r LEFT JOIN leases l ON l.run_id = r.run_id WHERE r.run_id = ?"
)
_SET_TIMER: Final = (
    "INSERT INTO timers (run_id, wake_at) VALUES (?, ?) ON CONFLICT (run_id) DO UPDATE SET wake_at = excluded.wake_at"
)
_EARLIER_TIMER: Final = (
    "INSERT INTO timers (run_id, wake_at) VALUES (?, ?)"
    " ON CONFLICT (run_id) DO UPDATE SET wake_at = min(timers.wake_at, excluded.wake_at)"
)
# Only due timers are read (timers_by_wake): the cost does not grow with the runs asleep.
_DUE_TIMERS: Final = (
    "SELECT t.run_id, t.wake_at, r.workflow_name FROM timers AS t LEFT JOIN runs AS r ON r.run_id = t.run_id"
    " WHERE t.wake_at <= ? ORDER BY t.wake_at, t.run_id LIMIT ?"
)
_DELETE_TIMER: Final = "DELETE FROM timers WHERE run_id = ?"
# Taking a lease is one statement: insert it, or overwrite it only if it has expired.
_ACQUIRE_LEASE: Final = (
    "INSERT INTO leases (run_id, owner, token, expires_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, token = excluded.token,"
    " expires_at = excluded.expires_at WHERE leases.expires_at <= ?"
)
_RENEW_LEASE: Final = "UPDATE leases SET expires_at = ? WHERE run_id = ? AND token = ?"
_RELEASE_LEASE: Final = "DELETE FROM leases WHERE run_id = ? AND token = ?"
# Posting reads everything it decides on in one statement: the run, a repeated key, the next seq.
_POST_CHECK: Final = (
    "SELECT r.status, r.record, (SELECT seq FROM messages WHERE run_id = r.run_id AND idempotency_key = ?),"
    " (SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE run_id = r.run_id) FROM runs r WHERE r.run_id = ?"
)
_INSERT_MESSAGE: Final = (
    "INSERT INTO messages (run_id, seq, kind, payload, idempotency_key, posted_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_MESSAGE_FIELDS: Final = ("seq", "kind", "payload", "idempotency_key", "posted_at", "consumed")
_MESSAGES: Final = "SELECT seq, kind, payload, idempotency_key, posted_at, consumed FROM messages"
# INDEXED BY: without statistics the planner would scan the run's whole inbox by its key.
_PENDING: Final = " INDEXED BY messages_pending WHERE run_id = ? AND consumed = 0"
_PENDING_MESSAGES: Final = _MESSAGES + _PENDING + " ORDER BY seq"
_ANY_PENDING: Final = "SELECT EXISTS (SELECT 1 FROM messages" + _PENDING + ")"
_EVENTS: Final = "SELECT body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?"
_PRUNE_BATCH: Final = 500
# Each half reads one covering index (runs_by_status, runs_by_workflow) in its key order,
# so the groups come out sorted with no temporary b-tree and no record is read. Still a
# walk of both indexes, on the loop's thread like every call here: tens of milliseconds
# per 100,000 runs, which only a counter table kept by every write could avoid.
_COUNT: Final = (
    "SELECT 's', status, count(*) FROM runs{where} GROUP BY status"
    " UNION ALL SELECT 'w', workflow_name, count(*) FROM runs{where} GROUP BY workflow_name"
)
_COUNT_ALL: Final = _COUNT.format(where="")
_COUNT_AFTER: Final = _COUNT.format(where=" WHERE created_at > ?")


def _normalize_synchronous(synchronous: str) -> str:
    mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous={synchronous!r} is not supported; use one of {', '.join(SYNCHRONOUS_MODES)}")
    return str(mode)


def _storage_error(exc: sqlite3.Error, where: str, run_id: str | None) -> StorageError:
    name = getattr(exc, "sqlite_errorname", "")
    subject = f"run {run_id!r}: " if run_id else ""
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return CorruptedStorageError(f"{subject}SQLite database {where} is corrupted: {exc}", run_id=run_id)
    if "could not decode to utf-8" in str(exc).lower():  # a stored text (an event, a record) that is not UTF-8
        return CorruptedStorageError(
            f"{subject}SQLite database {where}: a stored event or record is not UTF-8 text ({exc})", run_id=run_id
        )
    return StorageError(f"SQLite database {where}: {exc}", run_id=run_id)


class _Session:
    """Holds the backend's connection for one operation, in a transaction if ``write``.

    It serializes threads sharing one backend (one connection cannot interleave two
    transactions), turns sqlite3 errors into :class:`StorageError`, and rolls back on any
    exception so a refused write leaves nothing behind.
    """

    __slots__ = ("_backend", "_run_id", "_write", "_db")

    def __init__(self, backend: SQLiteStorageBackend, run_id: str | None, write: bool) -> None:
        self._backend = backend
        self._run_id = run_id
        self._write = write

    def __enter__(self) -> sqlite3.Connection:
        self._backend._lock.acquire()
        try:
            self._db = self._backend._connection()
            if self._write:
                self._db.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._backend._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(exc, self._backend.path, self._run_id) from exc
            raise
        return self._db

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        db = self._db
        try:
            if self._write and kind is None:
                db.execute("COMMIT")
        except sqlite3.Error as failure:
            exc = failure
        finally:
            try:
                if self._write and db.in_transaction:  # after an exception, or a failed commit
                    db.execute("ROLLBACK")
            except sqlite3.Error as failure:
                exc = exc or failure
            finally:
                self._backend._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise _storage_error(exc, self._backend.path, self._run_id) from exc


WAL_AUTOCHECKPOINT_PAGES = 4000
PRIVATE_FILE_MODE: Final = 0o600


def _create_private(path: str) -> None:
    """Create the database file readable and writable by its owner only (0600, whatever
    the umask), before SQLite creates it with 0644: it holds every run's arguments and
    results. SQLite gives the ``-wal`` and ``-shm`` files the database file's mode. A
    file that exists already is left as it is, so to share the database with a group,
    create the file first with the mode you want (``install -m 660 /dev/null runs.db``)."""
    if path == ":memory:" or path.startswith("file:"):
        return
    # An existing file keeps its mode; a missing directory or no permission is reported by
    # sqlite3.connect, with the path.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE))


class SQLiteStorageBackend(StorageBackend):
    """Storage in one SQLite file (WAL mode). See the module docstring."""

    def __init__(self, path: str | os.PathLike[str] = "pyworkflow.db", *, synchronous: str = "NORMAL") -> None:
        self.synchronous = synchronous = _normalize_synchronous(synchronous)
        self.path = os.fspath(path)
        # "sqlite:///" + "/abs" gives the four-slash absolute form; a relative path keeps three.
        self.url = f"sqlite:///{quote(self.path)}" + ("" if synchronous == "NORMAL" else f"?synchronous={synchronous}")
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStorageBackend:
        """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, optional ``?synchronous=FULL``."""
        shown = redact_url(url)  # errors must not echo a password, even one misplaced here
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"{shown!r} is not a sqlite:// URL")
        if parts.netloc:
            raise ConfigurationError(
                f"{shown!r}: a sqlite URL has no host; use sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = unquote(parts.path[1:])
        if not path:
            raise ConfigurationError(f"{shown!r} names no database file; use sqlite:///pyworkflow.db (or memory://)")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ConfigurationError(f"{shown!r}: unknown option(s) {sorted(unknown)}; supported: synchronous")
        try:
            backend = cls(path, synchronous=options.get("synchronous", ["NORMAL"])[-1])
        except ValueError as exc:
            raise ConfigurationError(f"{shown!r}: {exc}") from None
        backend.url = url
        return backend

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- connection -----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The connection, opened (and the schema brought up to date) on first use."""
        if self._db is None:
            if self._closed:
                raise StorageError(f"{self!r} is closed")
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        _create_private(self.path)
        try:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False, cached_statements=256
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            self._prepare(db)
        except sqlite3.Error as exc:
            db.close()
            raise _open_error(exc, self.path) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Set WAL mode and the schema, retrying while other processes do the same.

        Switching a fresh file to WAL upgrades a read lock to an exclusive one, and SQLite
        can answer "busy" at once (without waiting out the busy timeout) when several
        connections try that together, to avoid a deadlock; so racing first opens retry.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._configure(db)
                migrate(db, self.path)
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES or time.monotonic() > deadline:
                    raise
            time.sleep(random.uniform(0.001, 0.01))  # jitter, so the racers stop colliding

    def _configure(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode != "wal":  # persistent in the file: set once, then only read
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and self.path != ":memory:":
            raise ConfigurationError(
                f"SQLite database {self.path!r} refused WAL mode (got {mode!r}); it must be on a local filesystem"
            )
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        # Checkpoint every ~16 MB of WAL instead of SQLite's 4 MB: a checkpoint is the
        # one write here that waits on the disk, and appends are small and frequent.
        db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")

    def _use(self, run_id: str | None = None) -> _Session:
        """The connection for reads and single-statement writes (atomic on their own)."""
        return _Session(self, run_id, write=False)

    def _transaction(self, run_id: str | None = None) -> _Session:
        """A ``BEGIN IMMEDIATE`` transaction: the write lock is held from the check to the commit."""
        return _Session(self, run_id, write=True)

    # -- runs -----------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        run_id = run.run_id
        times = to_us(run.created_at), to_us(run.updated_at)
        row = (run_id, run.workflow_name, str(run.status), run.idempotency_key, *times, len(events), run.to_json())
        bodies = [(run_id, e.seq, e.to_json()) for e in events]
        with self._transaction(run_id) as db:
            try:
                db.execute(_INSERT_RUN, row)
            except sqlite3.IntegrityError:  # the idempotency key is taken, or else the run id (a NULL key finds none)
                found = db.execute(
                    "SELECT run_id, record FROM runs WHERE idempotency_key = ?", (run.idempotency_key,)
                ).fetchone()
                if found is None:
                    raise ValueError(f"run {run_id!r} already exists") from None
                return decode_run(found[1], found[0]), False
            if bodies:
                db.executemany(_INSERT_EVENT, bodies)
            if run.wake_at is not None:  # the start guard: due if no activation ever ran it
                db.execute(_SET_TIMER, (run_id, to_us(run.wake_at)))
        return run, True

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        with self._use(run_id) as db:
            row = db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else decode_run(row[0], run_id)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        checked = check_run_changes(changes)
        with self._transaction(run_id) as db:
            row = db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            # Decoded before the commit: a record that cannot be read back is not written.
            return decode_run(_write_changes(db, run_id, row[0], checked), run_id)

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
        if limit <= 0:
            return RunPage(runs=[])
        given = [  # the same few shapes recur, so sqlite3 caches their statements
            ("status = ?", None if status is None else RunStatus(status).value),
            ("workflow_name = ?", workflow_name),
            ("created_at > ?", None if created_after is None else to_us(created_after)),
            ("created_at < ?", None if created_before is None else to_us(created_before)),
        ]
        clauses = [clause for clause, value in given if value is not None]
        params: list[Any] = [value for _, value in given if value is not None]
        if after is not None:  # strictly older than the last run of the previous page
            clauses.append("(created_at, run_id) < (?, ?)")
            params += [to_us(after[0]), after[1]]
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = f"SELECT run_id, record, created_at FROM runs{where} ORDER BY created_at DESC, run_id DESC LIMIT ?"
        with self._use() as db:
            rows = db.execute(sql, (*params, limit + 1)).fetchall()
        runs = readable_runs((run_id, record) for run_id, record, _ in rows[:limit])
        # The cursor comes from the columns, so it passes an unreadable last run too.
        next_cursor = None
        if len(rows) > limit:
            last_id, _, last_at = rows[limit - 1]
            next_cursor = page_cursor(from_us(last_at), last_id)
        return RunPage(runs=runs, next_cursor=next_cursor)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        after = check_created_after("count_runs", created_after)
        sql, params = (_COUNT_ALL, ()) if after is None else (_COUNT_AFTER, (to_us(after),) * 2)
        with self._use() as db:  # one statement: one snapshot
            rows = db.execute(sql, params).fetchall()
        return tally_runs(
            [(name, n) for by, name, n in rows if by == "s"], [(name, n) for by, name, n in rows if by == "w"]
        )

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        found: list[str] = []
        after = ""
        while len(found) < limit:
            with self._use() as db:
                rows = db.execute(
                    "SELECT run_id, record FROM runs WHERE run_id > ? ORDER BY run_id LIMIT 500", (after,)
                ).fetchall()
            for run_id, record in rows:
                try:
                    decode_run(record, run_id)
                except CorruptedStorageError:
                    found.append(run_id)
            if len(rows) < 500:
                break
            after = rows[-1][0]
        return found[: max(limit, 0)]

    async def delete_run(self, run_id: str) -> bool:
        with self._transaction(run_id) as db:
            return _delete_runs(db, [run_id]) > 0

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        chosen = TERMINAL_STATUSES if statuses is None else statuses
        wanted = sorted({RunStatus(s).value for s in chosen})
        if not wanted:
            return 0
        marks = ", ".join("?" * len(wanted))
        sql = f"SELECT run_id FROM runs WHERE status IN ({marks}) AND updated_at < ? LIMIT {_PRUNE_BATCH}"
        params = (*wanted, to_us(older_than))
        deleted = 0
        while True:  # batches keep each write-lock hold short for other processes
            with self._transaction() as db:
                doomed = [row[0] for row in db.execute(sql, params)]
                deleted += _delete_runs(db, doomed)
            if len(doomed) < _PRUNE_BATCH:
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
        expected, changes, consumed = check_append(run_id, events, lease_token, run_changes, consume, release_lease)
        last_seq = events[-1].seq
        # Serialize before taking the write lock, so other writers wait less.
        bodies = [(run_id, e.seq, e.to_json()) for e in events]
        with self._transaction(run_id) as db:
            row = db.execute(_APPEND_CHECK, (run_id,)).fetchone()
            last, held, raw = row if row is not None else (0, None, None)
            refusal = refused_append(
                run_id, exists=bool(row), last_seq=last, expected=expected, lease_token=lease_token, held_token=held
            )
            if refusal is not None:
                raise refusal
            if consumed:  # before the timer is set: what is consumed here no longer counts as pending
                db.executemany(
                    "UPDATE messages SET consumed = 1 WHERE run_id = ? AND seq = ?", [(run_id, n) for n in consumed]
                )
            if changes:
                _write_changes(db, run_id, raw, changes, last_seq=last_seq)
            else:
                db.execute("UPDATE runs SET last_seq = ? WHERE run_id = ?", (last_seq, run_id))
            if release_lease:
                db.execute(_RELEASE_LEASE, (run_id, lease_token))
            db.executemany(_INSERT_EVENT, bodies)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        with self._use(run_id) as db:  # LIMIT -1: no limit
            rows = db.execute(_EVENTS, (run_id, after_seq, -1 if limit is None else max(limit, 0))).fetchall()
        return decode_events([body for (body,) in rows], run_id, after_seq + 1)

    # -- timers ---------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        with self._use(run_id) as db:
            row = db.execute("SELECT wake_at FROM timers WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else Timer(run_id=run_id, wake_at=from_us(row[0]))

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        later = to_us(utc(now) + timedelta(seconds=redeliver_after))
        with self._transaction() as db:
            due = db.execute(_DUE_TIMERS, (to_us(now), max(limit, 0))).fetchall()  # LIMIT -1 would mean all
            db.executemany("UPDATE timers SET wake_at = ? WHERE run_id = ?", [(later, run_id) for run_id, _, _ in due])
        return [Timer(run_id=run_id, wake_at=from_us(wake), workflow_name=name) for run_id, wake, name in due]

    # -- schedules ------------------------------------------------------------

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        due = None if due_at is None else to_us(due_at)
        with self._transaction() as db:
            if version == 0:
                cursor = db.execute(
                    "INSERT INTO schedules (schedule_id, due_at, version, body) VALUES (?, ?, 1, ?)"
                    " ON CONFLICT (schedule_id) DO NOTHING",
                    (schedule_id, due, body),
                )
            else:
                cursor = db.execute(
                    "UPDATE schedules SET due_at = ?, version = version + 1, body = ?"
                    " WHERE schedule_id = ? AND version = ?",
                    (due, body, schedule_id, version),
                )
        return version + 1 if cursor.rowcount == 1 else None

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        with self._use() as db:
            row = db.execute(f"{_SCHEDULE_COLUMNS} WHERE schedule_id = ?", (schedule_id,)).fetchone()
        return None if row is None else _schedule(row)

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        with self._use() as db:
            rows = db.execute(
                f"{_SCHEDULE_COLUMNS} WHERE schedule_id > ? ORDER BY schedule_id LIMIT ?", (after or "", max(limit, 0))
            ).fetchall()
        return [_schedule(row) for row in rows]

    async def delete_schedule(self, schedule_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM schedules WHERE schedule_id = ?", (schedule_id,)).rowcount > 0

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        with self._use() as db:
            rows = db.execute(
                f"{_SCHEDULE_COLUMNS} WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at, schedule_id LIMIT ?",
                (to_us(now), max(limit, 0)),
            ).fetchall()
        return [_schedule(row) for row in rows]

    # -- inbox ----------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        body = check_message(run_id, kind, payload, idempotency_key)
        now = utcnow()
        with self._transaction(run_id) as db:
            row = db.execute(_POST_CHECK, (idempotency_key, run_id)).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            status, raw, repeated, seq = row
            if repeated is not None:
                return message_id(run_id, repeated)
            if RunStatus(status).is_terminal:
                raise RunFinishedError(run_id, status)
            db.execute(_INSERT_MESSAGE, (run_id, seq, kind, body, idempotency_key, to_us(now)))
            record = _parse_record(raw, run_id)
            if woken_by_message(status, record["wake_at"], now):  # earliest wins
                record["wake_at"] = record["updated_at"] = now
                text = to_json(record).decode()
                db.execute("UPDATE runs SET record = ?, updated_at = ? WHERE run_id = ?", (text, to_us(now), run_id))
            db.execute(_EARLIER_TIMER, (run_id, to_us(now)))
        return message_id(run_id, seq)

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        sql = _PENDING_MESSAGES if pending_only else _MESSAGES + " WHERE run_id = ? ORDER BY seq"
        with self._use(run_id) as db:
            rows = db.execute(sql, (run_id,)).fetchall()
        return _messages(rows, run_id)

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        with self._transaction(run_id) as db:
            row = db.execute(_ACTIVATION_CHECK, (run_id,)).fetchone()
            if row is None:
                return Activation("missing")
            run = decode_run(row[0], run_id)
            if run.status.is_terminal:
                db.execute(_DELETE_TIMER, (run_id,))
                return Activation("finished", run)
            clock = time.time()
            if row[1] is not None and row[1] > clock:
                return Activation("busy", run)
            pending = db.execute(_PENDING_MESSAGES, (run_id,)).fetchall()
            if not_due(run.status, run.wake_at, utc(now), bool(pending)):
                return Activation("not_due", run)
            lease = Lease(run_id=run_id, owner=owner, token=new_token(), expires_at=clock + ttl)
            db.execute(_ACQUIRE_LEASE, (run_id, owner, lease.token, lease.expires_at, clock))
            bodies = [body for (body,) in db.execute(_EVENTS, (run_id, 0, -1))]
        # an expired lease nobody released (row[1]): its holder died
        return Activation(
            "leased", run, lease, decode_events(bodies, run_id), _messages(pending, run_id), row[1] is not None
        )

    # -- leases ---------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        now = time.time()
        token = new_token()
        with self._use(run_id) as db:
            taken = db.execute(_ACQUIRE_LEASE, (run_id, owner, token, now + ttl, now)).rowcount
        return Lease(run_id=run_id, owner=owner, token=token, expires_at=now + ttl) if taken else None

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        expires_at = time.time() + ttl
        with self._use(lease.run_id) as db:
            renewed = db.execute(_RENEW_LEASE, (expires_at, lease.run_id, lease.token)).rowcount
        return lease.model_copy(update={"expires_at": expires_at}) if renewed else None

    async def release_lease(self, lease: Lease) -> None:
        with self._use(lease.run_id) as db:
            db.execute(_RELEASE_LEASE, (lease.run_id, lease.token))

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        with self._transaction() as db:
            sql = "SELECT run_id FROM leases WHERE expires_at <= ? ORDER BY expires_at, run_id LIMIT ?"
            expired = [run_id for (run_id,) in db.execute(sql, (time.time(), max(limit, 0)))]
            db.executemany("DELETE FROM leases WHERE run_id = ?", [(run_id,) for run_id in expired])
            now = to_us(utcnow())
            db.executemany(_SET_TIMER, [(run_id, now) for run_id in expired])
        return expired


def _parse_record(raw: Any, run_id: str) -> dict[str, Any]:
    """The stored record as a dict to edit (no model round trip), ``status`` and ``wake_at`` decoded."""
    try:
        record = from_json(raw)
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object, got {type(record).__name__}")
        record["status"] = RunStatus(record.get("status"))
        wake = record.get("wake_at")
        record["wake_at"] = None if wake is None else utc(datetime.fromisoformat(wake))
    except (ValueError, TypeError) as exc:
        raise corrupted(run_id, "run record", exc) from exc
    return record


_SCHEDULE_COLUMNS: Final = "SELECT schedule_id, body, due_at, version FROM schedules"


def _schedule(row: tuple[Any, ...]) -> StoredSchedule:
    return StoredSchedule(row[0], row[1], None if row[2] is None else from_us(row[2]), row[3])


def _write_changes(
    db: sqlite3.Connection, run_id: str, raw: Any, changes: dict[str, Any], last_seq: int | None = None
) -> str:
    """Write the record with checked ``changes`` and the indexed columns that follow; when
    ``wake_at`` or ``status`` change, the timer follows by :func:`effective_wake` (messages
    not yet consumed count as pending). Returns the record's JSON."""
    now = utcnow()
    record = _parse_record(raw, run_id)
    record.update(changes)
    record["updated_at"] = now
    columns = ["record = ?", "updated_at = ?"]
    params: list[Any] = [None, to_us(now)]
    if "status" in changes:  # left out otherwise, which spares the status index an update
        columns.append("status = ?")
        params.append(changes["status"].value)
    if "wake_at" in changes or "status" in changes:
        pending = db.execute(_ANY_PENDING, (run_id,)).fetchone()[0]
        wake = record["wake_at"] = effective_wake(
            record["wake_at"], terminal=record["status"].is_terminal, messages_pending=bool(pending), now=now
        )
        db.execute(_DELETE_TIMER, (run_id,)) if wake is None else db.execute(_SET_TIMER, (run_id, to_us(wake)))
    if last_seq is not None:
        columns.append("last_seq = ?")
        params.append(last_seq)
    params[0] = text = to_json(record).decode()
    db.execute(f"UPDATE runs SET {', '.join(columns)} WHERE run_id = ?", (*params, run_id))
    return text


def _messages(rows: list[Any], run_id: str) -> list[Message]:
    messages = []
    for row in rows:
        raw = dict(zip(_MESSAGE_FIELDS, row, strict=True), run_id=run_id)
        raw["payload"] = message_payload(raw["payload"], run_id, raw["seq"])
        posted = raw["posted_at"]
        if type(posted) is not int:
            raise corrupted(run_id, f"message {raw['seq']}", f"posted_at must be microseconds, got {posted!r}")
        raw["posted_at"] = from_us(posted)
        messages.append(decode_message(raw, run_id))
    return messages


def _delete_runs(db: sqlite3.Connection, run_ids: list[str]) -> int:
    """Delete runs with their events, messages, timers and leases; the caller holds a transaction."""
    keys = [(run_id,) for run_id in run_ids]
    deleted = db.executemany("DELETE FROM runs WHERE run_id = ?", keys).rowcount
    if deleted:
        for table in ("events", "messages", "timers", "leases"):
            db.executemany(f"DELETE FROM {table} WHERE run_id = ?", keys)
    return max(deleted, 0)


def _open_error(exc: sqlite3.Error, path: str) -> StorageError | ConfigurationError:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_CANTOPEN":
        return ConfigurationError(f"cannot open SQLite database {path!r}: {exc}")
    return _storage_error(exc, repr(path), None)
