"""Release 2 adds a step before the sleep: behind patched() in deploy.guarded, bare in
deploy.unguarded (a change that runs suspended in the sleep cannot replay)."""

from __future__ import annotations

from pyworkflow import patched, sleep, step, workflow


@step(name="deploy.fetch")
async def fetch(x: int) -> int:
    return x + 1


@step(name="deploy.audit")
async def audit(x: int) -> int:
    return x + 1000


@step(name="deploy.finish")
async def finish(x: int) -> int:
    return x * 10


@workflow(name="deploy.guarded")
async def guarded(x: int) -> int:
    a = await fetch(x)
    if patched("audit"):
        a = await audit(a)
    await sleep("3s")
    return await finish(a)


@workflow(name="deploy.unguarded")
async def unguarded(x: int) -> int:
    a = await fetch(x)
    a = await audit(a)
    await sleep("3s")
    return await finish(a)
