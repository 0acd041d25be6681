"""Storage going away under running workflows: SQLite's write lock held by another
connection past the busy timeout, PostgreSQL's connections cut through the test's proxy."""

from __future__ import annotations

import sqlite3
import time
import uuid

import pytest

from tests.celery.conftest import wait_until
from tests.chaos import journal
from tests.chaos.conftest import Fleet
from tests.chaos.workflows import expected, steps

BUSY_TIMEOUT = 0.5  # the workers' SQLite busy timeout in these tests (30 s by default)
LOCK_HELD = 4.0  # longer than the busy timeout, than a step (0.5 s) and than the lease (3 s)
CUT = 5.0  # the PostgreSQL outage: longer than a step and than the lease


def _start(fleet: Fleet, tag: str, count: int) -> dict[str, str]:
    runs = {}
    for i in range(count):
        runs[fleet.start(steps, f"{tag}-{i}", 3, 0.5, 0.5)] = expected(f"{tag}-{i}", 3)
    return runs


def hold_write_lock(path: object, seconds: float) -> None:
    """Take SQLite's write lock from a connection of our own (``BEGIN IMMEDIATE``: every
    other writer gets "database is locked" once its busy timeout runs out) and keep it
    ``seconds``."""
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)  # the length of the fault, not a synchronisation
        db.execute("ROLLBACK")
    finally:
        db.close()


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_sqlite_locked_past_the_busy_timeout(sqlite_fleet: Fleet) -> None:
    """Another connection holds the write lock for 4 s mid-run: appends, lease renewals,
    lease takes and ticks all fail with "database is locked" after the workers' 0.5 s
    busy timeout, for longer than a step and than the lease. Every run completes; no
    completed step runs again; no step runs in two places at once."""
    fleet = sqlite_fleet
    fleet.env["PYWORKFLOW_CHAOS_SQLITE_BUSY_TIMEOUT"] = str(BUSY_TIMEOUT)
    worker = fleet.worker()
    fleet.beat()
    runs = _start(fleet, f"lock-{uuid.uuid4().hex[:6]}", 20)
    wait_until(lambda: len(journal.running(fleet.journal)) >= 2, 30, "steps running")
    assert fleet.store.path is not None
    hold_write_lock(fleet.store.path, LOCK_HELD)
    summary = fleet.verify(list(runs), timeout=90, expected=runs)
    fleet.alive(worker)
    assert b"database is locked" in worker.log.read_bytes(), "no write hit the lock: nothing was tested"
    print(f"\nsqlite: write lock held {LOCK_HELD:g} s (busy timeout {BUSY_TIMEOUT:g} s); {summary.describe()}")


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_postgres_connections_cut(postgres_fleet: Fleet) -> None:
    """Every PostgreSQL connection of the workers is reset mid-run and new ones refused
    for 5 s (longer than a step and than the lease). Every run completes; no completed
    step runs again; no step runs in two places at once."""
    fleet = postgres_fleet
    proxy = fleet.store.proxy
    assert proxy is not None
    worker = fleet.worker()
    fleet.beat()
    runs = _start(fleet, f"cut-{uuid.uuid4().hex[:6]}", 20)
    wait_until(lambda: len(journal.running(fleet.journal)) >= 2, 30, "steps running")
    cut = proxy.cut()
    time.sleep(CUT)  # the length of the fault, not a synchronisation
    proxy.restore()
    summary = fleet.verify(list(runs), timeout=90, expected=runs)
    fleet.alive(worker)
    assert cut > 0 and proxy.reset > cut, "the cut met no connection and refused none: nothing was tested"
    print(f"\npostgres: {cut} connections cut, {proxy.reset - cut} refused over {CUT:g} s; {summary.describe()}")
