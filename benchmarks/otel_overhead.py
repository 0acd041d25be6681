"""What OpenTelemetry costs a 3-step inline workflow in-process (memory storage), as
``benchmarks/instructions.py`` measures it, with and without ``pyworkflow.otel``.

    .venv/bin/python benchmarks/otel_overhead.py                  # wall clock, medians
    .venv/bin/python benchmarks/otel_overhead.py --callgrind      # + instructions (valgrind)
    .venv/bin/python benchmarks/otel_overhead.py --run sdk 600    # one measured process

Modes
=====
plain
    no interceptor: the engine's own cost (what ``instructions.py`` measures).
hooks
    an interceptor that overrides nothing: the cost of the interceptor hooks themselves.
api
    ``pyworkflow.otel.instrument()`` with no SDK provider set: the global provider is
    OpenTelemetry's no-op one, so this is the hooks' own cost (the carrier is empty).
sdk
    ``instrument(provider)`` with an SDK ``TracerProvider`` and a ``SimpleSpanProcessor``
    to an exporter that drops what it is given: every span is made, ended and handed
    to an exporter, synchronously (5 spans a run: start, one activation, three steps),
    and the carrier (a W3C ``traceparent``) is recorded with each run.

Instructions (``--callgrind``): each mode runs in its own process under ``valgrind
--tool=callgrind`` at ``--small`` and ``--large`` workflows; (the difference of the two
"Collected" totals) / (large - small) = instructions per workflow, start-up and imports
cancelled out. Wall clock: ``--rounds`` rounds in one process, each running ``--runs``
workflows per mode in turn, each mode first in turn, after a full garbage
collection (paired, so load that drifts between rounds cancels out);
the table gives the median microseconds per workflow and each mode's ratio to plain.

Measured (``--callgrind``, 2 busy cores, Python 3.11, OpenTelemetry 1.45):

    mode    us/workflow  x plain  instructions/workflow  x plain
    plain          88.1     1.00                506,517     1.00
    hooks         124.0     1.41                677,303     1.34
    api           151.0     1.71                811,861     1.60
    sdk           380.9     4.32              1,680,499     3.32
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyworkflow import Interceptor, add_interceptor, remove_interceptor, step, workflow  # noqa: E402
from pyworkflow.local import LocalRuntime  # noqa: E402
from pyworkflow.storage.memory import InMemoryStorageBackend  # noqa: E402

MODES = ("plain", "hooks", "api", "sdk")
NOTHING = Interceptor()


@step
async def add_one(x: int) -> int:
    return x + 1


@workflow(name="bench.otel_three_steps")
async def three_steps(x: int) -> int:
    return await add_one(await add_one(await add_one(x)))


def set_mode(mode: str) -> None:
    """Register (or not) the interceptor the mode measures."""
    import pyworkflow.otel

    pyworkflow.otel.uninstrument()
    remove_interceptor(NOTHING)
    if mode == "hooks":
        add_interceptor(NOTHING)
    elif mode == "api":
        pyworkflow.otel.instrument()
    elif mode == "sdk":
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Dropping()))
        pyworkflow.otel.instrument(provider)


async def run(runtime: LocalRuntime, count: int) -> None:
    for i in range(count):
        await runtime.start(three_steps, i)


def measured_process(mode: str, count: int) -> None:
    """What valgrind measures: import, set the mode, run ``count`` workflows."""
    set_mode(mode)
    asyncio.run(run(LocalRuntime(InMemoryStorageBackend()), count))


def collected(mode: str, count: int) -> int:
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--run",
            mode,
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no 'Collected' line from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def wall_clock(runs: int, rounds: int) -> dict[str, list[float]]:
    """Microseconds per workflow per mode, one figure per round."""
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}

    async def rounds_() -> None:
        for mode in MODES:  # warm-up: imports, caches
            set_mode(mode)
            await run(LocalRuntime(InMemoryStorageBackend()), 50)
        for index in range(rounds):
            for mode in MODES[index % len(MODES) :] + MODES[: index % len(MODES)]:  # each first in turn
                set_mode(mode)
                runtime = LocalRuntime(InMemoryStorageBackend())
                gc.collect()  # the previous mode's runs are not this one's garbage
                began = time.perf_counter()
                await run(runtime, runs)
                figures[mode].append((time.perf_counter() - began) / runs * 1e6)
        set_mode("plain")

    asyncio.run(rounds_())
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, metavar=("MODE", "COUNT"), help="one measured process (for valgrind)")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions under valgrind")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=600)
    parser.add_argument("--runs", type=int, default=1000, help="workflows per mode per wall-clock round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.run:
        mode, count = args.run
        if mode not in MODES:
            parser.error(f"MODE must be one of {', '.join(MODES)}, got {mode!r}")
        measured_process(mode, int(count))
        return

    rows: dict[str, dict[str, Any]] = {mode: {} for mode in MODES}
    figures = wall_clock(args.runs, args.rounds)
    for mode in MODES:
        rows[mode]["us"] = statistics.median(figures[mode])
    if args.callgrind:
        for mode in MODES:
            small, large = collected(mode, args.small), collected(mode, args.large)
            rows[mode]["instructions"] = (large - small) / (args.large - args.small)
    plain = rows["plain"]
    print(f"3-step inline workflow, memory storage; wall clock: median of {args.rounds} rounds of {args.runs}")
    header = f"{'mode':<6} {'us/workflow':>12} {'x plain':>8}"
    if args.callgrind:
        header += f" {'instructions/workflow':>22} {'x plain':>8}"
    print(header)
    for mode in MODES:
        row = rows[mode]
        line = f"{mode:<6} {row['us']:>12.1f} {row['us'] / plain['us']:>8.2f}"
        if args.callgrind:
            line += f" {row['instructions']:>22,.0f} {row['instructions'] / plain['instructions']:>8.2f}"
        print(line)


if __name__ == "__main__":
    main()
