"""``pyworkflow runs list`` on a store of 100,000 runs: how long the first page takes.
A script, not a test: it prints Markdown.

    .venv/bin/python benchmarks/cli_list.py                        # SQLite and PostgreSQL, 100,000 runs
    .venv/bin/python benchmarks/cli_list.py --runs 5000 --storage sqlite   # a quick smoke run
    .venv/bin/python benchmarks/cli_list.py --storage postgres --keep

The goal: the first page (``--limit 50``) in at most 200 ms on SQLite and PostgreSQL,
whatever the filters, by keyset pagination on ``(created_at, run_id)`` indexes, never a
scan of the runs.

**The store.** ``--runs`` runs are written through the storage contract the way the
engine writes them: :func:`pyworkflow.engine.create_run` (the run and
``workflow.started``, by ``--concurrency`` asyncio tasks on one backend for PostgreSQL,
one task for SQLite), then, for runs that ended or wait, one ``append_events`` of their
last event(s) with the run changes an activation makes. Creation times are spread evenly
over the last 30 days (each ``create_run`` gets a clock set to its run's time). Five
workflows (``bench.cli.order`` 40 %, ``bench.cli.email``, ``bench.cli.report`` and
``bench.cli.audit`` 20 % each, and ``bench.cli.rare`` for every 1,000th run instead);
statuses, independent of the workflow, completed 80 %, suspended 10 %, failed 5 %, pending
5 %, except that audit and rare runs all completed (so ``--status failed --workflow
bench.cli.audit`` matches none of 20,000 runs: the worst case for an index on one column).

**What is timed**, median of ``--repeat`` (5) after one untimed call:

1. *query*: :func:`pyworkflow.cli.runs.list_page` (what the command calls) on a backend
   already in use, for each filter shape: none; ``--status``; ``--workflow``; both
   (a common pair, and pairs matching nothing); ``--since 1d``; a page 50,000 runs deep (``--cursor``).
2. *command, in-process*: ``pyworkflow.cli.main([... "runs", "list", "--limit", "50"])``
   with stdout captured: a new backend each time (connect, schema check), the query,
   decoding and the table. Human table and ``--json``.
3. *command, subprocess*: the installed ``pyworkflow`` console script, wall time, against
   ``pyworkflow --version`` (interpreter start and imports, no storage), ``python -c
   'import pyworkflow'`` and ``python -c pass`` on the same machine.

PostgreSQL's plans (``EXPLAIN (ANALYZE, BUFFERS)`` of the backend's own statement for
each shape, after ``VACUUM ANALYZE``) are printed with ``--explain``, and always for a
shape over the goal. SQLite: ``EXPLAIN QUERY PLAN`` of the same statement shapes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyworkflow import workflow  # noqa: E402
from pyworkflow.cli import main as cli_main  # noqa: E402
from pyworkflow.cli.runs import list_page  # noqa: E402
from pyworkflow.clock import VirtualClock, utcnow  # noqa: E402
from pyworkflow.engine import create_run  # noqa: E402
from pyworkflow.events import EventType, new_event  # noqa: E402
from pyworkflow.registry import get_workflow  # noqa: E402
from pyworkflow.storage import storage_from_url  # noqa: E402
from pyworkflow.storage.base import RunStatus, StorageBackend  # noqa: E402

GOAL_MS = 200.0
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SPAN = timedelta(days=30)
BIN = shutil.which("pyworkflow", path=str(Path(sys.executable).parent))


@workflow(name="bench.cli.order")
async def order(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


@workflow(name="bench.cli.email")
async def email(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


@workflow(name="bench.cli.report")
async def report(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


@workflow(name="bench.cli.audit")
async def audit(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


@workflow(name="bench.cli.rare")
async def rare(order_id: int) -> dict[str, Any]:
    return {"order": order_id}


def workflow_of(i: int) -> str:
    if i % 1000 == 999:
        return "bench.cli.rare"
    return ("bench.cli.order", "bench.cli.order", "bench.cli.email", "bench.cli.report", "bench.cli.audit")[i % 5]


def status_of(i: int) -> RunStatus:
    if i % 5 == 4:  # audit and rare runs always complete: a large set that no other status meets
        return RunStatus.COMPLETED
    slot = (i // 5) % 20  # independent of the other workflows (i % 5)
    if slot == 0:
        return RunStatus.FAILED
    if slot in (1, 2):
        return RunStatus.SUSPENDED
    if slot == 3:
        return RunStatus.PENDING
    return RunStatus.COMPLETED


# -- population ------------------------------------------------------------------------------


async def make_run(storage: StorageBackend, i: int, count: int, now: datetime) -> None:
    """Run ``i`` of ``count``: created at its place in the 30 days, ended or waiting as an
    activation leaves it."""
    created = now - SPAN + SPAN * (i / count)
    definition = get_workflow(workflow_of(i))
    run, _ = await create_run(storage, definition, (i,), {}, clock=VirtualClock(created))
    status = status_of(i)
    at = created + timedelta(milliseconds=40)
    if status == RunStatus.PENDING:
        return
    if status == RunStatus.COMPLETED:
        result = {"order": i}
        events = [new_event(2, EventType.WORKFLOW_COMPLETED.value, at, {"result": result})]
        changes: dict[str, Any] = {"status": status, "result": result, "completed_at": at}
    elif status == RunStatus.FAILED:
        error = {"type": "builtins.ValueError", "message": f"order {i} refused", "traceback": "Traceback ..."}
        events = [new_event(2, EventType.WORKFLOW_FAILED.value, at, {"error": error})]
        changes = {"status": status, "error": error, "completed_at": at}
    else:
        wake = now + timedelta(days=1)
        events = [
            new_event(2, EventType.SLEEP_CREATED.value, at, {"call_id": 1, "wake_at": wake.isoformat()}),
            new_event(3, EventType.WORKFLOW_SUSPENDED.value, at, {"wake_at": wake.isoformat(), "waiting_on": [1]}),
        ]
        changes = {"status": status, "wake_at": wake}
    await storage.append_events(run.run_id, events, run_changes=changes)


async def gather_limited(count: int, concurrency: int, job: Callable[[int], Awaitable[Any]]) -> None:
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await job(i)

    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, count)))))


async def populate(storage: StorageBackend, count: int, concurrency: int) -> float:
    started = time.perf_counter()
    now = utcnow()
    await gather_limited(count, concurrency, lambda i: make_run(storage, i, count, now))
    return time.perf_counter() - started


# -- the storages ----------------------------------------------------------------------------


class Target:
    name = ""
    url = ""
    concurrency = 1

    def backend(self) -> StorageBackend:
        return storage_from_url(self.url)

    def prepare(self) -> None:
        """After the fill: what background maintenance would have done."""

    def explain(self, shape: dict[str, Any]) -> list[str]:
        return []

    def cleanup(self, keep: bool) -> str:
        raise NotImplementedError


class SQLiteTarget(Target):
    name = "SQLite"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyworkflow-cli-list-")
        self.path = os.path.join(self.dir, "runs.db")
        self.url = f"sqlite:///{self.path}"

    def explain(self, shape: dict[str, Any]) -> list[str]:
        # The statement SQLiteStorageBackend.list_runs builds for this shape.
        clauses = [f"{column} = ?" for column in ("status", "workflow_name") if shape.get(column) is not None]
        params: list[Any] = [shape[c] for c in ("status", "workflow_name") if shape.get(c) is not None]
        if shape.get("created_after") is not None:
            clauses.append("created_at > ?")
            params.append(0)
        if shape.get("cursor"):
            clauses.append("(created_at, run_id) < (?, ?)")
            params += [0, ""]
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        sql = f"SELECT run_id, record, created_at FROM runs{where} ORDER BY created_at DESC, run_id DESC LIMIT ?"
        db = sqlite3.connect(self.path)
        try:
            return [row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, (*params, 51))]
        finally:
            db.close()

    def cleanup(self, keep: bool) -> str:
        if keep:
            return f"kept {self.path}"
        shutil.rmtree(self.dir, ignore_errors=True)
        return f"removed {self.dir}"


class PostgresTarget(Target):
    name = "PostgreSQL"

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.schema = f"bench_cli_{secrets.token_hex(4)}"
        self.url = f"{base_url}{'&' if '?' in base_url else '?'}schema={self.schema}"
        self.concurrency = concurrency

    def backend(self) -> StorageBackend:
        from pyworkflow.storage.postgres import PostgresStorageBackend

        return PostgresStorageBackend(self.base_url, schema=self.schema, max_size=max(10, self.concurrency))

    def prepare(self) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'VACUUM (ANALYZE) "{self.schema}".runs')

    def explain(self, shape: dict[str, Any]) -> list[str]:
        """The plan of the backend's own statement for this shape (its private SQL module:
        a diagnostic, not an interface)."""
        import psycopg

        from pyworkflow.storage import postgres_sql as q
        from pyworkflow.storage.base import decode_cursor

        after = decode_cursor(shape["cursor"]) if shape.get("cursor") else None
        params: dict[str, Any] = {
            "status": shape.get("status"),
            "workflow_name": shape.get("workflow_name"),
            "created_after": shape.get("created_after"),
            "created_before": None,
            "cursor_at": after and after[0],
            "cursor_id": after and after[1],
            "limit": 51,
        }
        given = tuple(params[name] is not None for name, _ in q.LIST_FILTERS)
        statement = q.list_statement(self.schema, given)
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            rows = conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + statement, params).fetchall()  # type: ignore[operator]
        return [row[0] for row in rows]

    def cleanup(self, keep: bool) -> str:
        if keep:
            return f"kept schema {self.schema} ({self.url})"
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        return f"dropped schema {self.schema}"


# -- timing ----------------------------------------------------------------------------------


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def time_query(storage: StorageBackend, shape: dict[str, Any], repeat: int) -> tuple[float, int]:
    kwargs = {
        "status": shape.get("status"),
        "workflow": shape.get("workflow_name"),
        "since": shape.get("created_after"),
        "cursor": shape.get("cursor"),
        "limit": 50,
    }
    page = await list_page(storage, **kwargs)  # untimed: statements prepared, caches warm
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        page = await list_page(storage, **kwargs)
        samples.append(time.perf_counter() - started)
    return median_ms(samples), len(page.runs)


def time_in_process(url: str, extra: list[str], repeat: int) -> float:
    args = ["--storage", url, *extra, "runs", "list", "--limit", "50"]
    samples = []
    for i in range(repeat + 1):
        sink = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(sink):
            code = cli_main(args)
        took = time.perf_counter() - started
        assert code == 0 and sink.getvalue(), (code, sink.getvalue()[:200])
        if i:
            samples.append(took)
    return median_ms(samples)


def time_subprocess(args: list[str], repeat: int) -> float:
    assert BIN is not None, "no pyworkflow console script: pip install -e ."
    samples = []
    for i in range(repeat + 1):
        started = time.perf_counter()
        proc = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120)
        took = time.perf_counter() - started
        assert proc.returncode == 0, proc.stderr
        if i:
            samples.append(took)
    return median_ms(samples)


def time_python(code: str, repeat: int) -> float:
    samples = []
    for i in range(repeat + 1):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
        if i:
            samples.append(time.perf_counter() - started)
    return median_ms(samples)


async def shapes_of(storage: StorageBackend, count: int) -> list[tuple[str, dict[str, Any]]]:
    deep: str | None = None
    page = await storage.list_runs(limit=min(50_000, count // 2))
    deep = page.next_cursor
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("(no filter)", {}),
        ("--status failed", {"status": "failed"}),
        ("--status completed", {"status": "completed"}),
        ("--workflow bench.cli.report", {"workflow_name": "bench.cli.report"}),
        ("--workflow bench.cli.rare", {"workflow_name": "bench.cli.rare"}),
        ("--status failed --workflow bench.cli.report", {"status": "failed", "workflow_name": "bench.cli.report"}),
        ("--status failed --workflow bench.cli.rare (none)", {"status": "failed", "workflow_name": "bench.cli.rare"}),
        ("--status failed --workflow bench.cli.audit (none)", {"status": "failed", "workflow_name": "bench.cli.audit"}),
        ("--since 1d", {"created_after": utcnow() - timedelta(days=1)}),
        ("--since 1d --status failed", {"created_after": utcnow() - timedelta(days=1), "status": "failed"}),
    ]
    if deep:
        shapes.append((f"--cursor ({min(50_000, count // 2):,} runs deep)", {"cursor": deep}))
    return shapes


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


async def measure_queries(
    target: Target, args: argparse.Namespace
) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Fill the store, then time each shape's first page on a warm backend."""
    lines: list[str] = []
    storage = target.backend()
    try:
        took = await populate(storage, args.runs, target.concurrency)
        lines.append(f"### {target.name}: {args.runs:,} runs\n")
        lines.append(f"Filled in {took:.1f} s ({args.runs / took:,.0f} runs/s); load average {load()}.\n")
        target.prepare()
        shapes = await shapes_of(storage, args.runs)
        lines.append("| first page, warm backend (`list_page`) | runs | median ms | ≤ 200 ms |")
        lines.append("|---|---:|---:|:---:|")
        slow = []
        for label, shape in shapes:
            ms, found = await time_query(storage, shape, args.repeat)
            lines.append(
                f"| `runs list --limit 50 {label}` | {found} | {ms:.2f} | {'yes' if ms <= GOAL_MS else 'NO'} |"
            )
            if ms > GOAL_MS or args.explain:
                slow.append((label, shape))
    finally:
        await storage.close()
    lines.append("")
    return lines, slow


def bench(target: Target, args: argparse.Namespace) -> list[str]:
    lines, to_explain = asyncio.run(measure_queries(target, args))
    cold = [
        ("in-process `main([... runs list --limit 50])`, table", time_in_process(target.url, [], args.repeat)),
        ("in-process, `--json`", time_in_process(target.url, ["--json"], args.repeat)),
        (
            "subprocess `pyworkflow runs list --limit 50` (wall)",
            time_subprocess(["--storage", target.url, "runs", "list", "--limit", "50"], args.repeat),
        ),
        ("subprocess `pyworkflow --version` (start-up only)", time_subprocess(["--version"], args.repeat)),
        ("subprocess `python -c 'import pyworkflow'`", time_python("import pyworkflow", args.repeat)),
        ("subprocess `python -c pass`", time_python("pass", args.repeat)),
    ]
    lines.append("| whole command, new backend each time | median ms | ≤ 200 ms |")
    lines.append("|---|---:|:---:|")
    lines += [f"| {label} | {ms:.1f} | {'yes' if ms <= GOAL_MS else 'NO'} |" for label, ms in cold]
    lines.append("")
    for label, shape in to_explain:
        try:
            plan = target.explain(shape)
        except Exception as exc:  # noqa: BLE001 - a diagnostic only
            plan = [f"(cannot explain: {type(exc).__name__}: {exc})"]
        if plan:
            lines.append(f"Plan for `{label}`:\n")
            lines += ["    " + line for line in plan]
            lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--storage", default="sqlite,postgres", help="sqlite, postgres, or both (comma-separated)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="PostgreSQL writer tasks while filling")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--explain", action="store_true", help="print every shape's plan")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    print(f"# `pyworkflow runs list` on {args.runs:,} runs\n")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load()} at the start.\n")
    for name in args.storage.split(","):
        target: Target = SQLiteTarget() if name.strip() == "sqlite" else PostgresTarget(args.pg_url, args.concurrency)
        try:
            print("\n".join(bench(target, args)), flush=True)
        finally:
            print(target.cleanup(args.keep) + "\n")


if __name__ == "__main__":
    main()
