"""Workflows for the failure tests: steps that raise BaseExceptions, a slow step.

Imported by worker subprocesses next to ``tests.celery_workflows``
(``PYWORKFLOW_IMPORTS=tests.celery_workflows,tests.celery.failure_workflows``).
"""

from __future__ import annotations

import asyncio

from pyworkflow import sleep, step, workflow
from tests.celery_workflows import mark, note

IMPORTS = "tests.celery_workflows,tests.celery.failure_workflows"

RAISERS: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "CancelledError": asyncio.CancelledError,
}


@step(max_retries=3)
async def exits(tag: str, kind: str) -> None:
    mark(f"{tag}-exits")
    raise RAISERS[kind](3)


@workflow(name="celery.exiting")
async def exiting(tag: str, kind: str) -> str:
    await exits(tag, kind)
    return "not reached"


@step(queue="pyworkflow.steps", max_retries=3)
async def remote_exits(tag: str, kind: str) -> None:
    mark(f"{tag}-remote-exits")
    raise RAISERS[kind](3)


@workflow(name="celery.remote_exiting")
async def remote_exiting(tag: str, kind: str) -> str:
    await remote_exits(tag, kind)
    return "not reached"


@step
async def slow(tag: str, seconds: float) -> str:
    mark(f"{tag}-slow-begun")
    await asyncio.sleep(seconds)
    mark(f"{tag}-slow")
    return tag


@workflow(name="celery.slow_then_sleep")
async def slow_then_sleep(tag: str, seconds: float) -> str:
    await note(f"{tag}-before")
    await slow(tag, seconds)
    await sleep(1.0)
    await note(f"{tag}-after")
    return tag
