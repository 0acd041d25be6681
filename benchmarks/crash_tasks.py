"""The workflow ``benchmarks/crash_recovery.py`` kills workers under."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pyworkflow import step, workflow


def stamps(tag: str) -> list[float]:
    """When each execution of ``tag``'s step began (wall clock), in order."""
    path = Path(os.environ["BENCH_CRASH_MARKERS"]) / tag
    return [float(line) for line in path.read_text().split()] if path.exists() else []


@step(max_retries=5)
async def blocks_first_time(tag: str) -> str:
    path = Path(os.environ["BENCH_CRASH_MARKERS"]) / tag
    with path.open("a") as handle:
        handle.write(f"{time.time()}\n")
    if len(stamps(tag)) == 1:
        await asyncio.sleep(600)  # the benchmark kills this worker now
    return tag


@workflow(name="bench.crash.blocked_once")
async def blocked_once(tag: str) -> str:
    return await blocks_first_time(tag)
