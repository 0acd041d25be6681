"""What only the SQLite backend promises: corruption and schema errors, durability settings,
URLs, and the contract's concurrency promises across real processes sharing one file."""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    LeaseLostError,
    SequenceConflictError,
    StorageError,
)
from pyworkflow.storage.sqlite import BUSY_TIMEOUT, SCHEMA_VERSION, SQLiteStorageBackend
from tests.storage.test_contract import ev, make_run, new_run

# -- helpers ---------------------------------------------------------------------------


@contextmanager
def raw_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, to do to the file what the backend never would."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        yield db


Work = Callable[..., Awaitable[Any]]


def _process_main(work: Work, i: int, barrier: Any, results: Any, path: str, args: tuple[Any, ...]) -> None:
    """Body of one spawned process: its own backend on the shared file, started in step."""

    async def main() -> Any:
        storage = SQLiteStorageBackend(path)
        try:
            barrier.wait(timeout=100)  # spawning 20 interpreters is slow on a loaded machine
            return await work(storage, i, *args)
        finally:
            await storage.close()

    try:
        results.put((i, None, asyncio.run(main())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent test
        results.put((i, repr(exc), None))


def in_processes(n: int, path: Path, work: Work, *args: Any, timeout: float = 110.0) -> list[Any]:
    """Run ``work(storage, i, *args)`` in ``n`` spawned processes at once; their results."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=(work, i, barrier, results, str(path), args), daemon=True)
        for i in range(n)
    ]
    for proc in procs:
        proc.start()
    try:
        return _collect(n, results, procs, time.monotonic() + timeout)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def _collect(n: int, results: Any, procs: list[Any], deadline: float) -> list[Any]:
    got: dict[int, Any] = {}
    errors: list[str] = []
    while len(got) + len(errors) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(got) + len(errors)} of {n} processes reported before the deadline")
        try:
            i, error, value = results.get(timeout=0.5)
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                raise AssertionError(f"processes died without reporting: {[p.exitcode for p in procs]}") from None
            continue
        if error is not None:
            errors.append(f"process {i}: {error}")
        else:
            got[i] = value
    assert not errors, errors
    return [got[i] for i in range(n)]


# Work for the spawned processes: module level, so "spawn" can pickle it by name.


async def _create_with_one_key(storage: SQLiteStorageBackend, i: int) -> tuple[str, bool]:
    run, created = await storage.create_run(make_run(key="one-key"), [ev(1, "workflow.started", writer=i)])
    return run.run_id, created


async def _append_on_seq_4(storage: SQLiteStorageBackend, i: int, run_id: str) -> bool:
    try:
        await storage.append_events(run_id, [ev(4, "step.completed", writer=i), ev(5, "step.started", writer=i)])
        return True
    except SequenceConflictError:
        return False


async def _claim_until_empty(storage: SQLiteStorageBackend, i: int, now: datetime) -> list[str]:
    claimed: list[str] = []
    while batch := await storage.claim_due_timers(now, limit=3):
        claimed += [t.run_id for t in batch]
    return claimed


# -- corruption ------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", ['{"run_id": "trunc', "[1, 2]", '{"run_id": "x"}'])
async def test_corrupted_run_record_is_an_error_naming_the_run(tmp_path: Path, garbage: str) -> None:
    path = tmp_path / "pyworkflow.db"
    async with SQLiteStorageBackend(path) as storage:
        run = await new_run(storage)
    with raw_db(path) as db:
        db.execute("UPDATE runs SET record = ? WHERE run_id = ?", (garbage, run.run_id))

    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(CorruptedStorageError, match=run.run_id) as info:
            await storage.get_run(run.run_id)
        assert info.value.run_id == run.run_id  # type: ignore[attr-defined]
        assert (await storage.list_runs()).runs == []  # skipped and reported
        assert await storage.list_unreadable_runs() == [run.run_id]
        with pytest.raises(CorruptedStorageError, match=run.run_id):
            await storage.update_run(run.run_id, status="running")


async def test_unparseable_record_refuses_run_changes_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    async with SQLiteStorageBackend(path) as storage:
        run = await new_run(storage)
    with raw_db(path) as db:
        db.execute("UPDATE runs SET record = 'not json' WHERE run_id = ?", (run.run_id,))

    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(CorruptedStorageError, match=run.run_id):
            await storage.append_events(run.run_id, [ev(2)], run_changes={"status": "running"})
        assert [e.seq for e in await storage.get_events(run.run_id)] == [1]


async def test_corrupted_event_is_an_error_naming_run_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    async with SQLiteStorageBackend(path) as storage:
        run = await new_run(storage)
        await storage.append_events(run.run_id, [ev(2), ev(3)])
    with raw_db(path) as db:
        db.execute('UPDATE events SET body = \'{"seq": 2, "ty\' WHERE run_id = ? AND seq = 2', (run.run_id,))

    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(CorruptedStorageError, match=f"{run.run_id}.*seq 2") as info:
            await storage.get_events(run.run_id)
        assert info.value.run_id == run.run_id  # type: ignore[attr-defined]
        assert [e.seq for e in await storage.get_events(run.run_id, after_seq=2)] == [3]


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    path.write_bytes(b"this is not a database, it is a text file that happens to be long enough" * 20)
    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(StorageError, match="not a database"):
            await storage.get_run("x")


async def test_bad_run_changes_are_refused_before_the_record_breaks(tmp_path: Path) -> None:
    async with SQLiteStorageBackend(tmp_path / "pyworkflow.db") as storage:
        run = await new_run(storage)
        with pytest.raises(ValueError):
            await storage.update_run(run.run_id, wake_at="tomorrow")
        with pytest.raises(ValueError):
            await storage.update_run(run.run_id, status="sideways")
        with pytest.raises(ValueError):
            await storage.update_run(run.run_id, result=object())
        with pytest.raises(ValueError):
            await storage.append_events(run.run_id, [ev(2)], run_changes={"error": "not a dict"})
        got = await storage.get_run(run.run_id)
        assert got is not None and got.status == "pending" and got.result is None
        assert len(await storage.get_events(run.run_id)) == 1


# -- schema ----------------------------------------------------------------------------


async def test_schema_is_created_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    storage = SQLiteStorageBackend(path)
    assert not path.exists(), "the file is opened lazily, on first use"
    await storage.get_run("x")
    await storage.close()
    with raw_db(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "events", "timers", "leases"} <= tables


async def test_a_version_1_file_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    async with SQLiteStorageBackend(path) as storage:
        run = await new_run(storage)
        await storage.update_run(run.run_id, status="suspended", wake_at=datetime(2099, 1, 1, tzinfo=UTC))
    with raw_db(path) as db:  # back to what a release with schema version 1 wrote
        db.execute("DROP TABLE messages")
        db.execute("DROP TABLE schedules")
        db.execute("PRAGMA user_version = 1")

    async with SQLiteStorageBackend(path) as storage:
        assert (await storage.get_run(run.run_id)).status == "suspended"  # type: ignore[union-attr]
        assert await storage.post_message(run.run_id, "signal", {"x": 1}) == f"{run.run_id}:1"
        got = await storage.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))
        assert got.status == "leased" and [m.payload for m in got.messages] == [{"x": 1}]
    with raw_db(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"messages_by_key", "messages_pending", "schedules_by_due"} <= indexes


def test_hot_queries_are_index_driven(tmp_path: Path) -> None:
    """A claim reads only due timers; "anything pending?" and a repeated key are one index probe."""
    from pyworkflow.storage import sqlite as module

    async def make() -> None:
        async with SQLiteStorageBackend(tmp_path / "pyworkflow.db") as storage:
            await storage.get_run("x")

    asyncio.run(make())
    with raw_db(tmp_path / "pyworkflow.db") as db:

        def plan(sql: str, params: tuple[Any, ...]) -> str:
            return " | ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        assert "USING COVERING INDEX timers_by_wake (wake_at<?)" in plan(module._DUE_TIMERS, (0, 10))
        assert "messages_pending" in plan(module._ANY_PENDING, ("r",))
        assert "messages_pending" in plan(module._PENDING_MESSAGES, ("r",))
        assert "messages_by_key" in plan(module._POST_CHECK, ("k", "r"))


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    async with SQLiteStorageBackend(path) as storage:
        run = await new_run(storage)
    with raw_db(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(ConfigurationError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer"):
            await storage.get_run(run.run_id)


async def test_foreign_tables_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw_db(path) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
    async with SQLiteStorageBackend(path) as storage:
        with pytest.raises(ConfigurationError, match="did not create"):
            await storage.get_run("x")


async def test_closed_backend_refuses_use(tmp_path: Path) -> None:
    storage = SQLiteStorageBackend(tmp_path / "pyworkflow.db")
    await new_run(storage)
    await storage.close()
    with pytest.raises(StorageError, match="closed"):
        await storage.get_run("x")


# -- settings and URLs -----------------------------------------------------------------


@pytest.mark.parametrize(("mode", "level"), [("NORMAL", 1), ("FULL", 2), ("full", 2)])
async def test_synchronous_setting_reaches_the_connection(tmp_path: Path, mode: str, level: int) -> None:
    storage = SQLiteStorageBackend(tmp_path / "pyworkflow.db", synchronous=mode)
    try:
        await storage.get_run("x")
        db = storage._connection()  # PRAGMA synchronous is per connection: ask the backend's own
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == int(BUSY_TIMEOUT * 1000)
    finally:
        await storage.close()


@pytest.mark.parametrize("mode", ["OFF", "EXTRA", "", "1"])
def test_other_synchronous_values_are_refused(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError, match=repr(mode)):
        SQLiteStorageBackend(tmp_path / "pyworkflow.db", synchronous=mode)


async def test_from_url_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = SQLiteStorageBackend.from_url("sqlite:///relative.db")
    assert storage.path == "relative.db" and storage.synchronous == "NORMAL"
    assert storage.url == "sqlite:///relative.db"
    await new_run(storage)
    await storage.close()
    assert (tmp_path / "relative.db").exists()


async def test_from_url_absolute_path_and_options(tmp_path: Path) -> None:
    target = tmp_path / "sub dir" / "abs.db"
    target.parent.mkdir()
    url = f"sqlite:///{target.as_posix().replace(' ', '%20')}?synchronous=FULL"
    assert url.startswith("sqlite:////")
    async with SQLiteStorageBackend.from_url(url) as storage:
        assert isinstance(storage, SQLiteStorageBackend)
        assert storage.path == str(target) and storage.synchronous == "FULL" and storage.url == url
        await new_run(storage)
    assert target.exists()


def test_url_of_a_constructed_backend_round_trips(tmp_path: Path) -> None:
    for backend in (
        SQLiteStorageBackend("rel.db"),
        SQLiteStorageBackend(tmp_path / "a b.db", synchronous="FULL"),
    ):
        again = SQLiteStorageBackend.from_url(backend.url)
        assert (again.path, again.synchronous) == (backend.path, backend.synchronous)
    assert SQLiteStorageBackend("rel.db").url == "sqlite:///rel.db"
    assert SQLiteStorageBackend("/abs/x.db", synchronous="FULL").url == "sqlite:////abs/x.db?synchronous=FULL"
    assert SQLiteStorageBackend().path == "pyworkflow.db"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "sqlite://host/x.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///x.db?synchronous=OFF",
        "sqlite:///x.db?journal=delete",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStorageBackend.from_url(url)


def test_url_errors_do_not_show_passwords() -> None:
    with pytest.raises(ConfigurationError) as info:
        SQLiteStorageBackend.from_url("sqlite://user:s3cret@host/x.db")
    assert "s3cret" not in str(info.value)


# -- queries the contract suite does not reach --------------------------------------------


async def test_pages_break_created_at_ties_by_run_id(tmp_path: Path) -> None:
    same = datetime(2030, 1, 1, tzinfo=UTC)
    async with SQLiteStorageBackend(tmp_path / "pyworkflow.db") as storage:
        made = [await new_run(storage, created_at=same) for _ in range(9)]
        seen: list[str] = []
        cursor = None
        while True:
            page = await storage.list_runs(limit=4, cursor=cursor)
            seen += [r.run_id for r in page.runs]
            if (cursor := page.next_cursor) is None:
                break
    assert seen == sorted((r.run_id for r in made), reverse=True)


async def test_append_with_run_changes_checks_the_lease(tmp_path: Path) -> None:
    async with SQLiteStorageBackend(tmp_path / "pyworkflow.db") as storage:
        run = await new_run(storage)
        lease = await storage.acquire_lease(run.run_id, "w", 30)
        assert lease is not None
        with pytest.raises(LeaseLostError):
            await storage.append_events(run.run_id, [ev(2)], lease_token="stale", run_changes={"status": "running"})
        await storage.append_events(run.run_id, [ev(2)], lease_token=lease.token, run_changes={"status": "running"})
        got = await storage.get_run(run.run_id)
        assert got is not None and got.status == "running"
        assert [e.seq for e in await storage.get_events(run.run_id)] == [1, 2]


# -- one instance, many threads ----------------------------------------------------------


async def test_one_instance_shared_by_threads(tmp_path: Path) -> None:
    storage = SQLiteStorageBackend(tmp_path / "pyworkflow.db")
    runs = [await new_run(storage) for _ in range(4)]
    errors: list[BaseException] = []

    def hammer(run_id: str) -> None:
        async def main() -> None:
            for seq in range(2, 52, 2):
                await storage.append_events(run_id, [ev(seq), ev(seq + 1)], run_changes={"status": "running"})

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(r.run_id,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for run in runs:
        assert [e.seq for e in await storage.get_events(run.run_id)] == list(range(1, 52))
    await storage.close()


async def test_prune_runs_in_batches(tmp_path: Path) -> None:
    async with SQLiteStorageBackend(tmp_path / "pyworkflow.db") as storage:
        doomed = [await new_run(storage) for _ in range(1_100)]
        await storage.post_message(doomed[0].run_id, "signal", idempotency_key="k")
        for run in doomed:
            await storage.append_events(run.run_id, [ev(2)], run_changes={"status": "failed"})
        kept = await new_run(storage)
        await storage.acquire_lease(doomed[0].run_id, "w", 0)
        assert await storage.recover_expired_leases() == [doomed[0].run_id]  # leaves a timer behind
        assert await storage.get_timer(doomed[0].run_id) is not None
        cutoff = datetime.now(UTC) + timedelta(seconds=1)
        assert await storage.prune_runs(older_than=cutoff, statuses=["failed", "cancelled"]) == 1_100
        assert (await storage.list_runs()).runs == [await storage.get_run(kept.run_id)]
        assert await storage.get_events(doomed[-1].run_id) == []
        assert await storage.get_timer(doomed[0].run_id) is None
        assert await storage.get_messages(doomed[0].run_id, pending_only=False) == []
        with raw_db(tmp_path / "pyworkflow.db") as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
        assert await storage.prune_runs(older_than=cutoff, statuses=[]) == 0


# -- several processes on one file ------------------------------------------------------


def test_processes_creating_with_one_key_make_one_run(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"  # not created yet: the processes also race to create the schema
    results = in_processes(20, path, _create_with_one_key)
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1

    async def check() -> None:
        async with SQLiteStorageBackend(path) as storage:
            page = await storage.list_runs(limit=100)
            assert [r.run_id for r in page.runs] == [results[0][0]]
            assert len(await storage.get_events(page.runs[0].run_id)) == 1

    asyncio.run(check())


def test_processes_racing_appends_on_one_seq_have_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"

    async def setup() -> str:
        async with SQLiteStorageBackend(path) as storage:
            run = await new_run(storage)
            await storage.append_events(run.run_id, [ev(2), ev(3)])
            return run.run_id

    run_id = asyncio.run(setup())
    results = in_processes(8, path, _append_on_seq_4, run_id)
    assert results.count(True) == 1
    winner = results.index(True)

    async def events() -> list[Any]:
        async with SQLiteStorageBackend(path) as storage:
            return await storage.get_events(run_id)

    log = asyncio.run(events())
    assert [e.seq for e in log] == [1, 2, 3, 4, 5]
    assert log[3].data == {"writer": winner} and log[4].data == {"writer": winner}


def test_processes_claim_each_due_timer_once(tmp_path: Path) -> None:
    path = tmp_path / "pyworkflow.db"
    now = datetime.now(UTC)

    async def setup() -> list[str]:
        async with SQLiteStorageBackend(path) as storage:
            runs = [await new_run(storage) for _ in range(60)]
            for i, run in enumerate(runs):
                await storage.update_run(run.run_id, wake_at=now - timedelta(seconds=i))
            return [r.run_id for r in runs]

    run_ids = asyncio.run(setup())
    results = in_processes(2, path, _claim_until_empty, now)
    every = [run_id for claimed in results for run_id in claimed]
    assert sorted(every) == sorted(run_ids), "each due timer claimed exactly once"
