"""A workflow with a declared schedule, imported only by the worker and beat subprocesses
of tests/celery/test_schedules_on_beat.py (``PYWORKFLOW_IMPORTS``): a worker started in
the test process must not declare it into another test's storage."""

from __future__ import annotations

from pyworkflow import Schedule, workflow


@workflow(name="celery.declared", schedule=Schedule(every="1s", id="declared-every-second", overlap="allow"))
async def declared() -> str:
    return "declared"
