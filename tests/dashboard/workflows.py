"""The workflows whose runs the dashboard tests (and ``docs/screenshots.py``) look at.

``WORK`` is the virtual clock the runs are driven on, when a test wants steps that take
time: a step advances it by its ``seconds``, as if it worked that long.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from pyworkflow import continue_as_new, current_step, run_child, set_state, sleep, step, wait_for_signal, workflow
from pyworkflow.clock import VirtualClock

WORK: list[VirtualClock] = []


def work(seconds: float) -> None:
    if WORK:
        WORK[0].advance(seconds)


@step(name="dash.reserve")
async def reserve(order_id: str, seconds: float = 0.0) -> str:
    work(seconds)
    return f"reservation-{order_id}"


@step(name="dash.charge", max_retries=3, retry_delay="20s")
async def charge(order_id: str, fail_times: int = 0, seconds: float = 0.0) -> dict[str, Any]:
    work(seconds)
    if current_step().attempt <= fail_times:
        raise RuntimeError(f"card declined for {order_id}")
    return {"order": order_id, "charged": True}


@step(name="dash.ship")
async def ship(order_id: str, seconds: float = 0.0) -> str:
    work(seconds)
    return f"parcel-{order_id}"


@workflow(name="dash.order")
async def order(order_id: str, fail_times: int = 0, pause: str = "1m", seconds: float = 0.0) -> dict[str, Any]:
    set_state("stage", "reserving")
    await reserve(order_id, seconds)
    set_state("stage", "charging")
    payment = await charge(order_id, fail_times, seconds)
    set_state("stage", "waiting to ship")
    await sleep(pause)
    set_state("stage", "shipping")
    parcel = await ship(order_id, seconds)
    set_state("stage", "done")
    return {"payment": payment, "parcel": parcel}


@workflow(name="dash.approval")
async def approval(order_id: str) -> dict[str, Any]:
    set_state("stage", "waiting for approval")
    await reserve(order_id)
    decision = await wait_for_signal("approve")
    set_state("stage", "approved")
    return {"order": order_id, "decision": decision}


@workflow(name="dash.explode")
async def explode(message: str) -> None:
    await reserve("x")
    raise ValueError(message)


@workflow(name="dash.child")
async def child(n: int) -> int:
    await sleep("30s")
    return n * 2


@workflow(name="dash.parent")
async def parent(n: int) -> list[int]:
    return list(await asyncio.gather(run_child(child, n), run_child(child, n + 1)))


async def populate(storage: Any, *, realistic: bool = False, start: datetime | None = None) -> dict[str, str]:
    """Runs of every shape on ``storage``, made in-process: ``order`` (completed after two
    declined charges), ``approval`` (suspended, waiting for signal ``approve``),
    ``explode`` (failed), ``parent`` (completed, with two children). ``realistic``: steps
    take seconds and the order sleeps a minute, on a virtual clock (from ``start``), as a
    real run would."""
    from pyworkflow.local import LocalRuntime

    clock = VirtualClock(start)
    WORK[:] = [clock] if realistic else []
    runtime = LocalRuntime(storage, clock=clock)
    seconds = 3.0 if realistic else 0.0
    ids = {"order": await runtime.start(order, "ORD-1", fail_times=2, seconds=seconds)}
    await runtime.run_until_complete(ids["order"])
    ids["approval"] = await runtime.start(approval, "ORD-2")
    ids["explode"] = await runtime.start(explode, "the warehouse is on fire")
    ids["parent"] = await runtime.start(parent, 3)
    await runtime.run_until_complete(ids["parent"])
    WORK.clear()
    return ids


@workflow(name="dash.countdown")
async def countdown(n: int) -> int:
    if n > 0:
        await continue_as_new(n - 1)
    return n
