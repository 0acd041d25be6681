"""Damaging a run's stored data behind its backend's back, and a byte-for-byte picture
of what a backend stores about one run.

Each persistent backend is reached the way an operator's tool (or a disk, or a bad
migration) would reach it: the file backend's run file, SQLite's and PostgreSQL's
tables, Redis's keys. The memory backend holds validated objects only: nothing to damage.
Used by ``test_poison.py`` and the bad-input catalogue (``tests/test_bad_input_records.py``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

from pyworkflow.storage.base import StorageBackend
from tests import services

#: The backends whose stored data a test can damage.
PERSISTENT = ["file", "sqlite", "redis", "postgres"]


# -- file -----------------------------------------------------------------------------------


def run_file(storage: StorageBackend, run_id: str) -> str:
    """The path of the run's file (``runs/<run_id>.jsonl``)."""
    return str(storage._files.path(run_id))  # type: ignore[attr-defined]


def write_run_file(storage: StorageBackend, run_id: str, data: bytes) -> None:
    with open(run_file(storage, run_id), "wb") as handle:
        handle.write(data)


def edit_run_file(storage: StorageBackend, run_id: str, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    """Rewrite the run's file with ``edit(lines)`` (lines without their newlines)."""
    with open(run_file(storage, run_id), "rb") as handle:
        lines = handle.read().split(b"\n")[:-1]
    write_run_file(storage, run_id, b"".join(line + b"\n" for line in edit(lines)))


# -- SQLite ---------------------------------------------------------------------------------


def sqlite_execute(
    storage: StorageBackend, sql: str, params: tuple[Any, ...] = (), *, raw: bool = False
) -> list[tuple[Any, ...]]:
    """Run one statement on the backend's database file, committed; return its rows (text
    as bytes when ``raw``: damaged text need not be UTF-8)."""
    with closing(sqlite3.connect(storage.path)) as db, db:  # type: ignore[attr-defined]
        if raw:
            db.text_factory = bytes
        return db.execute(sql, params).fetchall()


# -- Redis ----------------------------------------------------------------------------------


@contextmanager
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        yield client
    finally:
        client.close()


def redis_key(storage: StorageBackend, kind: str, run_id: str) -> str:
    """A run's key: ``kind`` is ``run`` (its record hash), ``events`` (its log list),
    ``inbox`` (its messages hash) or ``pending`` (its unconsumed message seqs)."""
    return f"{storage.prefix}:{kind}:{run_id}"  # type: ignore[attr-defined]


# -- PostgreSQL -----------------------------------------------------------------------------


def postgres_execute(storage: StorageBackend, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``{s}`` stands for the backend's schema); return its rows."""
    import psycopg

    schema = storage.schema  # type: ignore[attr-defined]
    with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
        cursor = conn.execute(sql.replace("{s}", f'"{schema}"'), params)
        return cursor.fetchall() if cursor.description is not None else []


# -- the damage test_poison.py makes ----------------------------------------------------------


def make_unreadable(storage: StorageBackend, backend_name: str, run_id: str) -> None:
    """Make the run's stored record unreadable (its status, or its whole record)."""
    if backend_name == "file":
        write_run_file(storage, run_id, b'{"run":{"this is":"garbage"}}\n')
    elif backend_name == "sqlite":
        sqlite_execute(storage, "UPDATE runs SET record = '{not json' WHERE run_id = ?", (run_id,))
    elif backend_name == "redis":
        with redis_client() as client:
            client.hset(redis_key(storage, "run", run_id), "status", '"no such status"')
    elif backend_name == "postgres":
        postgres_execute(storage, "UPDATE {s}.runs SET status = %s WHERE run_id = %s", ("no such status", run_id))
    else:
        raise ValueError(f"no way to damage the {backend_name} backend's records")


# -- what is stored about one run, byte for byte ----------------------------------------------


def stored(storage: StorageBackend, backend_name: str, run_id: str) -> Any:
    """Everything the backend stores about ``run_id``, as raw bytes, rows and members:
    equal before and after means nothing about the run changed."""
    if backend_name == "file":
        found = {}
        for folder, _, names in os.walk(storage.root):  # type: ignore[attr-defined]
            for name in names:
                if run_id in name:
                    with open(os.path.join(folder, name), "rb") as handle:
                        found[os.path.relpath(os.path.join(folder, name), storage.root)] = handle.read()  # type: ignore[attr-defined]
        return found
    if backend_name == "sqlite":
        tables = ("runs", "events", "messages", "timers", "leases")
        return {
            t: sqlite_execute(storage, f"SELECT * FROM {t} WHERE run_id = ? ORDER BY 1, 2", (run_id,), raw=True)
            for t in tables
        }
    if backend_name == "redis":
        with redis_client() as client:
            prefix = storage.prefix  # type: ignore[attr-defined]
            sets = [key for key in client.scan_iter(match=f"{prefix}:*") if client.type(key) == b"zset"]
            return {
                "run": client.hgetall(redis_key(storage, "run", run_id)),
                "events": client.lrange(redis_key(storage, "events", run_id), 0, -1),
                "inbox": client.hgetall(redis_key(storage, "inbox", run_id)),
                "pending": client.zrange(redis_key(storage, "pending", run_id), 0, -1, withscores=True),
                "lease": client.hget(f"{prefix}:leases", run_id),
                "indexes": sorted(
                    (key, member, client.zscore(key, member))
                    for key in sets
                    for member in client.zrange(key, 0, -1)
                    if run_id.encode() in member
                ),
            }
    if backend_name == "postgres":
        tables = ("runs", "events", "messages", "timers", "leases")
        return {
            t: postgres_execute(storage, f"SELECT x::text FROM {{s}}.{t} AS x WHERE run_id = %s ORDER BY 1", (run_id,))
            for t in tables
        }
    raise ValueError(f"no raw view of the {backend_name} backend")
