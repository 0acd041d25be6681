"""The workflows the chaos tests run on worker subprocesses
(``PYWORKFLOW_IMPORTS=tests.chaos.workflows``).

Every step body is wrapped in a :mod:`tests.chaos.journal` attempt, so the tests can
count and time each execution across processes, killed ones included. Steps retry many
times: a step interrupted by one SIGKILL after another must not run out of attempts,
since every run of a chaos test has to complete.

``PYWORKFLOW_CHAOS_SQLITE_BUSY_TIMEOUT`` (seconds), when set, shortens the SQLite
backend's busy timeout in the process that imports this module (the worker's main
process, before it forks its pool), so a test can hold the write lock *past* the busy
timeout without waiting out the default 30 s.
"""

from __future__ import annotations

import asyncio
import os

from pyworkflow import current_step, sleep, step, workflow
from tests.chaos import journal

_BUSY = os.environ.get("PYWORKFLOW_CHAOS_SQLITE_BUSY_TIMEOUT")
if _BUSY:
    import pyworkflow.storage.sqlite as _sqlite

    if not hasattr(_sqlite, "BUSY_TIMEOUT"):  # loud, rather than a test that holds no lock past anything
        raise RuntimeError("pyworkflow.storage.sqlite.BUSY_TIMEOUT is gone: update tests/chaos/workflows.py")
    _sqlite.BUSY_TIMEOUT = float(_BUSY)


@step(max_retries=50)
async def work(tag: str, index: int, seconds: float) -> str:
    """A step whose body takes ``seconds`` (an ``asyncio.sleep``: the loop stays free to
    renew the lease)."""
    info = current_step()
    assert info is not None
    with journal.attempt(info.run_id, info.call_id, info.step, info.attempt):
        await asyncio.sleep(seconds)
    return f"{tag}:{index}"


@workflow(name="chaos.steps")
async def steps(tag: str, count: int, seconds: float, nap: float) -> str:
    """``count`` steps of ``seconds`` each, with a durable ``sleep(nap)`` after the first
    (none when ``nap`` is 0); returns the steps' results joined."""
    results = []
    for index in range(count):
        results.append(await work(tag, index, seconds))
        if index == 0 and nap > 0:
            await sleep(nap)
    return ",".join(results)


def expected(tag: str, count: int) -> str:
    """What :func:`steps` returns."""
    return ",".join(f"{tag}:{index}" for index in range(count))


@step(max_retries=0)
async def fragile(tag: str, seconds: float) -> str:
    """One attempt only: a second execution after its worker died must not happen (the
    step fails with StepCrashedError instead)."""
    info = current_step()
    assert info is not None
    with journal.attempt(info.run_id, info.call_id, info.step, info.attempt):
        await asyncio.sleep(seconds)
    return tag


@workflow(name="chaos.fragile")
async def fragile_run(tag: str, seconds: float) -> str:
    return await fragile(tag, seconds)
