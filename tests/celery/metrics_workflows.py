"""Workflows of the worker metrics test (``PYWORKFLOW_IMPORTS``): ``meet`` runs a step
that waits until two pool processes run it at once, so both count a run."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pyworkflow import step, workflow
from tests.celery_workflows import mark


@step(name="metrics.meet_step")
async def meet_step(tag: str) -> int:
    mark(tag)
    path = Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / tag
    deadline = time.monotonic() + 60
    while len(set(path.read_text().split())) < 2:  # the pids that arrived
        if time.monotonic() > deadline:
            raise TimeoutError(f"no second pool process reached {tag!r} within 60 s")
        await asyncio.sleep(0.02)
    return os.getpid()


@workflow(name="metrics.meet")
async def meet(tag: str) -> int:
    return await meet_step(tag)
