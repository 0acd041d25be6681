"""Schedules under load: 1,000 schedules due in the same second, and the cost of a tick
when 10,000 schedules are stored and none is due. A script, not a test: it prints Markdown.

    .venv/bin/python benchmarks/schedules.py                                   # all backends, 1,000 schedules, 3 rounds
    .venv/bin/python benchmarks/schedules.py --backends sqlite --schedules 100 --rounds 1 --idle-sizes 0,100
    .venv/bin/python benchmarks/schedules.py --backends postgres,redis --pg-url postgresql://postgres@127.0.0.1:5432/test

Backends: ``memory`` (a reference: no I/O), ``sqlite`` (a file in a temp dir), ``postgres``
(``--pg-url``, a fresh ``bench_sched_<random>`` schema per store, dropped at the end) and
``redis`` (``--redis-url``, db 15 by default, a fresh ``bench-sched-<random>`` key prefix
per store, its keys deleted at the end). Each is built with ``storage_from_url`` as a
worker builds it (so PostgreSQL has its default pool of 10 connections). Every
measurement below uses a new store.

1. Many schedules due at once
=============================
``--schedules`` (1,000) schedules of a trivial workflow (``bench.schedules.noop``), all
``every="1h"``, are created with ``create_schedule_async`` (16 at a time) on a
``VirtualClock`` a few minutes before the hour T, so their next slot is T for all. Then a
``Firing(storage, launch=record, start_guard=30.0, clock=VirtualClock(T + 1 ms))`` calls
``fire_due(limit=--limit)`` (500, what the Celery tick passes) in a loop, without pause,
until a call starts nothing; ``record`` (the launch) notes ``time.perf_counter()`` per run
id, where the Celery runtime sends the run's first activation.

* *fire all*: wall seconds from the start of the first ``fire_due`` to the end of the
  last one that started runs; *calls*: the ``fire_due`` calls that started runs. The
  runs started (the sum of what ``fire_due`` returned, and the distinct run ids
  launched) must equal ``--schedules``, and nothing may be due afterwards: asserted.
* *lateness*: for each run, its launch time minus the start of the first ``fire_due``
  (p50, p99, max). Note that the Celery tick calls ``fire_due`` once per beat (1 s): with
  more due schedules than ``--limit``, the second batch waits for the next beat, about
  1 s later, on top of what is measured here (the loop here calls again at once;
  ``--beat 1`` spaces the calls 1 s apart from the first, as beat does).
* *baseline*: on the same store, ``--schedules`` plain runs, each
  ``create_run(storage, definition, args, kwargs, start_guard=30.0)`` then the same launch,
  16 at a time (``firing.CONCURRENCY``): what starting the runs costs without schedules.
  *overhead/run* = (fire all - baseline) / runs: what the schedule adds per run (reading
  the due index, decoding the body, the slot's idempotency key, the compare-and-set of
  the schedule's new state).

Medians over ``--rounds`` (3) rounds, each on a new store.

2. A tick with many schedules stored, none due
==============================================
Schedules whose next slot is far ahead (cron ``0 0 1 1 *``, next 1 January) are stored,
then one ``Firing(...).fire_due()`` call (limit 500) is timed ``--idle-calls`` (50) times
after one untimed call (min, median, p90; and the median at the most over the median at
the fewest), at each of ``--idle-sizes`` (0, 1,000 and 10,000) schedules
stored. The due index alone should be read, so the time should stay flat. Creating
10,000 schedules through ``create_schedule_async`` is slow on some backends, so one
schedule is created for real and the others are *copies of its stored body* with a new
``schedule_id`` (``State.from_body`` → ``schedule_id`` changed → ``State.body()``),
written with ``storage.save_schedule(id, body, state.due_at(), version=0)``, 16 at a time:
exactly what ``create_schedule_async`` would have stored.

Nothing of pyworkflow is patched; the memory backend's ``due_schedules`` is a scan by
design (its comment: it serves tests and demos), so its row is not expected to be flat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyworkflow import workflow  # noqa: E402
from pyworkflow.clock import VirtualClock, utcnow  # noqa: E402
from pyworkflow.engine import create_run  # noqa: E402
from pyworkflow.registry import get_workflow  # noqa: E402
from pyworkflow.schedules import create_schedule_async  # noqa: E402
from pyworkflow.schedules.firing import CONCURRENCY, Firing  # noqa: E402
from pyworkflow.schedules.spec import State  # noqa: E402
from pyworkflow.storage import storage_from_url  # noqa: E402
from pyworkflow.storage.base import StorageBackend  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
WORKFLOW = "bench.schedules.noop"
FAR_CRON = "0 0 1 1 *"
START_GUARD = 30.0


@workflow(name=WORKFLOW)
async def noop(n: int) -> int:
    return n


# -- the stores ------------------------------------------------------------------------------


class Store:
    """One fresh store of a backend; ``cleanup`` removes what it left."""

    label = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = ""

    def backend(self) -> StorageBackend:
        return storage_from_url(self.url)

    def cleanup(self) -> None:
        pass


class MemoryStore(Store):
    label = "memory"

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = "memory://"


class SQLiteStore(Store):
    label = "SQLite"

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyworkflow-bench-sched-")
        self.url = f"sqlite:///{os.path.join(self.dir, 'pyworkflow.db')}"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresStore(Store):
    label = "PostgreSQL"

    def __init__(self, args: argparse.Namespace) -> None:
        self.base_url = args.pg_url
        self.schema = f"bench_sched_{secrets.token_hex(4)}"
        self.url = f"{self.base_url}{'&' if '?' in self.base_url else '?'}schema={self.schema}"

    def cleanup(self) -> None:
        import psycopg

        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


class RedisStore(Store):
    label = "Redis"

    def __init__(self, args: argparse.Namespace) -> None:
        self.base_url = args.redis_url
        self.prefix = f"bench-sched-{secrets.token_hex(4)}"
        self.url = f"{self.base_url}{'&' if '?' in self.base_url else '?'}prefix={self.prefix}"

    def cleanup(self) -> None:
        import redis

        client = redis.Redis.from_url(self.base_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        finally:
            client.close()


STORES: dict[str, type[Store]] = {
    "memory": MemoryStore,
    "sqlite": SQLiteStore,
    "postgres": PostgresStore,
    "redis": RedisStore,
}


async def with_store(kind: str, args: argparse.Namespace, job: Callable[[StorageBackend], Awaitable[Any]]) -> Any:
    store = STORES[kind](args)
    try:
        storage = store.backend()
        try:
            return await job(storage)
        finally:
            await storage.close()
    finally:
        store.cleanup()


# -- helpers ---------------------------------------------------------------------------------


async def gather_limited(count: int, concurrency: int, job: Callable[[int], Awaitable[Any]]) -> None:
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await job(i)

    await asyncio.gather(*(lane() for _ in range(max(1, min(concurrency, count)))))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def next_hour(after: datetime) -> datetime:
    return after.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# -- 1. many schedules due at once -----------------------------------------------------------


@dataclass
class BurstRound:
    create_s: float
    fire_s: float
    calls: int
    p50: float
    p99: float
    worst: float
    baseline_s: float
    base_p50: float
    base_p99: float


async def burst_round(storage: StorageBackend, count: int, limit: int, beat: float) -> BurstRound:
    definition = get_workflow(WORKFLOW)
    slot = next_hour(utcnow())  # T: every schedule's next slot
    before = VirtualClock(slot - timedelta(minutes=5))
    ids = [f"burst-{i:06d}" for i in range(count)]

    started = time.perf_counter()

    async def create(i: int) -> None:
        info = await create_schedule_async(ids[i], noop, every="1h", args=(i,), storage=storage, clock=before)
        assert info.next_slot == slot, (info.next_slot, slot)

    await gather_limited(count, CONCURRENCY, create)
    create_s = time.perf_counter() - started

    # Baseline: the same number of plain runs, created and launched 16 at a time.
    base_launched: dict[str, float] = {}

    async def plain(i: int) -> None:
        run, created = await create_run(storage, definition, (i,), {}, start_guard=START_GUARD)
        assert created
        base_launched[run.run_id] = time.perf_counter()

    base_start = time.perf_counter()
    await gather_limited(count, CONCURRENCY, plain)
    baseline_s = time.perf_counter() - base_start
    assert len(base_launched) == count
    base_late = [t - base_start for t in base_launched.values()]

    # The burst: every schedule due at T, the tick just past it.
    launched: dict[str, float] = {}

    async def record(run_id: str, workflow_name: str) -> None:
        assert run_id not in launched, f"run {run_id} launched twice"
        launched[run_id] = time.perf_counter()

    clock = VirtualClock(slot + timedelta(milliseconds=1))
    firing = Firing(storage, launch=record, start_guard=START_GUARD, clock=clock)
    total = calls = 0
    first = last = time.perf_counter()
    for k in range(count // max(limit, 1) + 5):  # a bound: a schedule that keeps failing stays due
        if k and beat > 0:  # as Celery beat: one fire_due per beat
            await asyncio.sleep(max(0.0, first + k * beat - time.perf_counter()))
        n = await firing.fire_due(limit=limit)
        if n == 0:
            break
        last = time.perf_counter()
        total += n
        calls += 1
    else:
        raise AssertionError(f"fire_due still starting runs after {calls} calls")
    assert total == count, f"fire_due started {total} runs, expected {count}"
    assert len(launched) == count, f"{len(launched)} runs launched, expected {count}"
    assert not await storage.due_schedules(clock.now(), limit=1), "schedules still due after the burst"
    late = [t - first for t in launched.values()]
    return BurstRound(
        create_s=create_s,
        fire_s=last - first,
        calls=calls,
        p50=percentile(late, 50),
        p99=percentile(late, 99),
        worst=max(late),
        baseline_s=baseline_s,
        base_p50=percentile(base_late, 50),
        base_p99=percentile(base_late, 99),
    )


def burst_row(label: str, rounds: list[BurstRound], count: int) -> str:
    def med(attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in rounds))

    fire_s, base_s = med("fire_s"), med("baseline_s")
    overhead_ms = (fire_s - base_s) / count * 1000
    return (
        f"| {label} | {med('create_s'):.2f} | {fire_s:.3f} | {int(med('calls'))} | {count:,} "
        f"| {count / fire_s:,.0f} | {med('p50') * 1000:.0f} | {med('p99') * 1000:.0f} | {med('worst') * 1000:.0f} "
        f"| {base_s:.3f} | {count / base_s:,.0f} | {med('base_p99') * 1000:.0f} "
        f"| {overhead_ms:+.2f} | {fire_s / base_s:.2f}× |"
    )


BURST_HEADER = (
    "| backend | create schedules s | fire all s | calls | runs started | runs/s "
    "| lateness p50 ms | p99 ms | max ms "
    "| baseline s | baseline runs/s | baseline p99 ms | overhead ms/run | fire/baseline |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


# -- 2. a tick with none due -----------------------------------------------------------------


async def idle_ticks(storage: StorageBackend, sizes: list[int], calls: int) -> list[tuple[int, float, float, float]]:
    """For each size (ascending): fill up to it, then time ``fire_due()`` (none due)."""
    template = await create_schedule_async("idle-template", noop, cron=FAR_CRON, args=(0,), storage=storage)
    stored = await storage.get_schedule("idle-template")
    assert stored is not None
    state = State.from_body(stored.body)
    due_at = state.due_at()
    assert due_at is not None and template.next_slot is not None
    assert (due_at - utcnow()) > timedelta(hours=1), f"the far slot is too near: {due_at}"
    await storage.delete_schedule("idle-template")

    async def put(i: int) -> None:
        state.schedule_id = f"idle-{i:06d}"
        body = state.body()
        version = await storage.save_schedule(f"idle-{i:06d}", body, due_at, version=0)
        assert version is not None, f"idle-{i:06d} existed already"

    async def fill(first: int, last: int) -> None:
        await gather_limited(last - first, CONCURRENCY, lambda i: put(first + i))

    launched: list[str] = []

    async def record(run_id: str, workflow_name: str) -> None:
        launched.append(run_id)

    firing = Firing(storage, launch=record, start_guard=START_GUARD)
    have = 0
    results = []
    for size in sorted(sizes):
        # State is shared by the lanes, but body() runs without an await after setting the id.
        await fill(have, size)
        have = size
        assert await firing.fire_due() == 0  # untimed: statements prepared, caches warm
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            n = await firing.fire_due()
            samples.append(time.perf_counter() - t0)
            assert n == 0
        samples_ms = [s * 1000 for s in samples]
        results.append((size, min(samples_ms), statistics.median(samples_ms), percentile(samples_ms, 90)))
    assert not launched
    if have:
        assert await storage.get_schedule(f"idle-{have - 1:06d}") is not None
    return results


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the burst (a new store each)")
    parser.add_argument("--schedules", type=int, default=1000, help="schedules due at once (and baseline runs)")
    parser.add_argument("--limit", type=int, default=500, help="fire_due(limit=...), as the Celery tick")
    parser.add_argument(
        "--beat", type=float, default=0.0, help="seconds between fire_due calls of the burst (0: at once; 1: as beat)"
    )
    parser.add_argument("--idle-sizes", default="0,1000,10000", help="schedules stored, none due")
    parser.add_argument("--idle-calls", type=int, default=50, help="timed fire_due() calls per size")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in STORES]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(STORES)}")
    sizes = [int(s) for s in args.idle_sizes.split(",")]

    print("# Schedules under load\n")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load()} at the start.\n")

    if not args.skip_burst:
        pace = f", one call every {args.beat:g} s" if args.beat > 0 else ", each call right after the last"
        print(
            f"## {args.schedules:,} schedules due in the same second\n\n"
            f"`fire_due(limit={args.limit})` in a loop until nothing is due"
            f"{pace}; lateness = launch time - start "
            f"of the first call; baseline = {args.schedules:,} plain `create_run` + launch, {CONCURRENCY} at a "
            f"time. Medians of {args.rounds} round(s).\n",
            flush=True,
        )
        rows = []
        for kind in backends:
            rounds = []
            for r in range(args.rounds):
                result = asyncio.run(
                    with_store(kind, args, lambda s: burst_round(s, args.schedules, args.limit, args.beat))
                )
                rounds.append(result)
                print(
                    f"    {STORES[kind].label} round {r + 1}: fire {result.fire_s:.3f} s in {result.calls} call(s), "
                    f"p99 {result.p99 * 1000:.0f} ms; baseline {result.baseline_s:.3f} s; load {load()}",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append(burst_row(STORES[kind].label, rounds, args.schedules))
        if args.beat > 0:
            print(
                f"(With --beat {args.beat:g}: *fire all* includes the waits between beats, so runs/s, "
                "overhead and fire/baseline are not costs here.)\n"
            )
        print(BURST_HEADER)
        print("\n".join(rows) + "\n", flush=True)

    if not args.skip_idle:
        print(
            f"## `fire_due()` with none due, by schedules stored\n\n"
            f"Schedules on cron `{FAR_CRON}` (copies of one real schedule's body, see the docstring); "
            f"min / median / p90 of {args.idle_calls} calls after one untimed call, ms (on a busy machine the min "
            f"is the cost itself, the p90 mostly the machine's noise).\n",
            flush=True,
        )
        rows = []
        for kind in backends:
            t0 = time.perf_counter()
            results = asyncio.run(with_store(kind, args, lambda s: idle_ticks(s, sizes, args.idle_calls)))
            cells = " | ".join(f"{low:.3f} / {med:.3f} / {p90:.3f}" for _, low, med, p90 in results)
            ratio = results[-1][2] / results[0][2] if results[0][2] > 0 else float("nan")
            rows.append(f"| {STORES[kind].label} | {cells} | {ratio:.1f}× |")
            print(
                f"    {STORES[kind].label}: {time.perf_counter() - t0:.1f} s with the fill; load {load()}",
                file=sys.stderr,
                flush=True,
            )
        big, small = max(sizes), min(sizes)
        print(
            "| backend | "
            + " | ".join(f"{n:,} stored: min / median / p90 ms" for n in sorted(sizes))
            + f" | median {big:,} / {small:,} |"
        )
        print("|---|" + "---:|" * (len(sizes) + 1))
        print("\n".join(rows) + "\n", flush=True)
    print(f"Load average {load()} at the end; every store removed (temp dirs, PostgreSQL schemas, Redis keys).")


if __name__ == "__main__":
    main()
