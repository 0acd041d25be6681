"""Benchmark: the cost of one continue-as-new chain link, in-process, against the cost
of one plain run started and completed, measured in the same process run. A script, not
a test: it prints a Markdown table.

    .venv/bin/python benchmarks/continue_as_new.py                    # memory and SQLite, medians of 5
    .venv/bin/python benchmarks/continue_as_new.py --backends sqlite --links 500 --runs 7

What is measured (each measurement on a fresh backend, after a warm-up, timed with
``time.perf_counter``; every figure is the median of ``--runs`` measurements):

* plain run: ``--links`` runs of a workflow that returns at once (``bare``) or awaits one
  trivial step (``step``), each started and completed by ``LocalRuntime.start``; the
  time divided by the runs;
* chain link: one run of a workflow that calls ``continue_as_new`` ``--links`` times
  (``bare``: nothing else; ``step``: one trivial step per link), driven to its end by
  ``LocalRuntime.run_until_complete`` (each link is started by its predecessor's end);
  the time divided by the links. A link costs one run created (outbox), the old run's
  end recorded, and the new run's first activation, which reads what its predecessor
  left unconsumed (its record, log and pending inbox) before its workflow code runs.

The ratio (link / plain run) is the overhead of a link over starting a fresh run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyworkflow import continue_as_new, step, workflow  # noqa: E402
from pyworkflow.storage.base import StorageBackend  # noqa: E402
from pyworkflow.testing import LocalRuntime, VirtualClock  # noqa: E402


@step(name="bench.noop")
async def noop(i: int) -> int:
    return i


@workflow(name="bench.plain")
async def plain(i: int) -> int:
    return i


@workflow(name="bench.plain_step")
async def plain_step(i: int) -> int:
    return await noop(i)


@workflow(name="bench.chain")
async def chain(left: int) -> int:
    if left > 0:
        await continue_as_new(left - 1)
    return left


@workflow(name="bench.chain_step")
async def chain_step(left: int) -> int:
    await noop(left)
    if left > 0:
        await continue_as_new(left - 1)
    return left


def open_backend(name: str, tmp: Path) -> StorageBackend:
    if name == "memory":
        from pyworkflow.storage.memory import InMemoryStorageBackend

        return InMemoryStorageBackend()
    if name == "sqlite":
        from pyworkflow.storage.sqlite import SQLiteStorageBackend

        return SQLiteStorageBackend(str(tmp / "bench.db"))
    raise SystemExit(f"unknown backend {name!r}: memory or sqlite")


async def time_plain(storage: StorageBackend, wf: object, n: int) -> float:
    rt = LocalRuntime(storage, clock=VirtualClock())
    started = time.perf_counter()
    for i in range(n):
        await rt.start(wf, i)
    return (time.perf_counter() - started) / n


async def time_chain(storage: StorageBackend, wf: object, n: int) -> float:
    rt = LocalRuntime(storage, clock=VirtualClock())
    started = time.perf_counter()
    run = await rt.run_until_complete(await rt.start(wf, n))
    elapsed = time.perf_counter() - started
    assert run.status == "completed" and run.result == 0, run
    return elapsed / n


async def measure(name: str, links: int, runs: int) -> dict[str, float]:
    cases: dict[str, Callable[[StorageBackend], Awaitable[float]]] = {
        "plain bare": lambda s: time_plain(s, plain, links),
        "chain bare": lambda s: time_chain(s, chain, links),
        "plain step": lambda s: time_plain(s, plain_step, links),
        "chain step": lambda s: time_chain(s, chain_step, links),
    }
    samples: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(runs):
        for case, run in cases.items():  # interleaved: a slow moment hits every case alike
            with tempfile.TemporaryDirectory() as tmp:
                storage = open_backend(name, Path(tmp))
                try:
                    warm = LocalRuntime(storage, clock=VirtualClock())
                    await warm.run_until_complete(await warm.start(chain_step, 20))
                    samples[case].append(await run(storage))
                finally:
                    await storage.close()
    return {case: statistics.median(values) for case, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="memory,sqlite", help="comma-separated: memory, sqlite")
    parser.add_argument("--links", type=int, default=300, help="links per chain, and plain runs per measurement")
    parser.add_argument("--runs", type=int, default=5, help="measurements per figure (the median is printed)")
    args = parser.parse_args()
    print(f"{args.links} links / plain runs per measurement, medians of {args.runs}; Python {sys.version.split()[0]}")
    print()
    print("| backend | workflow | plain run start+complete | chain link | link / plain run |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.backends.split(","):
        figures = asyncio.run(measure(name.strip(), args.links, args.runs))
        for kind in ("bare", "step"):
            base, link = figures[f"plain {kind}"], figures[f"chain {kind}"]
            label = "returns at once" if kind == "bare" else "one step"
            print(f"| {name} | {label} | {base * 1e6:,.0f} µs | {link * 1e6:,.0f} µs | {link / base:.2f}x |")


if __name__ == "__main__":
    main()
