"""Retries, errors and sleeps in one order workflow, driven to the end on a virtual clock.

python examples/functional/basic_workflow.py
"""

import asyncio
import tempfile
from dataclasses import dataclass
from decimal import Decimal

from pyworkflow import FatalError, RetryableError, get_logger, sleep, step, workflow
from pyworkflow.storage.file import FileStorageBackend
from pyworkflow.testing import run_local, start_local

log = get_logger("orders")
_gateway_calls: dict[str, int] = {}


@dataclass
class Payment:
    order_id: str
    amount: Decimal
    attempts: int


@step
async def reserve_stock(order_id: str) -> bool:
    log.info("stock reserved", order_id=order_id)
    return True


@step(max_retries=5, retry_delay="exponential")
async def charge(order_id: str, amount: Decimal) -> Payment:
    calls = _gateway_calls[order_id] = _gateway_calls.get(order_id, 0) + 1
    if order_id.startswith("BAD"):
        raise FatalError("card declined")  # never retried
    if calls < 3:
        raise RetryableError("gateway busy", retry_after="30s")  # durable wait, then retry
    return Payment(order_id, amount, calls)


@step
async def ship(order_id: str) -> str:
    return f"tracking-{order_id}"


@workflow(name="process_order", max_duration="1h")
async def process_order(order_id: str, amount: Decimal) -> dict[str, object]:
    await reserve_stock(order_id)
    try:
        payment = await charge(order_id, amount)
    except FatalError as exc:
        log.warning("payment refused", order_id=order_id, reason=str(exc))
        return {"order_id": order_id, "status": "refused"}
    await sleep("10m")  # let the fraud check settle
    tracking = await ship(order_id)
    return {"order_id": order_id, "status": "shipped", "paid": payment.amount, "tracking": tracking}


async def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        storage = FileStorageBackend(data)
        good = await run_local(process_order, "ORD-1", Decimal("19.99"), storage=storage)
        bad = await start_local(process_order, "BAD-2", Decimal("5.00"), storage=storage)
        for run_id in (good, bad):
            run = await storage.get_run(run_id)
            assert run is not None
            print(f"{run_id}: {run.status} -> {run.result}")
            for event in await storage.get_events(run_id):
                print(f"  {event.seq:>2} {event.timestamp:%m-%d %H:%M:%S} {event.type}")
        good_run, bad_run = await storage.get_run(good), await storage.get_run(bad)
        assert good_run is not None and good_run.result["status"] == "shipped"
        assert bad_run is not None and bad_run.result == {"order_id": "BAD-2", "status": "refused"}


if __name__ == "__main__":
    asyncio.run(main())
