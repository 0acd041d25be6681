"""Scale of sleeping runs: what 100,000 runs asleep cost the storage and the tick, and how
late 1,000 runs due at the same instant wake up. A script, not a test: it prints Markdown.

    .venv/bin/python benchmarks/scale.py                          # SQLite and PostgreSQL, 100,000 runs
    .venv/bin/python benchmarks/scale.py --runs 5000 --storage sqlite   # a quick smoke run
    .venv/bin/python benchmarks/scale.py --storage postgres --tick 0.5 --keep

PostgreSQL: ``--pg-url`` (default ``postgresql://postgres@127.0.0.1:5432/test``) with a
schema of its own (``bench_scale_<random>``), dropped at the end; SQLite: a file in a fresh
temporary directory, removed at the end. ``--keep`` leaves both behind (their names are
printed). Each storage takes a few minutes at the default size on 2 cores.

What is measured, per storage:

1. **Population.** ``--runs`` runs of the workflow ``bench.scale.sleeper`` (see
   ``benchmarks/scale_tasks.py``: ``await sleep(1 day); return "woke"``) are put to sleep
   the way a real first activation leaves them: :func:`pyworkflow.engine.create_run`
   (the run and ``workflow.started``), then one ``append_events`` of ``sleep.created`` +
   ``workflow.suspended`` with ``run_changes={"status": "suspended", "wake_at": now + 1
   day}`` (a real activation writes the same events and final record in two appends,
   under a lease; ``workflow.resumed`` is only written on wake-up). PostgreSQL is filled
   by ``--concurrency`` asyncio tasks sharing one backend (its pool sized to match);
   SQLite by one task (its calls run on the loop's thread, so more tasks would only
   take turns). Reported: runs/s and the storage's bytes per run -- SQLite: database
   file + WAL after ``PRAGMA wal_checkpoint(TRUNCATE)``, divided by the runs; PostgreSQL:
   ``pg_total_relation_size`` (heap, indexes, TOAST) summed over the schema's tables,
   divided by the runs (dead row versions of not yet vacuumed updates included, as a
   live server would hold them).

2. **Tick cost vs runs asleep.** The storage work of one :meth:`CeleryRuntime.tick
   <pyworkflow.celery.runtime.CeleryRuntime.tick>` with nothing due:
   ``recover_expired_leases(limit=500)`` + ``list_runs(status="pending",
   created_before=now - 30 s, limit=500)`` + ``claim_due_timers(now, limit=500)`` until a
   batch comes back short, timed ``--ticks`` (50) times back to back (after 6 untimed ones:
   steady state, statements prepared) when 0, ``runs``/10, ``runs``/2 and ``runs`` runs are
   asleep. The tick uses a backend object of its own built from the URL with default
   settings (in a deployment it runs in another process than the code starting runs). A
   flat median is the claim of only due timers through the ``(wake_at, run_id)`` index.
   PostgreSQL gets one more row, the same tables after ``VACUUM (ANALYZE)``: every run
   passed through status "pending", and until a vacuum removes those dead row versions
   ``list_runs(status="pending")`` steps over their index entries (a cost of churn, not of
   runs asleep; autovacuum removes them in a deployment, and the report prints whether
   the server's autovacuum is on).

3. **Wake lateness.** ``--due`` (1,000) more sleepers are created whose sleep ends at one
   instant T (a few seconds ahead, so they are all written before T), among the runs
   already asleep. A tick loop like ``CeleryRuntime.tick`` then runs every ``--tick``
   seconds (a beat schedule at fixed times ``T + --tick-offset + k * --tick``; the default
   offset of -20 ms is the worst phase short of scheduling jitter: one tick just misses T,
   so the wake-up waits for the next; the report says how far before T that tick's
   claim really ran). Each tick does the storage work above and "enqueues" every claimed timer:
   the claim time (``time.time()``) is recorded and the run id is put on a
   ``multiprocessing`` queue read by ``--workers`` (2) worker processes, each running
   :func:`pyworkflow.engine.activate` on one run at a time (like a Celery prefork worker
   with ``-c 2``). Reported: lateness of the claim (claim time - T) and lateness of the
   end of the run's real activation (completed: it replays the sleep, finds it over,
   appends ``workflow.resumed``, ``sleep.completed`` and ``workflow.completed``), p50 /
   p99 / max over the runs. The claim's p99 should stay within one tick period + 100 ms;
   the activation's p99 is set by activation throughput (1,000 activations on two
   processes, on however many cores the machine really gives them), not by the tick.
   The "enqueue" here is a local queue put; a real ``send_task`` to a broker costs more
   per timer.

On a shared machine read the figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import platform
import queue
import secrets
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import scale_tasks  # noqa: E402 - registers the workflow
from pyworkflow.clock import utcnow  # noqa: E402
from pyworkflow.engine import create_run  # noqa: E402
from pyworkflow.events import EventType, new_event  # noqa: E402
from pyworkflow.registry import get_workflow  # noqa: E402
from pyworkflow.storage import storage_from_url  # noqa: E402
from pyworkflow.storage.base import RunStatus, StorageBackend  # noqa: E402

BATCH = 500  # CeleryRuntime.tick's batch
REDELIVER_AFTER = 30.0  # CeleryRuntime._redeliver_after with the default lease ttl
START_GUARD = 30.0  # list_runs(created_before=now - this): the runtime's default start guard
ONE_DAY = timedelta(days=1)
WARM_TICKS = 6  # untimed ticks first: psycopg prepares a statement on its 5th run on a connection
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


# -- helpers ---------------------------------------------------------------------------------


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {load()}"


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 1,000 values is the 990th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


async def gather_limited(count: int, concurrency: int, job: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``job(0) … job(count - 1)`` on ``concurrency`` tasks; results in index order."""
    results: list[Any] = [None] * count
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            results[i] = await job(i)

    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, count)))))
    return results


# -- the storages ----------------------------------------------------------------------------


class Target:
    """One storage under test: builds the backend, measures its size, cleans up."""

    name: str
    url: str  # for the worker processes
    concurrency: int

    def backend(self) -> StorageBackend:
        raise NotImplementedError

    def size(self) -> tuple[int, str]:
        """Bytes stored, and how they were counted."""
        raise NotImplementedError

    def cleanup(self, keep: bool) -> str:
        raise NotImplementedError

    def vacuum(self) -> str | None:
        """What a background maintenance pass would do (PostgreSQL: VACUUM ANALYZE);
        ``None`` when the storage needs none."""
        return None

    def notes(self) -> str:
        return ""


class SQLiteTarget(Target):
    name = "sqlite"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyworkflow-scale-")
        self.path = os.path.join(self.dir, "scale.db")
        self.url = f"sqlite:///{self.path}"  # absolute path: four slashes
        self.concurrency = 1

    def backend(self) -> StorageBackend:
        from pyworkflow.storage.sqlite import SQLiteStorageBackend

        return SQLiteStorageBackend(self.path)

    def size(self) -> tuple[int, str]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.close()
        main = os.path.getsize(self.path)
        wal = os.path.getsize(self.path + "-wal") if os.path.exists(self.path + "-wal") else 0
        return main + wal, f"file {main / 1e6:.1f} MB + WAL {wal / 1e6:.1f} MB"

    def cleanup(self, keep: bool) -> str:
        if keep:
            return f"kept {self.path}"
        shutil.rmtree(self.dir, ignore_errors=True)
        return f"removed {self.dir}"


class PostgresTarget(Target):
    name = "postgres"

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.schema = f"bench_scale_{secrets.token_hex(4)}"
        sep = "&" if "?" in base_url else "?"
        self.url = f"{base_url}{sep}schema={self.schema}"
        self.concurrency = concurrency

    def backend(self) -> StorageBackend:
        from pyworkflow.storage.postgres import PostgresStorageBackend

        return PostgresStorageBackend(self.base_url, schema=self.schema, max_size=max(10, self.concurrency))

    def _execute(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchone() if cursor.description else None

    def size(self) -> tuple[int, str]:
        row = self._execute(
            """SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0),
                      coalesce(sum(pg_relation_size(c.oid)), 0)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind = 'r'""",
            (self.schema,),
        )
        total, heap = int(row[0]), int(row[1])
        return total, f"heaps {heap / 1e6:.1f} MB + indexes/TOAST {(total - heap) / 1e6:.1f} MB"

    def vacuum(self) -> str | None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            tables = conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r'",
                (self.schema,),
            ).fetchall()
            for (table,) in tables:
                conn.execute(f'VACUUM (ANALYZE) "{self.schema}"."{table}"')
        return "VACUUM (ANALYZE)"

    def notes(self) -> str:
        row = self._execute("SELECT current_setting('server_version'), current_setting('autovacuum')")
        return f"PostgreSQL {row[0]}, autovacuum {row[1]}"

    def cleanup(self, keep: bool) -> str:
        if keep:
            return f"kept schema {self.schema} ({self.url})"
        self._execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        return f"dropped schema {self.schema}"


# -- 1. population ---------------------------------------------------------------------------


async def make_sleeper(storage: StorageBackend, wake: datetime) -> str:
    """A run asleep until ``wake``, as its first activation leaves it."""
    definition = get_workflow(scale_tasks.WORKFLOW)
    now = utcnow()
    run, _ = await create_run(storage, definition, (round((wake - now).total_seconds(), 3),), {})
    iso = wake.isoformat()
    now = utcnow()
    await storage.append_events(
        run.run_id,
        [
            new_event(2, EventType.SLEEP_CREATED.value, now, {"call_id": 1, "wake_at": iso}),
            new_event(3, EventType.WORKFLOW_SUSPENDED.value, now, {"wake_at": iso, "waiting_on": [1]}),
        ],
        run_changes={"status": RunStatus.SUSPENDED, "wake_at": wake},
    )
    return run.run_id


@dataclass
class Stage:
    asleep: int
    label: str = ""
    populate_s: float = 0.0
    populate_cpu: float = 0.0
    added: int = 0
    size: int = 0
    size_detail: str = ""
    ticks: list[tuple[float, float, float, float]] = field(default_factory=list)
    load: str = ""


async def populate(storage: StorageBackend, count: int, concurrency: int) -> tuple[float, float]:
    """Put ``count`` runs to sleep for a day; return (wall s, process CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    await gather_limited(count, concurrency, lambda _: make_sleeper(storage, utcnow() + ONE_DAY))
    return time.perf_counter() - wall, time.process_time() - cpu


# -- 2. tick cost ----------------------------------------------------------------------------


async def tick_storage_work(
    storage: StorageBackend, on_claim: Callable[[str], None] | None = None, claim_at: list[float] | None = None
) -> tuple[float, float, float, float, int]:
    """The storage work of one CeleryRuntime.tick; (total, recover, list, claim) seconds
    and the number of timers claimed. ``claim_at`` gets the wall time of the first claim."""
    t0 = time.perf_counter()
    await storage.recover_expired_leases(limit=BATCH)
    t1 = time.perf_counter()
    await storage.list_runs(status=RunStatus.PENDING, created_before=utcnow() - timedelta(seconds=START_GUARD),
                            limit=BATCH)  # fmt: skip
    t2 = time.perf_counter()
    if claim_at is not None:
        claim_at.append(time.time())
    claimed = 0
    while True:
        timers = await storage.claim_due_timers(utcnow(), limit=BATCH, redeliver_after=REDELIVER_AFTER)
        if on_claim is not None:
            for timer in timers:
                on_claim(timer.run_id)
        claimed += len(timers)
        if len(timers) < BATCH:
            break
    t3 = time.perf_counter()
    return t3 - t0, t1 - t0, t2 - t1, t3 - t2, claimed


async def time_ticks(storage: StorageBackend, count: int) -> list[tuple[float, float, float, float]]:
    for _ in range(WARM_TICKS):
        await tick_storage_work(storage)
    samples = []
    for _ in range(count):
        total, recover, listed, claim, claimed = await tick_storage_work(storage)
        if claimed:
            raise RuntimeError(f"a tick claimed {claimed} timers while nothing was due: the benchmark is broken")
        samples.append((total, recover, listed, claim))
    return samples


# -- 3. wake lateness ------------------------------------------------------------------------


@dataclass
class Lateness:
    due: int
    tick: float
    offset: float
    lead: float
    claims: list[float]
    ends: list[float]
    statuses: dict[str, int]
    ticks_with_claims: int
    first_claim_to_last_end: float
    load: str
    miss: float  # the last claim query before T, seconds before T (how close the worst phase got)


class Results(threading.Thread):
    """Reads the workers' reports off their queue while the tick loop runs."""

    def __init__(self, outbox: Any) -> None:
        super().__init__(daemon=True)
        self.outbox = outbox
        self.ready: list[int] = []
        self.done: dict[str, tuple[float, str]] = {}  # run id -> (end time, status), first report
        self.reports = 0
        self.stop = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                kind, ident, at, status = self.outbox.get(timeout=0.2)
            except queue.Empty:
                continue
            with self.changed:
                if kind == "ready":
                    self.ready.append(int(ident))
                else:
                    self.reports += 1
                    self.done.setdefault(ident, (at, status))
                self.changed.notify_all()

    def count(self, run_ids: set[str]) -> int:
        with self.changed:
            return len(self.done.keys() & run_ids)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


async def lateness(
    target: Target,
    storage: StorageBackend,
    ticker: StorageBackend,
    *,
    due: int,
    tick: float,
    offset: float,
    workers: int,
    rate: float,
) -> Lateness:
    ctx = mp.get_context("spawn")  # fresh interpreters: nothing of this process's connections
    inbox, outbox = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=scale_tasks.worker_main, args=(target.url, inbox, outbox), daemon=True)
             for _ in range(workers)]  # fmt: skip
    results = Results(outbox)
    results.start()
    for proc in procs:
        proc.start()
    try:
        await asyncio.to_thread(results.wait_for, lambda: len(results.ready) == workers, 120, "the workers to start")
        # Warm-up: a few runs due now, activated by the workers straight away (first-call
        # costs out of the way, and proof that the workflow completes).
        warm = await gather_limited(4 * workers, target.concurrency, lambda _: make_sleeper(storage, utcnow()))
        for run_id in warm:
            inbox.put(run_id)
        await asyncio.to_thread(results.wait_for, lambda: all(r in results.done for r in warm), 120, "the warm-up")
        bad = {results.done[r][1] for r in warm} - {"completed"}
        if bad:
            raise RuntimeError(f"warm-up activations did not complete: {bad}")
        results.done.clear()

        # T: far enough ahead that all the sleepers are written before it.
        lead = max(3.0, 3 * due / rate + 1.0)
        wake = utcnow() + timedelta(seconds=lead)
        due_ids = set(await gather_limited(due, target.concurrency, lambda _: make_sleeper(storage, wake)))
        wake_s = wake.timestamp()
        spare = wake_s - time.time()
        if spare < 0:
            print(f"\nWARNING: the due sleepers were written {-spare:.2f} s after T; lateness is overstated\n")

        claims: dict[str, float] = {}

        def enqueue(run_id: str) -> None:
            if run_id not in claims:  # a re-claim (redelivery) is not a wake-up
                claims[run_id] = time.time()
            inbox.put(run_id)

        first = wake_s + offset
        beat = first + math.ceil((time.time() - first) / tick) * tick  # the next slot of the schedule
        deadline = wake_s + max(120.0, due * 0.5)
        ticks_with_claims = 0
        claim_at: list[float] = []
        while len(claims) < due or results.count(due_ids) < due:
            if time.time() > deadline:
                raise RuntimeError(f"gave up: {len(claims)} claimed, {len(results.done)} activated by the deadline")
            await asyncio.sleep(max(0.0, beat - time.time()))
            *_, claimed = await tick_storage_work(ticker, enqueue, claim_at)
            ticks_with_claims += bool(claimed)
            beat += tick
            if beat < time.time():  # a tick longer than the period: the next beat is now
                beat = time.time()
        for _ in procs:
            inbox.put(None)
        stray = claims.keys() - due_ids
        if stray:
            raise RuntimeError(f"claimed {len(stray)} timers that were not due (e.g. {sorted(stray)[:3]})")
        statuses: dict[str, int] = {}
        for run_id in due_ids:
            status = results.done[run_id][1]
            statuses[status] = statuses.get(status, 0) + 1
        ends = [results.done[r][0] - wake_s for r in due_ids]
        return Lateness(
            due=due,
            tick=tick,
            offset=offset,
            lead=spare,
            claims=[claims[r] - wake_s for r in due_ids],
            ends=ends,
            statuses=statuses,
            ticks_with_claims=ticks_with_claims,
            first_claim_to_last_end=max(ends) - min(claims.values()) + wake_s,
            load=load(),
            miss=wake_s - max((t for t in claim_at if t < wake_s), default=math.nan),
        )
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()  # our own child, by its handle
                proc.join(timeout=5)
        results.stop.set()
        results.join(timeout=2)
        inbox.close()
        outbox.close()


# -- one storage -----------------------------------------------------------------------------


async def bench(target: Target, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    storage = target.backend()
    # The tick runs in a process of its own in a deployment (a Celery worker): a second
    # backend object, built from the URL with default settings, like the workers'.
    ticker = storage_from_url(target.url)
    stages = sorted({0, args.runs // 10, args.runs // 2, args.runs})
    report: list[Stage] = []
    try:
        await storage.get_run("warm-up")  # schema / migrations
        await ticker.get_run("warm-up")
        asleep = 0
        for goal in stages:
            stage = Stage(asleep=goal)
            if goal > asleep:
                stage.added = goal - asleep
                stage.populate_s, stage.populate_cpu = await populate(storage, goal - asleep, target.concurrency)
                asleep = goal
                stage.size, stage.size_detail = target.size()
                print(f"  {target.name}: {asleep:,} asleep ({stage.added / stage.populate_s:,.0f} runs/s)", flush=True)
            stage.ticks = await time_ticks(ticker, args.ticks)
            stage.load = load()
            report.append(stage)
        # The row above on PostgreSQL includes every run's old "pending" version, dead in
        # the heap and its indexes until a vacuum: list_runs(pending) steps over those
        # index entries. This row is the same tables after the vacuum autovacuum would do.
        vacuumed = target.vacuum()
        if vacuumed:
            stage = Stage(asleep=asleep, label=f"{asleep:,} after {vacuumed}")
            stage.size, stage.size_detail = target.size()
            stage.ticks = await time_ticks(ticker, args.ticks)
            stage.load = load()
            report.append(stage)
        late = await lateness(
            target, storage, ticker, due=args.due, tick=args.tick, offset=args.tick_offset, workers=args.workers,
            rate=sum(s.added for s in report) / max(sum(s.populate_s for s in report), 1e-9),
        )  # fmt: skip
    finally:
        await ticker.close()
        await storage.close()
        cleanup = target.cleanup(args.keep)
    wall = time.perf_counter() - started
    print_report(target, args, report, late, wall, cleanup)


def print_report(target: Target, args: argparse.Namespace, stages: list[Stage], late: Lateness, wall: float,
                 cleanup: str) -> None:  # fmt: skip
    added = sum(s.added for s in stages)
    pop_s = sum(s.populate_s for s in stages)
    pop_cpu = sum(s.populate_cpu for s in stages)
    last = next(s for s in reversed(stages) if not s.label)
    notes = target.notes()
    print(f"\n### {target.name}: {args.runs:,} runs asleep\n")
    if notes:
        print(f"{notes}\n")
    lanes = f"{target.concurrency} asyncio tasks on one backend" if target.concurrency > 1 else "1 task"
    print(table(
        ["population", "runs", "wall (s)", "runs/s", "writers", "main-process CPU share", "bytes/run", "stored"],
        [[
            "create_run + append_events (sleep 1 day)", f"{added:,}", f"{pop_s:.1f}", f"{added / pop_s:,.0f}", lanes,
            f"{pop_cpu / pop_s:.2f}", f"{last.size / max(last.asleep, 1):,.0f}",
            f"{last.size / 1e6:.1f} MB ({last.size_detail})",
        ]],
    ))  # fmt: skip
    print(f"\nTick storage work with nothing due ({args.ticks} ticks back to back per row; µs):\n")
    rows = []
    for s in stages:
        totals = [t[0] for t in s.ticks]
        rows.append([
            s.label or f"{s.asleep:,}", us(statistics.median(totals)), us(quantile(totals, 0.9)), us(max(totals)),
            us(statistics.median(t[1] for t in s.ticks)), us(statistics.median(t[2] for t in s.ticks)),
            us(statistics.median(t[3] for t in s.ticks)),
            f"{s.size / s.asleep:,.0f}" if s.asleep else "-",
            f"{s.added / s.populate_s:,.0f}" if s.added else "-", s.load,
        ])  # fmt: skip
    print(table(
        ["runs asleep", "tick median", "tick p90", "tick max", "recover_expired_leases", "list_runs(pending)",
         "claim_due_timers", "bytes/run", "populate runs/s (this step)", "load avg"],
        rows,
    ))  # fmt: skip
    phase = f"beat at T{late.offset * 1000:+.0f} ms + k x {late.tick:g} s"
    if late.miss == late.miss:  # not NaN
        phase += f"; the last claim before T queried {late.miss * 1000:.1f} ms before T"
    print(
        f"\nWake lateness: {late.due:,} runs due at one instant T among {last.asleep:,} asleep; a tick every "
        f"{late.tick:g} s ({phase}); {args.workers} worker processes running engine.activate (ms after T):\n"
    )
    print(table(
        ["lateness", "claimed by the tick (enqueued)", "activation finished (run completed)"],
        [
            ["p50", ms(quantile(late.claims, 0.5)), ms(quantile(late.ends, 0.5))],
            ["p99", ms(quantile(late.claims, 0.99)), ms(quantile(late.ends, 0.99))],
            ["max", ms(max(late.claims)), ms(max(late.ends))],
        ],
    ))  # fmt: skip
    p99 = quantile(late.claims, 0.99)
    verdict = "met" if p99 <= late.tick + 0.1 else "NOT met"
    rate = late.due / late.first_claim_to_last_end if late.first_claim_to_last_end > 0 else float("nan")
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(late.statuses.items()))
    print(
        f"\n- claim p99 {ms(p99)} ms vs target tick + 100 ms = {ms(late.tick + 0.1)} ms: {verdict}; claimed in "
        f"{late.ticks_with_claims} tick(s); the sleepers were written {late.lead:.1f} s before T."
        f"\n- activations: {statuses}; {rate:,.0f} activations/s from the first claim to the last completion on "
        f"{args.workers} processes ({os.cpu_count()} CPUs, load average {late.load}): the activation p99 is "
        f"bounded by that throughput (~{late.due / rate:.1f} s for {late.due:,}), not by the tick."
        f"\n- {target.name} total wall time {wall:.0f} s; {cleanup}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs asleep (default 100,000)")
    parser.add_argument("--storage", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--tick", type=float, default=1.0, help="tick period in seconds (default 1.0)")
    parser.add_argument("--tick-offset", type=float, default=-0.02,
                        help="beat at T + offset + k*tick; default -0.02: a tick just misses T")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file / PostgreSQL schema")
    parser.add_argument("--due", type=int, default=1000, help="runs due at the same instant (default 1,000)")
    parser.add_argument("--ticks", type=int, default=50, help="ticks timed per row of the tick table (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="activation worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="PostgreSQL writer tasks (default 16)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"PostgreSQL (default {DEFAULT_PG_URL})")
    args = parser.parse_args()
    if args.runs < 10 or args.tick <= 0 or args.due < 1 or args.workers < 1 or not -args.tick < args.tick_offset <= 0:
        parser.error("need --runs >= 10, --tick > 0, --due >= 1, --workers >= 1 and -tick < --tick-offset <= 0")
    names = [n.strip() for n in args.storage.split(",") if n.strip()]
    unknown = set(names) - {"sqlite", "postgres"}
    if unknown or not names:
        parser.error(f"--storage takes sqlite and/or postgres, got {args.storage!r}")

    print(f"`{shlex.join([Path(sys.executable).name, *sys.argv])}`  ")
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}  ")
    print(f"uptime at start: {uptime()}", flush=True)
    for name in names:
        target: Target = SQLiteTarget() if name == "sqlite" else PostgresTarget(args.pg_url, args.concurrency)
        try:
            asyncio.run(bench(target, args))
        except KeyboardInterrupt:
            target.cleanup(args.keep)
            raise
        except Exception as exc:  # noqa: BLE001 - report and go on with the next storage
            print(f"\n### {name}: FAILED: {type(exc).__name__}: {exc}")
            try:
                print(target.cleanup(args.keep))
            except Exception as cleanup_exc:  # noqa: BLE001
                print(f"cleanup failed: {cleanup_exc}")
        sys.stdout.flush()
    print(f"\nuptime at end: {uptime()}")


if __name__ == "__main__":
    main()
