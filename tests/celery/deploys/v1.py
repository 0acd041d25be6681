"""Release 1: fetch, sleep, finish."""

from __future__ import annotations

from pyworkflow import sleep, step, workflow


@step(name="deploy.fetch")
async def fetch(x: int) -> int:
    return x + 1


@step(name="deploy.finish")
async def finish(x: int) -> int:
    return x * 10


@workflow(name="deploy.guarded")
async def guarded(x: int) -> int:
    a = await fetch(x)
    await sleep("3s")
    return await finish(a)


@workflow(name="deploy.unguarded")
async def unguarded(x: int) -> int:
    a = await fetch(x)
    await sleep("3s")
    return await finish(a)
