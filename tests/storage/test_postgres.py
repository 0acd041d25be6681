"""PostgreSQL-specific behaviour the contract suite cannot see.

Schema versioning, password redaction, URL forms, SQL over event payloads, corruption
detection, and the contract's races run by real processes (``spawn``: nothing shared
but the database), each with its own backend on one schema.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pyworkflow.errors import ConfigurationError, CorruptedStorageError, SequenceConflictError, StorageError
from pyworkflow.events import Event
from pyworkflow.storage.base import StorageBackend, WorkflowRun, new_run_id
from tests import services

try:
    import psycopg
    from psycopg import sql

    from pyworkflow.storage.postgres import SCHEMA_VERSION, PostgresStorageBackend
except ImportError as exc:  # the backend's missing-driver error is an ImportError too
    if services.services_required():
        raise
    pytest.skip(f"the PostgreSQL backend cannot be imported: {exc}", allow_module_level=True)

URL = services.POSTGRES_URL
SECRET = "s3cr3t-Pa55"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped afterwards with everything in it."""
    services.require_postgres()
    name = f"pwtest_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def raw(schema: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run SQL directly, as an operator (or a bug) would; ``{s}`` is the schema."""
    query = sql.SQL(statement).format(s=sql.Identifier(schema))
    with psycopg.connect(URL, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def make_run(key: str | None = None) -> WorkflowRun:
    now = datetime.now(UTC)
    return WorkflowRun(run_id=new_run_id(), workflow_name="wf", idempotency_key=key, created_at=now, updated_at=now)


def ev(seq: int, type: str = "step.completed", **data: Any) -> Event:
    return Event(seq=seq, type=type, timestamp=datetime.now(UTC), data=data)


async def new_run(backend: StorageBackend, events: int = 1) -> WorkflowRun:
    run, created = await backend.create_run(make_run(), [ev(i) for i in range(1, events + 1)])
    assert created
    return run


def run_processes(target: Callable[..., None], args: list[tuple[Any, ...]], timeout: float = 150.0) -> list[Any]:
    """Start one spawned process per ``args`` (all released together), return their results in order."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(i, barrier, results, *a)) for i, a in enumerate(args)]
    for proc in procs:
        proc.start()
    collected: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < len(procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(collected)} of {len(procs)} processes reported in {timeout}s")
            i, outcome, value = results.get(timeout=remaining)
            if outcome == "error":
                raise AssertionError(f"process {i} failed: {value}")
            collected[i] = value
    finally:
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 1.0))
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return [collected[i] for i in range(len(procs))]


def _in_process(
    i: int, barrier: Any, results: Any, schema: str, work: Callable[[PostgresStorageBackend], Coroutine[Any, Any, Any]]
) -> None:
    async def main() -> Any:
        backend = PostgresStorageBackend(URL, schema=schema)  # built outside the loop, like a Celery worker's
        try:
            barrier.wait(timeout=120)  # spawning 20 interpreters is slow on a busy machine
            return await work(backend)
        finally:
            await backend.close()

    try:
        results.put((i, "ok", asyncio.run(main())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent test
        results.put((i, "error", repr(exc)))


def _proc_create(i: int, barrier: Any, results: Any, schema: str, key: str) -> None:
    async def work(backend: PostgresStorageBackend) -> tuple[str, bool]:
        run, created = await backend.create_run(make_run(key), [ev(1, "workflow.started", creator=i)])
        return run.run_id, created

    _in_process(i, barrier, results, schema, work)


def _proc_append(i: int, barrier: Any, results: Any, schema: str, run_id: str) -> None:
    async def work(backend: PostgresStorageBackend) -> bool:
        try:
            await backend.append_events(run_id, [ev(4, writer=i), ev(5, writer=i)], run_changes={"status": "running"})
            return True
        except SequenceConflictError:
            return False

    _in_process(i, barrier, results, schema, work)


def _proc_claim(i: int, barrier: Any, results: Any, schema: str, now: datetime) -> None:
    async def work(backend: PostgresStorageBackend) -> list[str]:
        claimed: list[str] = []
        while batch := await backend.claim_due_timers(now, limit=5):
            claimed += [t.run_id for t in batch]
        return claimed

    _in_process(i, barrier, results, schema, work)


# -- schema and migrations -------------------------------------------------------------------


async def test_schema_is_created_and_versioned(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        assert await backend.get_run("nothing") is None
    tables = {row[0] for row in raw(schema, "SELECT tablename FROM pg_tables WHERE schemaname = %s", [schema])}
    assert tables == {"pyworkflow_migrations", "runs", "events", "messages", "timers", "leases", "schedules"}
    versions = raw(schema, "SELECT version, applied_at FROM {s}.pyworkflow_migrations")
    assert [v for v, _ in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert all(isinstance(applied, datetime) for _, applied in versions)
    async with PostgresStorageBackend(URL, schema=schema) as again:  # up to date: nothing reapplied
        assert await again.get_run("nothing") is None
    assert len(raw(schema, "SELECT version FROM {s}.pyworkflow_migrations")) == SCHEMA_VERSION


async def test_concurrent_first_use_migrates_once(schema: str) -> None:
    backends = [PostgresStorageBackend(URL, schema=schema) for _ in range(8)]
    try:
        runs = await asyncio.gather(*(new_run(b) for b in backends))
    finally:
        await asyncio.gather(*(b.close() for b in backends))
    assert len({r.run_id for r in runs}) == 8
    versions = raw(schema, "SELECT version FROM {s}.pyworkflow_migrations ORDER BY version")
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_newer_schema_version_is_refused(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        await new_run(backend)
    raw(schema, "INSERT INTO {s}.pyworkflow_migrations (version) VALUES (%s)", [SCHEMA_VERSION + 998])
    newer = SCHEMA_VERSION + 998
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        for _ in range(2):  # a failed open is retried, and fails the same way
            with pytest.raises(ConfigurationError, match=rf"version {newer}, newer than this PyWorkflow") as info:
                await backend.get_run("any")
            assert "Upgrade pyworkflow" in str(info.value)


# -- URLs and passwords ----------------------------------------------------------------------


def test_password_never_in_url_or_repr() -> None:
    forms = [
        f"postgresql://alice:{SECRET}@db.example:5432/app",
        f"postgres://alice:{SECRET}@[::1]:5432/app?sslmode=require",
        f"postgresql://alice@db.example/app?password={SECRET}&sslmode=disable",
        f"host=db.example user=alice password={SECRET} dbname=app",
        f"host=db.example user=alice password='{SECRET} x' dbname=app",
    ]
    for form in forms:
        backend = PostgresStorageBackend(form)
        assert SECRET not in backend.url and SECRET not in repr(backend), form
        assert "***" in backend.url
    with pytest.raises(ConfigurationError) as info:
        PostgresStorageBackend(f"host=db.example password={SECRET} junk")
    assert SECRET not in str(info.value) and info.value.__cause__ is None


async def test_password_never_logged(schema: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = URL.replace("postgres@", f"postgres:{SECRET}@", 1)  # trust auth: the password is not checked
    assert SECRET in url
    async with PostgresStorageBackend(url, schema=schema) as backend:
        await new_run(backend)
        assert "applied PyWorkflow schema migration" in caplog.text  # something was logged
    wrong_db = url.rsplit("/", 1)[0] + f"/pw_no_such_db_{uuid.uuid4().hex[:6]}"
    async with PostgresStorageBackend(wrong_db, schema=schema) as backend:
        with pytest.raises(psycopg.OperationalError) as info:
            await backend.get_run("any")
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_from_url_forms() -> None:
    from pyworkflow.storage import storage_from_url

    a = PostgresStorageBackend.from_url(f"postgresql://u:{SECRET}@h:5433/db?sslmode=disable&schema=tenant_a")
    assert a.schema == "tenant_a"
    assert a.url == "postgresql://u:***@h:5433/db?sslmode=disable&schema=tenant_a"
    b = PostgresStorageBackend.from_url("postgres://u@h/db")
    assert b.schema == "pyworkflow" and b.url == "postgres://u@h/db?schema=pyworkflow"
    c = storage_from_url("postgres://u@h/db?schema=other")
    assert isinstance(c, PostgresStorageBackend) and c.schema == "other"
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        PostgresStorageBackend.from_url(f"mysql://u:{SECRET}@h/db")
    with pytest.raises(ConfigurationError, match="from_url"):
        PostgresStorageBackend("postgresql://u@h/db?schema=x")
    for bad in ("bad-name", "1abc", 'x"; DROP TABLE runs; --', "", "a" * 64):
        with pytest.raises(ConfigurationError, match="schema name"):
            PostgresStorageBackend("postgresql://u@h/db", schema=bad)
    with pytest.raises(ConfigurationError, match="schema name"):
        PostgresStorageBackend.from_url("postgresql://u@h/db?schema=no-dashes")


async def test_from_url_backend_works_in_its_schema(schema: str) -> None:
    async with PostgresStorageBackend.from_url(URL.replace("postgresql://", "postgres://") + f"?schema={schema}") as b:
        run = await new_run(b)
        assert (await b.get_run(run.run_id)) is not None
    assert raw(schema, "SELECT run_id FROM {s}.runs") == [(run.run_id,)]


def test_missing_driver_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes "import psycopg" fail
    monkeypatch.delitem(sys.modules, "pyworkflow.storage.postgres")
    with pytest.raises(ConfigurationError, match=r"pip install 'pyworkflow-celery\[postgres\]'") as info:
        importlib.import_module("pyworkflow.storage.postgres")
    assert isinstance(info.value, ImportError)


# -- data ------------------------------------------------------------------------------------


async def test_event_payloads_are_queryable_jsonb(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        run = await new_run(backend)
        await backend.append_events(
            run.run_id,
            [
                ev(2, "step.started", step="charge_card", call_id=1),
                ev(3, "step.failed", step="charge_card", call_id=1, error={"type": "Declined", "message": "no funds"}),
                ev(4, "step.failed", step="send_mail", call_id=2, error={"type": "Timeout", "message": "slow"}),
            ],
        )
    rows = raw(
        schema,
        """SELECT run_id, seq, data->'error'->>'message' FROM {s}.events
        WHERE type = 'step.failed' AND data->>'step' = 'charge_card'""",
    )
    assert rows == [(run.run_id, 3, "no funds")]
    contains = '{"error": {"type": "Timeout"}}'
    assert raw(schema, "SELECT seq FROM {s}.events WHERE data @> %s::jsonb", [contains]) == [(4,)]
    assert raw(schema, "SELECT DISTINCT pg_typeof(data)::text FROM {s}.events") == [("jsonb",)]


async def test_payloads_read_back_exactly_as_written(schema: str) -> None:
    """JSONB would sort keys and turn 1e20 into an int; replay must see what was written."""
    payload: dict[str, Any] = {"zeta": 1, "alpha": {"y": 1e20, "b": [3, 2.0]}, "mid": "x"}
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        run = await new_run(backend)
        await backend.append_events(run.run_id, [ev(2, **payload)])
        await backend.update_run(run.run_id, result=payload)
        event = (await backend.get_events(run.run_id, after_seq=1))[0]
        stored = await backend.get_run(run.run_id)
    assert event.data == payload and list(event.data) == ["zeta", "alpha", "mid"]
    assert list(event.data["alpha"]) == ["y", "b"] and isinstance(event.data["alpha"]["y"], float)
    assert stored is not None and list(stored.result) == ["zeta", "alpha", "mid"]
    assert isinstance(stored.result["alpha"]["y"], float)


async def test_corrupted_run_record_names_the_run(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        run = await new_run(backend)
        raw(schema, "UPDATE {s}.runs SET status = 'exploded' WHERE run_id = %s", [run.run_id])
        with pytest.raises(CorruptedStorageError, match=run.run_id) as info:
            await backend.get_run(run.run_id)
        assert info.value.run_id == run.run_id  # type: ignore[attr-defined]
        assert (await backend.list_runs()).runs == []  # skipped and reported
        assert await backend.list_unreadable_runs() == [run.run_id]
        raw(schema, "UPDATE {s}.runs SET status = 'pending', input = '[1, 2]' WHERE run_id = %s", [run.run_id])
        with pytest.raises(CorruptedStorageError, match=run.run_id):
            await backend.get_run(run.run_id)


async def test_corrupted_event_log_names_the_run(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        run = await new_run(backend, events=4)
        raw(schema, "UPDATE {s}.events SET body = %s WHERE seq = 2", ['{"seq": 2, "type": "x"}'])
        with pytest.raises(CorruptedStorageError, match=run.run_id):
            await backend.get_events(run.run_id)
        assert [e.seq for e in await backend.get_events(run.run_id, after_seq=2)] == [3, 4]

        raw(schema, "DELETE FROM {s}.events WHERE seq = 2")  # a hole in the log
        with pytest.raises(CorruptedStorageError, match="event seq 2 cannot be read back: found seq 3 in its place"):
            await backend.get_events(run.run_id, after_seq=1)

        raw(schema, "UPDATE {s}.runs SET last_seq = 2")  # the record lags the log
        with pytest.raises(CorruptedStorageError, match=run.run_id):
            await backend.append_events(run.run_id, [ev(3)])
        assert [e.seq for e in await backend.get_events(run.run_id, after_seq=2)] == [3, 4]


def sessions(app: str) -> int:
    """The server's sessions opened with ``application_name=app``."""
    return int(raw("public", "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app])[0][0])


def wait_until_no_sessions(app: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sessions(app) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(app) == 0, "sessions left open"


def test_one_backend_serves_every_loop_and_thread(schema: str) -> None:
    app = f"pwtest_{uuid.uuid4().hex[:8]}"
    backend = PostgresStorageBackend(f"{URL}?application_name={app}", schema=schema)  # built outside any loop
    run = asyncio.run(new_run(backend))
    assert asyncio.run(backend.get_run(run.run_id)) is not None  # a second loop, the first one closed
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        async def main() -> list[int]:
            barrier.wait(timeout=30)
            mine = await new_run(backend)
            for seq in range(2, 12):
                await backend.append_events(mine.run_id, [ev(seq, by=i)])
                await backend.post_message(mine.run_id, "signal", seq)
            got = await backend.begin_activation(mine.run_id, f"t{i}", 30, now=datetime.now(UTC))
            assert got.status == "leased" and len(got.messages) == 10
            return [e.seq for e in got.events]

        try:
            results[i] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [list(range(1, 12))] * 2
    asyncio.run(backend.close())
    wait_until_no_sessions(app)  # the pools of the four closed loops are gone too
    with pytest.raises(StorageError, match="closed"):
        asyncio.run(backend.get_run(run.run_id))


def test_close_reaches_a_loop_running_in_another_thread(schema: str) -> None:
    """The Celery runtime's shape: one loop per process, running on a daemon thread."""
    app = f"pwtest_{uuid.uuid4().hex[:8]}"
    backend = PostgresStorageBackend(f"{URL}?application_name={app}", schema=schema)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        run = asyncio.run_coroutine_threadsafe(new_run(backend), loop).result(30)
        assert sessions(app) >= 1

        async def pending_tasks() -> int:
            return len(asyncio.all_tasks()) - 1

        assert asyncio.run_coroutine_threadsafe(pending_tasks(), loop).result(30) > 0  # the pool's workers
        assert asyncio.run(backend.get_run(run.run_id)) is not None
        asyncio.run(backend.close())  # from another loop
        wait_until_no_sessions(app)
        assert asyncio.run_coroutine_threadsafe(pending_tasks(), loop).result(30) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


_EXIT_SCRIPT = """
import asyncio, sys, threading
from datetime import datetime, timezone
from pyworkflow.storage.postgres import PostgresStorageBackend
from tests.storage.test_postgres import new_run

backend = PostgresStorageBackend(sys.argv[1], schema=sys.argv[2])

async def use() -> None:
    run = await new_run(backend)
    await backend.post_message(run.run_id, "signal", 1)
    got = await backend.begin_activation(run.run_id, "w", 30, now=datetime.now(timezone.utc))
    assert got.status == "leased", got

asyncio.run(use())  # twice, each loop closed by asyncio.run
asyncio.run(use())
threads = [threading.Thread(target=asyncio.run, args=(use(),)) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
closed = asyncio.new_event_loop()  # closed without cancelling the pool's tasks
closed.run_until_complete(use())
closed.close()
running = asyncio.new_event_loop()  # the Celery runtime's loop, still running at exit
threading.Thread(target=running.run_forever, daemon=True).start()
asyncio.run_coroutine_threadsafe(use(), running).result(30)
print("done")
"""


def test_a_process_that_never_closes_the_backend_exits_quietly(schema: str) -> None:
    """No "Task was destroyed but it is pending!", no unclosed resources, no warning."""
    app = f"pwtest_{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", _EXIT_SCRIPT, f"{URL}?application_name={app}", schema],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    assert proc.stderr == ""
    wait_until_no_sessions(app)


async def test_a_version_1_schema_is_migrated_with_its_data(schema: str) -> None:
    from pyworkflow.storage.postgres_sql import MIGRATIONS

    raw(schema, "CREATE SCHEMA {s}")
    raw(
        schema,
        "CREATE TABLE {s}.pyworkflow_migrations (version integer PRIMARY KEY, applied_at timestamptz "
        "NOT NULL DEFAULT now())",
    )
    for statement in MIGRATIONS[1]:
        raw(schema, statement)
    raw(schema, "INSERT INTO {s}.pyworkflow_migrations (version) VALUES (1)")
    now = datetime.now(UTC)
    for run_id, status in (("live", "suspended"), ("done", "completed")):
        raw(
            schema,
            """INSERT INTO {s}.runs (run_id, workflow_name, status, input, created_at, updated_at, last_seq)
            VALUES (%s, 'wf', %s, '{{}}', %s, %s, 0)""",
            [run_id, status, now, now],
        )
        raw(schema, "INSERT INTO {s}.timers (run_id, wake_at) VALUES (%s, %s)", [run_id, now + timedelta(days=1)])
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        assert await backend.post_message("live", "signal", 1) == "live:1"
        assert (await backend.get_timer("live")).wake_at <= datetime.now(UTC)  # type: ignore[union-attr]
        assert await backend.get_timer("done") is None  # a finished run has no timer
    versions = raw(schema, "SELECT version FROM {s}.pyworkflow_migrations ORDER BY version")
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_migration_4_names_the_parents_of_existing_child_runs(schema: str) -> None:
    from pyworkflow import run_child, workflow
    from pyworkflow.testing import LocalRuntime

    @workflow(name="pg_migration.kid")
    async def kid() -> int:
        return 1

    @workflow(name="pg_migration.parent")
    async def parent() -> int:
        return await run_child(kid)

    async with PostgresStorageBackend(URL, schema=schema) as backend:
        rt = LocalRuntime(backend)
        parent_id = await rt.start(parent)
        assert (await rt.run_until_complete(parent_id)).result == 1
        (child,) = (await backend.list_children(parent_id)).runs
    # back to schema 3, as a release before the column left it
    raw(schema, "ALTER TABLE {s}.runs DROP COLUMN parent_run_id")
    raw(schema, "DELETE FROM {s}.pyworkflow_migrations WHERE version = 4")
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        migrated = await backend.get_run(child.run_id)
        assert migrated is not None and migrated.parent_run_id == parent_id
        assert (await backend.get_run(parent_id)).parent_run_id is None  # type: ignore[union-attr]


def _forked_child_uses_inherited_backend(backend: PostgresStorageBackend, run_id: str, results: Any) -> None:
    async def main() -> int:
        try:
            await backend.append_events(run_id, [ev(2, by="child")])
            return len(await backend.get_events(run_id))
        finally:
            await backend.close()

    try:
        results.put(("ok", asyncio.run(main())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent test
        results.put(("error", repr(exc)))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_opens_its_own_pool_and_spares_the_parents(schema: str) -> None:
    """Celery prefork: a backend used before the fork must keep working on both sides."""
    backend = PostgresStorageBackend(URL, schema=schema)
    loop = asyncio.new_event_loop()
    ctx = multiprocessing.get_context("fork")
    try:
        run = loop.run_until_complete(new_run(backend))
        results = ctx.Queue()
        child = ctx.Process(target=_forked_child_uses_inherited_backend, args=(backend, run.run_id, results))
        child.start()
        assert results.get(timeout=60) == ("ok", 2)
        child.join(timeout=30)
        # The parent's pooled connection survived the child's exit.
        loop.run_until_complete(backend.append_events(run.run_id, [ev(3, by="parent")]))
        assert [e.seq for e in loop.run_until_complete(backend.get_events(run.run_id))] == [1, 2, 3]
    finally:
        loop.run_until_complete(backend.close())
        loop.close()


# -- races inside one statement's window -------------------------------------------------------
# READ COMMITTED: a statement that waits for a row lock re-reads that row when it gets it,
# but its other reads keep the snapshot taken when it started. These tests open that
# window on purpose: another writer commits while the statement waits.


async def wait_for_lock_waiter(schema: str) -> None:
    """Until a session is waiting for a lock held by the test's open transaction."""
    deadline = time.monotonic() + 10
    while not raw(schema, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
        assert time.monotonic() < deadline, "nobody waited for the lock"
        await asyncio.sleep(0.02)


async def test_a_message_committed_while_a_suspend_waits_keeps_the_run_due(schema: str) -> None:
    backend = PostgresStorageBackend(URL, schema=schema)
    async with backend:
        run = await new_run(backend)
        got = await backend.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))
        assert got.status == "leased" and got.lease is not None
        with psycopg.connect(URL) as poster:  # a post_message, held open before its commit
            poster.execute("SET TIME ZONE 'UTC'")
            params = {"run_id": run.run_id, "kind": "signal", "payload": "1", "key": None, "now": datetime.now(UTC)}
            poster.execute(backend._q.post_message, params)
            suspend = asyncio.ensure_future(
                backend.append_events(
                    run.run_id,
                    [ev(2, "workflow.suspended")],
                    lease_token=got.lease.token,
                    run_changes={"status": "suspended", "wake_at": datetime.now(UTC) + timedelta(days=1)},
                    release_lease=True,
                )
            )
            await wait_for_lock_waiter(schema)  # the append's snapshot cannot see the message
            poster.commit()
        await suspend
        record, timer = await backend.get_run(run.run_id), await backend.get_timer(run.run_id)
        assert [m.seq for m in await backend.get_messages(run.run_id)] == [1]
        assert record is not None and record.wake_at is not None and record.wake_at <= datetime.now(UTC)
        assert timer is not None and timer.wake_at <= datetime.now(UTC)


async def test_an_activation_reads_what_the_previous_holder_committed_while_it_waited(schema: str) -> None:
    async with PostgresStorageBackend(URL, schema=schema) as backend:
        run = await new_run(backend)
        first = await backend.begin_activation(run.run_id, "a", 30, now=datetime.now(UTC))
        assert first.status == "leased" and first.lease is not None
        with psycopg.connect(URL) as holder:  # the holder's last append, held open before its commit
            holder.execute(
                sql.SQL("DELETE FROM {s}.leases WHERE run_id = %s").format(s=sql.Identifier(schema)), [run.run_id]
            )
            holder.execute(
                sql.SQL(
                    """INSERT INTO {s}.events (run_id, seq, type, timestamp, body) VALUES (%s, 2, 'step.completed',
                    now(), %s)"""
                ).format(s=sql.Identifier(schema)),
                [run.run_id, ev(2).to_json()],
            )
            holder.execute(
                sql.SQL("UPDATE {s}.runs SET last_seq = 2 WHERE run_id = %s").format(s=sql.Identifier(schema)),
                [run.run_id],
            )
            second = asyncio.ensure_future(backend.begin_activation(run.run_id, "b", 30, now=datetime.now(UTC)))
            await wait_for_lock_waiter(schema)
            holder.commit()
        got = await second
        assert got.status == "leased" and [e.seq for e in got.events] == [1, 2]
        assert got.lease is not None
        await backend.append_events(run.run_id, [ev(3)], lease_token=got.lease.token)


# -- races between processes -----------------------------------------------------------------


@pytest.mark.timeout(240)
def test_processes_creating_with_one_key_make_one_run(schema: str) -> None:
    # The schema does not exist yet: the 20 processes also race to create it.
    results = run_processes(_proc_create, [(schema, "order-42")] * 20)
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert raw(schema, "SELECT count(*) FROM {s}.runs") == [(1,)]
    assert raw(schema, "SELECT count(*) FROM {s}.events") == [(1,)]
    versions = raw(schema, "SELECT version FROM {s}.pyworkflow_migrations ORDER BY version")
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))


@pytest.mark.timeout(240)
def test_processes_racing_on_one_seq_have_one_winner(schema: str) -> None:
    async def setup() -> str:
        async with PostgresStorageBackend(URL, schema=schema) as backend:
            return (await new_run(backend, events=3)).run_id

    run_id = asyncio.run(setup())
    results = run_processes(_proc_append, [(schema, run_id)] * 12)
    assert results.count(True) == 1
    winner = results.index(True)
    rows = raw(schema, "SELECT seq, data->>'writer' FROM {s}.events WHERE run_id = %s ORDER BY seq", [run_id])
    assert rows == [(1, None), (2, None), (3, None), (4, str(winner)), (5, str(winner))]
    assert raw(schema, "SELECT last_seq, status FROM {s}.runs") == [(5, "running")]


@pytest.mark.timeout(240)
def test_processes_claim_each_due_timer_once(schema: str) -> None:
    now = datetime.now(UTC)

    async def setup() -> list[str]:
        async with PostgresStorageBackend(URL, schema=schema) as backend:
            runs = [await new_run(backend) for _ in range(120)]
            for i, run in enumerate(runs):
                await backend.update_run(run.run_id, wake_at=now - timedelta(milliseconds=i))
            return [r.run_id for r in runs]

    run_ids = asyncio.run(setup())
    results = run_processes(_proc_claim, [(schema, now)] * 2)
    every = [run_id for claimed in results for run_id in claimed]
    assert sorted(every) == sorted(run_ids), "each timer claimed exactly once"
    assert raw(schema, "SELECT count(*) FROM {s}.timers WHERE wake_at <= %s", [now]) == [(0,)]


async def test_options_in_the_url_survive_the_schema_parameter() -> None:
    from tests import services

    services.require_postgres()
    url = f"{services.POSTGRES_URL}?options=-c%20synchronous_commit%3Doff&schema=pwtest_opts_{uuid.uuid4().hex[:8]}"
    backend = PostgresStorageBackend.from_url(url)
    try:
        assert await backend.get_run("missing") is None
    finally:
        await backend.close()
        import psycopg

        with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')
