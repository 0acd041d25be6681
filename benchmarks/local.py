"""Benchmark of the in-process runtime (:class:`~pyworkflow.local.LocalRuntime`) on each
storage backend. A script, not a test: it prints a Markdown table for the README.

    .venv/bin/python benchmarks/local.py                       # every backend, medians of 3
    .venv/bin/python benchmarks/local.py --backends memory,file --runs 5
    .venv/bin/python -m cProfile -s tottime benchmarks/local.py \\
        --backends memory --only throughput --workflows 3000 --runs 1

What is measured (each measurement on a fresh backend, warmed up first, timed with
``time.perf_counter``; every figure is the median of ``--runs`` measurements):

* throughput: ``--workflows`` sequential runs of a workflow awaiting a trivial step 3 times;
* per-step cost: a workflow of N sequential trivial steps, N = 10, 100, 1,000, 10,000
  (Redis and PostgreSQL: N = 10 and ``--big-n``); for N < 1,000 several such runs are
  timed together and the total divided by their steps, so the small figures are not
  lost in timer noise; growth = per-step cost at the largest N / at N = 10;
* resume cost: one ``resume`` that replays a suspended run whose log holds ~10,000
  events (``--resume-steps`` steps, then ``sleep("1h")``; the virtual clock is moved
  past the wake time so the resume replays everything and completes);
* round trips: storage-method calls made by the engine (the ``StorageBackend`` methods,
  counted on the backend instance) and, for Redis and PostgreSQL, the requests the
  client really sent (Redis commands: ``Redis.execute_command``; PostgreSQL statements:
  ``psycopg.AsyncCursor.execute``), split into a per-step and a per-run part from runs
  of 10 and 110 steps. Those are untimed runs of their own, so counting costs no time.

Redis uses redis://127.0.0.1:6379/15 with a unique key prefix, PostgreSQL
postgresql://postgres@127.0.0.1:5432/test with a unique schema (both removed
afterwards); file and SQLite use a fresh temporary directory. An unreachable server is
reported on its line and the other backends still run.

On a shared machine, read the figures with the two gauges printed beside them: the
*CPU share* of each timed block (process CPU time / wall time; below 1 on an in-process
backend means other processes had the CPU) and a plain-Python reference timing taken at
the start, the end and before each backend (a busy host under a virtual machine slows it
without showing in the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pyworkflow
from pyworkflow import sleep, step, workflow
from pyworkflow.clock import VirtualClock
from pyworkflow.local import LocalRuntime
from pyworkflow.storage import RunStatus, StorageBackend, redact_url, storage_from_url

BACKENDS = ("memory", "file", "sqlite", "redis", "postgres")
NETWORK_BACKENDS = ("redis", "postgres")
REDIS_URL = "redis://127.0.0.1:6379/15"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEP_COUNTS = (10, 100, 1_000, 10_000)
MIN_TIMED_STEPS = 1_000  # per-step figures time at least this many steps (several runs if N is small)
CONNECT_TIMEOUT = 10.0
HERE = os.path.dirname(os.path.abspath(__file__))

THROUGHPUT_TARGETS = {"memory": 12_000.0, "file": 650.0, "sqlite": 1_000.0}  # workflows/s, at least
GROWTH_TARGET = 1.5  # per-step cost at N = 10,000 / at N = 10, at most
MEMORY_STEP_TARGET = 25.0  # µs per step on the memory backend, at most


# -- the workflows ---------------------------------------------------------------------------


@step
async def s(x: int) -> int:
    return x + 1


@workflow(name="bench.three_steps")
async def three_steps(x: int) -> int:
    x = await s(x)
    x = await s(x)
    return await s(x)


@workflow(name="bench.n_steps")
async def n_steps(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await s(x)
    return x


@workflow(name="bench.steps_then_sleep")
async def steps_then_sleep(n: int) -> int:
    x = 0
    for _ in range(n):
        x = await s(x)
    await sleep("1h")
    return x


# -- fresh backends --------------------------------------------------------------------------


@dataclass
class Options:
    runs: int
    workflows: int
    warmup: int
    big_n: int
    resume_steps: int
    tmpdir: str | None
    redis_url: str
    postgres_url: str


class Unreachable(Exception):
    """The backend's server (or driver) is not there: skip the backend, say why."""


@dataclass
class Fresh:
    """A new, empty backend, and how to count the requests its client sends (if we can)."""

    storage: StorageBackend
    count_requests: Callable[[Counter[str]], contextlib.AbstractContextManager[None]] | None = None


@contextlib.asynccontextmanager
async def fresh_backend(name: str, opts: Options) -> AsyncIterator[Fresh]:
    opener = {
        "memory": _memory,
        "file": _file,
        "sqlite": _sqlite,
        "redis": _redis,
        "postgres": _postgres,
    }[name]
    async with opener(opts) as fresh:
        yield fresh


@contextlib.asynccontextmanager
async def _memory(opts: Options) -> AsyncIterator[Fresh]:
    storage = storage_from_url("memory://")
    try:
        yield Fresh(storage)
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def _file(opts: Options) -> AsyncIterator[Fresh]:
    with tempfile.TemporaryDirectory(prefix="pyworkflow-bench-", dir=opts.tmpdir) as root:
        storage = storage_from_url(f"file://{root}/store")
        try:
            yield Fresh(storage)
        finally:
            await storage.close()


@contextlib.asynccontextmanager
async def _sqlite(opts: Options) -> AsyncIterator[Fresh]:
    with tempfile.TemporaryDirectory(prefix="pyworkflow-bench-", dir=opts.tmpdir) as root:
        storage = storage_from_url(f"sqlite:///{root}/bench.db")  # sqlite:////abs/path: root is absolute
        try:
            yield Fresh(storage)
        finally:
            await storage.close()


@contextlib.asynccontextmanager
async def _redis(opts: Options) -> AsyncIterator[Fresh]:
    try:
        import redis.asyncio as aioredis

        from pyworkflow.storage.redis import RedisStorageBackend
    except ImportError as exc:
        raise Unreachable(f"driver missing ({exc}); pip install 'pyworkflow-celery[redis]'") from None
    client = aioredis.Redis.from_url(opts.redis_url, socket_connect_timeout=CONNECT_TIMEOUT)
    prefix = f"pyworkflow-bench-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure to connect means "skip it"
            raise Unreachable(f"{redact_url(opts.redis_url)}: {type(exc).__name__}: {exc}") from None
        # Our own client (the backend leaves a passed-in client open), so the commands
        # it sends can be counted and the prefix's keys deleted afterwards.
        storage = RedisStorageBackend(opts.redis_url, prefix=prefix, client=client)
        try:
            yield Fresh(storage, lambda counter: counting(client, "execute_command", counter))
        finally:
            await storage.close()
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1_000)]
            for i in range(0, len(keys), 500):
                await client.unlink(*keys[i : i + 500])
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _postgres(opts: Options) -> AsyncIterator[Fresh]:
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        raise Unreachable(f"driver missing ({exc}); pip install 'pyworkflow-celery[postgres]'") from None
    schema = f"bench_{os.getpid()}_{secrets.token_hex(4)}"
    joint = "&" if "?" in opts.postgres_url else "?"  # the URL may carry libpq options already
    storage = storage_from_url(f"{opts.postgres_url}{joint}schema={schema}")
    try:
        try:  # the first call connects and creates the schema
            await asyncio.wait_for(storage.get_run("probe"), CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure to connect means "skip it"
            raise Unreachable(f"{redact_url(opts.postgres_url)}: {type(exc).__name__}: {exc}") from None
        yield Fresh(storage, lambda counter: counting(psycopg.AsyncCursor, "execute", counter))
    finally:
        await storage.close()
        with contextlib.suppress(psycopg.OperationalError):
            async with await psycopg.AsyncConnection.connect(opts.postgres_url, autocommit=True) as conn:
                await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- counting calls --------------------------------------------------------------------------


@contextlib.contextmanager
def counting(target: Any, name: str, counter: Counter[str]) -> Iterator[None]:
    """Count calls of the async method ``target.name`` into ``counter[name]``, then put
    the method back. ``target`` is an instance (the wrapper shadows the bound method) or
    a class (the wrapper becomes the method and receives ``self`` first)."""
    own = name in vars(target)
    original = vars(target).get(name)
    inner = getattr(target, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return await inner(*args, **kwargs)

    setattr(target, name, counted)
    try:
        yield
    finally:
        if own:
            setattr(target, name, original)
        else:
            delattr(target, name)


@contextlib.contextmanager
def counting_storage(storage: StorageBackend, counter: Counter[str]) -> Iterator[None]:
    """Count every StorageBackend method the engine calls on ``storage``."""
    with contextlib.ExitStack() as stack:
        for name in sorted(StorageBackend.__abstractmethods__):
            stack.enter_context(counting(storage, name, counter))
        yield


# -- measurements ----------------------------------------------------------------------------


async def warm_up(runtime: LocalRuntime, count: int) -> None:
    for i in range(count):
        await runtime.start(three_steps, i)


async def expect_completed(storage: StorageBackend, run_id: str, result: int) -> None:
    run = await storage.get_run(run_id)
    if run is None or run.status != RunStatus.COMPLETED or run.result != result:
        raise RuntimeError(f"benchmark run {run_id} did not complete with {result}: {run!r}")


class Stopwatch:
    """Times a block with ``perf_counter`` (after a ``gc.collect``) and appends the share
    of that wall time this process spent on a CPU to ``cpu_shares``: well below 1 for an
    in-process backend means other processes took the CPU and the figure is pessimistic."""

    def __init__(self, cpu_shares: list[float]) -> None:
        self.cpu_shares = cpu_shares
        self.wall = 0.0

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu_shares.append((time.process_time() - self._cpu) / self.wall)


async def measure_throughput(backend: str, opts: Options, cpu: list[float]) -> float:
    """Workflows per second: ``opts.workflows`` three-step runs, one after the other."""
    async with fresh_backend(backend, opts) as fresh:
        runtime = LocalRuntime(fresh.storage)
        await warm_up(runtime, opts.warmup)
        with Stopwatch(cpu) as watch:
            for i in range(opts.workflows):
                run_id = await runtime.start(three_steps, i)
        await expect_completed(fresh.storage, run_id, opts.workflows - 1 + 3)
    return opts.workflows / watch.wall


async def measure_per_step(backend: str, n: int, opts: Options, cpu: list[float]) -> float:
    """Microseconds per step of a run of ``n`` sequential steps (start to completion)."""
    repeat = max(1, MIN_TIMED_STEPS // n)
    async with fresh_backend(backend, opts) as fresh:
        runtime = LocalRuntime(fresh.storage)
        await warm_up(runtime, opts.warmup)
        with Stopwatch(cpu) as watch:
            for _ in range(repeat):
                run_id = await runtime.start(n_steps, n)
        await expect_completed(fresh.storage, run_id, n)
    return watch.wall / (repeat * n) * 1e6


async def measure_resume(backend: str, opts: Options, cpu: list[float]) -> tuple[float, int]:
    """Milliseconds for the one ``resume`` that replays a long suspended run, and the
    number of events in its log before the resume."""
    async with fresh_backend(backend, opts) as fresh:
        clock = VirtualClock()
        runtime = LocalRuntime(fresh.storage, clock=clock)
        await warm_up(runtime, opts.warmup)
        run_id = await runtime.start(steps_then_sleep, opts.resume_steps)
        run = await fresh.storage.get_run(run_id)
        if run is None or run.status != RunStatus.SUSPENDED:
            raise RuntimeError(f"benchmark run {run_id} should be suspended: {run!r}")
        events = len(await fresh.storage.get_events(run_id))
        clock.advance(timedelta(hours=1, minutes=1))
        with Stopwatch(cpu) as watch:
            outcome = await runtime.resume(run_id)
        if outcome.status != "completed":
            raise RuntimeError(f"the resume of {run_id} ended {outcome.status!r}, not completed")
        await expect_completed(fresh.storage, run_id, opts.resume_steps)
    return watch.wall * 1e3, events


@dataclass
class Trips:
    """Calls (or requests) as ``per_step * N + per_run`` for a run of N steps."""

    per_step: float
    per_run: float
    by_method: Counter[str]  # for the 10-step run

    def __str__(self) -> str:
        return f"{self.per_step:.2f} +{self.per_run:.0f}/run"


async def measure_round_trips(backend: str, opts: Options) -> tuple[Trips, Trips | None]:
    """Storage calls (and client requests, where countable) of runs of 10 and 110 steps."""
    small, large = 10, 110
    async with fresh_backend(backend, opts) as fresh:
        runtime = LocalRuntime(fresh.storage)
        await warm_up(runtime, opts.warmup)
        counts: list[tuple[Counter[str], Counter[str]]] = []
        for n in (small, large):
            calls: Counter[str] = Counter()
            requests: Counter[str] = Counter()
            with contextlib.ExitStack() as stack:
                stack.enter_context(counting_storage(fresh.storage, calls))
                if fresh.count_requests is not None:
                    stack.enter_context(fresh.count_requests(requests))
                run_id = await runtime.start(n_steps, n)
            await expect_completed(fresh.storage, run_id, n)
            counts.append((calls, requests))
        counted = fresh.count_requests is not None

    def trips(a: Counter[str], b: Counter[str]) -> Trips:
        per_step = (b.total() - a.total()) / (large - small)
        return Trips(per_step, a.total() - per_step * small, a)

    (calls_a, req_a), (calls_b, req_b) = counts
    return trips(calls_a, calls_b), (trips(req_a, req_b) if counted else None)


# -- one backend -----------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    error: str | None = None
    throughput: list[float] = field(default_factory=list)
    per_step: dict[int, list[float]] = field(default_factory=dict)
    resume_ms: list[float] = field(default_factory=list)
    resume_events: int = 0
    calls: Trips | None = None
    requests: Trips | None = None
    cpu_shares: list[float] = field(default_factory=list)  # one per timed block
    reference_us: float = 0.0  # cpu_reference() just before this backend's measurements

    def growth(self) -> float | None:
        ns = sorted(self.per_step)
        if len(ns) < 2 or ns[0] != 10:
            return None
        return median(self.per_step[ns[-1]]) / median(self.per_step[ns[0]])


def one_line(exc: BaseException) -> str:
    """The message on one line, so it fits in a table cell."""
    return " ".join(str(exc).split()).replace("|", "/")


def median(values: list[float]) -> float:
    return statistics.median(values)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def step_counts(backend: str, opts: Options) -> list[int]:
    if backend in NETWORK_BACKENDS:
        return sorted({10, opts.big_n})
    return [n for n in STEP_COUNTS if n <= opts.big_n]


async def bench_backend(backend: str, opts: Options, only: set[str]) -> Result:
    result = Result(backend, reference_us=cpu_reference())
    try:
        if "throughput" in only:
            for i in range(opts.runs):
                result.throughput.append(await measure_throughput(backend, opts, result.cpu_shares))
                progress(f"{backend}: throughput {i + 1}/{opts.runs}: {result.throughput[-1]:,.0f} wf/s")
        if "steps" in only:
            for n in step_counts(backend, opts):
                for i in range(opts.runs):
                    result.per_step.setdefault(n, []).append(
                        await measure_per_step(backend, n, opts, result.cpu_shares)
                    )
                    progress(f"{backend}: N={n:,} {i + 1}/{opts.runs}: {result.per_step[n][-1]:,.1f} µs/step")
        if "resume" in only:
            for i in range(opts.runs):
                ms, result.resume_events = await measure_resume(backend, opts, result.cpu_shares)
                result.resume_ms.append(ms)
                progress(f"{backend}: resume {i + 1}/{opts.runs}: {ms:,.1f} ms ({result.resume_events:,} events)")
        if "trips" in only:
            result.calls, result.requests = await measure_round_trips(backend, opts)
            progress(f"{backend}: round trips: calls {result.calls}, requests {result.requests or '-'}")
    except Unreachable as exc:
        result.error = f"not measured: unreachable ({one_line(exc)})"
        progress(f"{backend}: {result.error}")
    except Exception as exc:  # noqa: BLE001 - report it and go on with the other backends
        traceback.print_exc()
        result.error = f"failed: {type(exc).__name__}: {one_line(exc)}"
        progress(f"{backend}: {result.error}")
    return result


# -- the report ------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def throughput_cell(result: Result) -> str:
    if not result.throughput:
        return "–"
    value = median(result.throughput)
    target = THROUGHPUT_TARGETS.get(result.backend)
    if target is None:
        return f"{value:,.0f} (report only)"
    return f"{value:,.0f} (≥ {target:,.0f} {mark(value >= target)})"


def step_cell(result: Result, n: int) -> str:
    values = result.per_step.get(n)
    if not values:
        return "–"
    value = median(values)
    if result.backend == "memory":
        return f"{value:,.1f} {mark(value <= MEMORY_STEP_TARGET)}"
    return f"{value:,.1f}"


def growth_cell(result: Result) -> str:
    growth = result.growth()
    if growth is None:
        return "–"
    return f"{growth:.2f} {mark(growth <= GROWTH_TARGET)}"


def trips_cell(result: Result) -> str:
    if result.calls is None:
        return "–"
    cell = f"{result.calls} calls"
    if result.requests is not None:
        noun = "cmds" if result.backend == "redis" else "stmts"
        cell += f"; {result.requests} {noun}"
    return cell


def table(results: list[Result]) -> list[str]:
    ns = sorted({n for r in results for n in r.per_step} | {n for n in STEP_COUNTS})
    events = max((r.resume_events for r in results), default=0)
    resume_head = f"resume {events:,} events ms" if events else "resume ms"
    head = ["backend", "wf/s (target)", *[f"µs/step N={n:,}" for n in ns], "growth (≤ 1.5)"]
    head += [resume_head, "round trips/step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        if r.error is not None:
            lines.append(f"| {r.backend} | {r.error} |" + " |" * (len(head) - 2))
            continue
        resume = f"{median(r.resume_ms):,.1f}" if r.resume_ms else "–"
        cells = [r.backend, throughput_cell(r), *[step_cell(r, n) for n in ns], growth_cell(r), resume, trips_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.backend in THROUGHPUT_TARGETS and r.throughput:
            value, target = median(r.throughput), THROUGHPUT_TARGETS[r.backend]
            lines.append(f"- {mark(value >= target)} {r.backend} throughput {value:,.0f} wf/s (target ≥ {target:,.0f})")
        growth = r.growth()
        if growth is not None:
            largest = max(r.per_step)
            lines.append(
                f"- {mark(growth <= GROWTH_TARGET)} {r.backend} per-step growth N={largest:,} ÷ N=10: "
                f"{growth:.2f} (target ≤ {GROWTH_TARGET})"
            )
        if r.backend == "memory" and r.per_step:
            worst_n = max(r.per_step, key=lambda n: median(r.per_step[n]))
            worst = median(r.per_step[worst_n])
            lines.append(
                f"- {mark(worst <= MEMORY_STEP_TARGET)} memory per-step cost, worst N ({worst_n:,}): "
                f"{worst:.1f} µs (target ≤ {MEMORY_STEP_TARGET:g} at every N)"
            )
    return lines or ["- none measured"]


def raw_runs(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        parts = []
        if r.throughput:
            parts.append("wf/s " + ", ".join(f"{v:,.0f}" for v in r.throughput))
        for n, values in sorted(r.per_step.items()):
            parts.append(f"N={n:,} " + ", ".join(f"{v:,.1f}" for v in values))
        if r.resume_ms:
            parts.append("resume ms " + ", ".join(f"{v:,.1f}" for v in r.resume_ms))
        if r.reference_us:
            parts.append(f"sum(range(1000)) {r.reference_us:.1f} µs before")
        if r.cpu_shares:
            shares = sorted(r.cpu_shares)
            parts.append(f"CPU share of timed wall time: median {median(shares):.2f}, lowest {shares[0]:.2f}")
        if parts:
            lines.append(f"- {r.backend}: " + "; ".join(parts))
    return lines


def cpu_reference() -> float:
    """µs for ``sum(range(1000))``, best of 5: how fast this machine runs plain Python now.
    Load average does not show a busy host under a virtual machine; this does."""
    return min(timeit.repeat("sum(range(1000))", number=2_000, repeat=5)) / 2_000 * 1e6


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def filesystem(path: str) -> str:
    """The type of the file system holding ``path`` (Linux), for the file/SQLite figures."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return "unknown"
    path = os.path.realpath(path)
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")), key=lambda m: len(m[0]))
    return best[1]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=HERE
        )
    except OSError:
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ":/pyworkflow"], capture_output=True, text=True, cwd=HERE
    )
    return commit + (" + uncommitted changes in pyworkflow/" if dirty.stdout.strip() else "")


def header(opts: Options, load_start: str, commit: str, reference_start: float) -> list[str]:
    tmp = opts.tmpdir or tempfile.gettempdir()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        "## PyWorkflow LocalRuntime benchmark",
        "",
        f"- command: `{shlex.join(redact_url(arg) if '://' in arg else arg for arg in sys.orig_argv)}`",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- CPUs: {os.cpu_count()} ({usable} usable); load average (1/5/15 min) at start {load_start}, "
        f"at end {loadavg()}",
        f"- plain-Python reference, `sum(range(1000))` best of 5: {reference_start:.1f} µs at start, "
        f"{cpu_reference():.1f} µs at end (lower is faster; it moves with the host's load)",
        f"- code at start: git {commit}; pyworkflow imported from {os.path.dirname(pyworkflow.__file__)}",
        f"- temporary files in {tmp} ({filesystem(tmp)})",
        f"- medians of {opts.runs} run(s); warm-up {opts.warmup} workflows on each fresh backend; "
        f"throughput over {opts.workflows:,} workflows of 3 steps",
    ]


def notes(results: list[Result], opts: Options) -> list[str]:
    lines = [
        "",
        "Notes:",
        f"- µs/step: a run of N sequential trivial steps, start to completion, divided by N "
        f"(N < {MIN_TIMED_STEPS:,}: {MIN_TIMED_STEPS:,} ÷ N such runs timed together); growth = largest N ÷ N=10.",
        f"- resume: one `LocalRuntime.resume` replaying a suspended run of {opts.resume_steps:,} steps "
        'then `sleep("1h")`, with the virtual clock past its wake time; the resume completes the run.',
        "- round trips/step: `a +b/run` means a per step plus b per run (from runs of 10 and 110 steps). "
        "calls = StorageBackend methods the engine called; each is one round trip on Redis and PostgreSQL "
        "per their docstrings. cmds = commands the Redis client sent; stmts = statements psycopg executed.",
    ]
    lines.append(
        "- CPU share: this process's CPU time ÷ wall time of a timed block. Memory, file and SQLite work "
        "in-process, so on an idle machine it is near 1.00 and lower means other processes took the CPU "
        "(the figure is then pessimistic); for Redis and PostgreSQL the server's work is not in it."
    )
    counted = next((r.calls for r in results if r.calls is not None), None)
    if counted is not None:
        by_method = ", ".join(f"{name} {count}" for name, count in sorted(counted.by_method.items()))
        lines.append(f"- storage calls of one 10-step run: {by_method}.")
    return lines


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Options, list[str], set[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, from: " + ", ".join(BACKENDS))
    parser.add_argument("--runs", type=int, default=3, help="measurements per figure; the median is shown")
    parser.add_argument("--workflows", type=int, default=500, help="workflows in the throughput figure")
    parser.add_argument("--warmup", type=int, default=50, help="workflows run on each fresh backend before timing")
    parser.add_argument(
        "--big-n", type=int, default=10_000, help="largest N of the per-step figure (Redis/PostgreSQL: 10 and this)"
    )
    parser.add_argument("--resume-steps", type=int, default=5_000, help="steps of the run the resume replays")
    parser.add_argument("--only", default="throughput,steps,resume,trips", help="measurements to make")
    parser.add_argument("--tmpdir", default=None, help="where the file and SQLite backends live (default: $TMPDIR)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a unique key prefix is added, and its keys deleted")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="a unique schema is made in it, then dropped")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if only - {"throughput", "steps", "resume", "trips"}:
        parser.error("--only takes throughput, steps, resume, trips")
    if args.runs < 1 or args.workflows < 1 or args.warmup < 0 or args.big_n < 10 or args.resume_steps < 1:
        parser.error("--runs, --workflows, --resume-steps must be ≥ 1, --warmup ≥ 0, --big-n ≥ 10")
    opts = Options(
        args.runs,
        args.workflows,
        args.warmup,
        args.big_n,
        args.resume_steps,
        args.tmpdir,
        args.redis_url,
        args.postgres_url,
    )
    return opts, backends, only


async def main(argv: list[str] | None = None) -> None:
    opts, backends, only = parse_args(argv)
    load_start, commit, reference_start = loadavg(), git_commit(), cpu_reference()
    results = [await bench_backend(backend, opts, only) for backend in backends]
    print(
        "\n".join(
            [*header(opts, load_start, commit, reference_start), "", *table(results), "", "Targets:", *targets(results)]
        )
    )
    print("\n".join([*notes(results, opts), "", "Each run (the table shows medians):", *raw_runs(results)]))


if __name__ == "__main__":
    asyncio.run(main())
