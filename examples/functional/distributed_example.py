"""Distributed: inline steps, a fan-out of dispatched steps, a durable sleep — on workers.

Start a worker that knows this module, then run the script:

    PYWORKFLOW_IMPORTS=examples.functional.distributed_example \\
        celery -A pyworkflow.celery.app worker --loglevel=info -Q pyworkflow.workflows,pyworkflow.steps
    celery -A pyworkflow.celery.app beat --loglevel=info
    python examples/functional/distributed_example.py

Both use ``PYWORKFLOW_BROKER_URL`` and ``PYWORKFLOW_STORAGE_URL`` (same values).
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyworkflow import current_step, sleep, start, step, wait_for_result, workflow  # noqa: E402


@step
async def fetch_order(order_id: str) -> list[str]:
    return [f"{order_id}-item-{i}" for i in range(4)]


@step(queue="pyworkflow.steps", max_retries=2, timeout="1m")
async def pack_item(item: str) -> str:
    info = current_step()
    # runs as its own task on a step worker; the key is stable across redeliveries
    return f"packed {item} ({info.idempotency_key if info else 'inline'})"


@step
async def notify(order_id: str, count: int) -> str:
    return f"{order_id}: {count} items packed"


@workflow(name="fulfil_order", max_duration="1h")
async def fulfil_order(order_id: str) -> dict[str, object]:
    items = await fetch_order(order_id)
    packed = await asyncio.gather(*(pack_item(item) for item in items))  # fans out in one activation
    await sleep("1s")
    message = await notify(order_id, len(packed))
    return {"packed": list(packed), "message": message}


def main() -> None:
    run_id = start(fulfil_order, "ORD-7", idempotency_key="fulfil-ORD-7-demo" if "--idempotent" in sys.argv else None)
    print(f"started {run_id}")
    result = wait_for_result(run_id, timeout=60)
    print(result["message"])
    for line in result["packed"]:
        print(" ", line)


if __name__ == "__main__":
    main()
