"""Release 3, the fix: deploy.unguarded guards its new step with patched() too."""

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
    if patched("audit"):
        a = await audit(a)
    await sleep("3s")
    return await finish(a)
