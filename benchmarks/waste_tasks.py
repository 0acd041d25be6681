"""The workflow ``benchmarks/wasted_work.py`` runs while it kills workers."""

from __future__ import annotations

import asyncio

from pyworkflow import sleep, step, workflow


@step
async def work(tag: str, n: int) -> str:
    await asyncio.sleep(0.2)
    return f"{tag}:{n}"


@workflow(name="bench.waste.three_steps")
async def three_steps(tag: str) -> list[str]:
    first = await work(tag, 1)
    await sleep(0.5)
    second = await work(tag, 2)
    await sleep(0.5)
    return [first, second, await work(tag, 3)]
