"""The workflow the Flower test watches: one inline step, one dispatched step.

Imported by the test and by its worker subprocess (``PYWORKFLOW_IMPORTS``).
"""

from __future__ import annotations

from pyworkflow import step, workflow

IMPORTS = "tests.celery.flower_workflows"
WORKFLOW = "flower.process_order"
DISPATCHED_STEP = "flower.ship_parcel"


@step(name="flower.weigh_parcel")
async def weigh_parcel(order: str) -> int:
    return len(order)  # inline: runs inside the workflow's activation


@step(name=DISPATCHED_STEP, queue="pyworkflow.steps")
async def ship_parcel(order: str, weight: int) -> str:
    return f"{order}:{weight}kg"  # dispatched: its own pyworkflow.run_step task


@workflow(name=WORKFLOW)
async def process_order(order: str) -> str:
    weight = await weigh_parcel(order)
    return await ship_parcel(order, weight)
