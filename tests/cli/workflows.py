"""Small workflows the CLI tests run; imported by the ``pyworkflow`` subprocess with
``--import tests.cli.workflows``."""

from __future__ import annotations

from typing import Any

from pyworkflow import set_state, sleep, step, wait_for_signal, workflow


@step(name="cli.double")
async def double(x: int) -> int:
    return x * 2


@workflow(name="cli.add")
async def add(a: int, b: int = 0) -> int:
    set_state("stage", "adding")
    return await double(a) // 2 + b


@workflow(name="cli.explode")
async def explode(message: str) -> None:
    raise ValueError(message)


@workflow(name="cli.await_go")
async def await_go() -> dict[str, Any]:
    payload = await wait_for_signal("go")
    return {"got": payload}


@workflow(name="cli.nap")
async def nap(seconds: float) -> str:
    await sleep(seconds)
    return "rested"
