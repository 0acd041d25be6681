"""Workflows the Celery tests run, imported by in-process and subprocess workers alike
(``PYWORKFLOW_IMPORTS=tests.celery_workflows``).

Steps leave marker lines in files under ``$PYWORKFLOW_TEST_MARKERS`` so a test can count
executions across processes, including ones it killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from pyworkflow import current_step, sleep, step, workflow


def mark(name: str) -> int:
    """Append a line to marker ``name``; return how many lines it now has."""
    path = Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / name
    with path.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    return len(path.read_text().splitlines())


def count(name: str) -> int:
    path = Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / name
    return len(path.read_text().splitlines()) if path.exists() else 0


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="celery.add_three")
async def add_three(x: int) -> int:
    return await add(await add(await add(x, 1), 1), 1)


@step
async def note(tag: str) -> str:
    mark(tag)
    return tag


@workflow(name="celery.sleeper")
async def sleeper(tag: str, seconds: float) -> str:
    await note(f"{tag}-before")
    await sleep(seconds)
    await note(f"{tag}-after")
    return tag


@step(queue="pyworkflow.steps")
async def remote_square(x: int) -> int:
    info = current_step()
    assert info is not None
    mark(f"square-{info.idempotency_key}")
    await asyncio.sleep(0.05)
    return x * x


@workflow(name="celery.fanout")
async def fanout(n: int) -> list[int]:
    squares = await asyncio.gather(*(remote_square(i) for i in range(n)))
    return list(squares)


@step(max_retries=3)
async def blocks_first_time(tag: str) -> str:
    """The first execution hangs (the test kills its worker); later ones finish."""
    if mark(f"{tag}-step2") == 1:
        await asyncio.sleep(300)
    return "second try"


@workflow(name="celery.crashy")
async def crashy(tag: str) -> str:
    await note(f"{tag}-step1")
    result = await blocks_first_time(tag)
    await note(f"{tag}-step3")
    return result


@step(max_retries=1)
async def kills_its_worker(tag: str) -> None:
    mark(f"{tag}-killer")
    os.kill(os.getpid(), signal.SIGKILL)


@workflow(name="celery.oom")
async def oom(tag: str) -> None:
    await kills_its_worker(tag)


@step(queue="pyworkflow.steps")
async def gated(tag: str) -> str:
    """A dispatched step that finishes only once the test opens its gate."""
    gate = Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / f"gate-{tag}"
    while not gate.exists():
        await asyncio.sleep(0.02)
    mark(f"{tag}-gated")
    return tag


@workflow(name="celery.gated")
async def gated_run(tag: str) -> str:
    return await gated(tag)


@workflow(name="celery.approval")
async def approval(order: str) -> dict[str, object]:
    from pyworkflow import set_state, wait_for_signal

    set_state("stage", "waiting")
    decision = await wait_for_signal("decision", timeout="1h")
    set_state("stage", "decided")
    shipped = await remote_square(3) if decision.get("ship") else 0
    late = await wait_for_signal("late", timeout=0.3, default="none")
    return {"order": order, "decision": decision, "shipped": shipped, "late": late}


@step
async def long_inline(tag: str) -> str:
    mark(f"{tag}-began")
    await asyncio.sleep(60)
    mark(f"{tag}-finished")
    return tag


@workflow(name="celery.cancellable")
async def cancellable(tag: str, where: str) -> str:
    try:
        if where == "sleep":
            await sleep("1d")
        else:
            await long_inline(tag)
    except asyncio.CancelledError:
        await note(f"{tag}-cleanup")
        raise
    return "not cancelled"


@workflow(name="celery.fan_out_children")
async def fan_out_children(n: int) -> list[int]:
    from pyworkflow import start_child

    handles = [await start_child(add_three, i) for i in range(n)]
    return list(await asyncio.gather(*(h.result() for h in handles)))


@step(name="celery.record_slot")
async def record_slot(slot: str) -> None:
    """One line per execution in the marker ``schedule-slots``: the slot's time."""
    path = Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / "schedule-slots"
    with path.open("a") as handle:
        handle.write(f"{slot}\n")


@workflow(name="celery.scheduled")
async def scheduled() -> str:
    from pyworkflow import workflow_info

    slot = workflow_info().scheduled_at
    assert slot is not None, "started by a schedule"
    await record_slot(slot.isoformat())
    return slot.isoformat()
