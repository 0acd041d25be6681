"""The SQLite backend's schema: its tables and indexes, one migration per version, and
the runner that brings a database file up to :data:`SCHEMA_VERSION`.

The version lives in ``PRAGMA user_version``. Opening a database runs the missing
:data:`MIGRATIONS` in one ``BEGIN IMMEDIATE`` transaction; a version newer than this code
knows raises :class:`~pyworkflow.errors.ConfigurationError`. Times are integer epoch
microseconds (UTC); lease expiry is epoch seconds.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from pyworkflow.errors import ConfigurationError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

_V1: Final = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        status TEXT NOT NULL,
        idempotency_key TEXT,
        created_at INTEGER NOT NULL, -- epoch microseconds, UTC
        updated_at INTEGER NOT NULL, -- epoch microseconds, UTC
        last_seq INTEGER NOT NULL,   -- seq of the log's last event, 0 when empty
        record TEXT NOT NULL         -- WorkflowRun as JSON
    )""",
    # Partial: most runs have no key, and their inserts then skip this index entirely.
    "CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX runs_by_created ON runs (created_at, run_id)",
    "CREATE INDEX runs_by_status ON runs (status, created_at, run_id)",
    "CREATE INDEX runs_by_workflow ON runs (workflow_name, created_at, run_id)",
    # WITHOUT ROWID: the log is stored in (run_id, seq) order, one b-tree to write and to scan.
    """CREATE TABLE events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,          -- Event as JSON
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE timers (
        run_id TEXT PRIMARY KEY,
        wake_at INTEGER NOT NULL     -- epoch microseconds, UTC
    ) WITHOUT ROWID""",
    "CREATE INDEX timers_by_wake ON timers (wake_at, run_id)",
    """CREATE TABLE leases (
        run_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token TEXT NOT NULL,
        expires_at REAL NOT NULL     -- epoch seconds, backend wall clock
    ) WITHOUT ROWID""",
    "CREATE INDEX leases_by_expiry ON leases (expires_at)",
)

_V2: Final = (
    """CREATE TABLE messages (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,        -- per run, 1, 2, 3 ... in arrival order
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,       -- JSON
        idempotency_key TEXT,
        posted_at INTEGER NOT NULL,  -- epoch microseconds, UTC
        consumed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX messages_by_key ON messages (run_id, idempotency_key) WHERE idempotency_key IS NOT NULL",
    # Only unconsumed messages: "is anything pending?" is one probe, however long the inbox.
    "CREATE INDEX messages_pending ON messages (run_id, seq) WHERE consumed = 0",
)

_V3: Final = (
    """CREATE TABLE schedules (
        schedule_id TEXT PRIMARY KEY,
        due_at INTEGER,              -- epoch microseconds, UTC; NULL: the tick never looks
        version INTEGER NOT NULL,    -- bumped by every write (compare-and-set)
        body TEXT NOT NULL           -- definition and state as JSON (pyworkflow.schedules)
    ) WITHOUT ROWID""",
    # Partial: a paused schedule has no entry, and the tick reads only what is due.
    "CREATE INDEX schedules_by_due ON schedules (due_at, schedule_id) WHERE due_at IS NOT NULL",
)

#: ``MIGRATIONS[n]`` takes a database from schema version ``n`` to ``n + 1``.
#: Append to it; never edit a released entry (databases in the field ran it).
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1, _V2, _V3)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection, path: str) -> int:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"SQLite database {path!r} has schema version {version}, newer than this PyWorkflow "
            f"understands (up to {SCHEMA_VERSION}); it was written by a newer release: upgrade PyWorkflow"
        )
    return version


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create the schema or bring it up to :data:`SCHEMA_VERSION`, once, under the write lock."""
    if schema_version(db, path) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(db, path)  # another process may have migrated while we waited
        for statement in [statement for step in MIGRATIONS[version:] for statement in step]:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException as exc:
        db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError) and "already exists" in str(exc):
            raise ConfigurationError(
                f"SQLite database {path!r} has tables PyWorkflow did not create ({exc}); use a file of its own"
            ) from exc
        raise
