"""The workflow ``benchmarks/replay_check.py`` stores and replays."""

from __future__ import annotations

from pyworkflow import sleep, step, workflow


@step(name="bench.replay.add")
async def add(x: int, y: int) -> int:
    return x + y


@workflow(name="bench.replay.three_steps")
async def three_steps(x: int) -> int:
    a = await add(x, 1)
    await sleep("1h")
    b = await add(a, 2)
    return await add(b, 3)
