"""An order that ships each parcel in a child workflow, and a second order cancelled by an
operator while its shipments wait for the carrier: the cancellation reaches the children.

python examples/functional/order_with_children.py

In-process on a virtual clock; on Celery the same code runs on workers, children fan out
across them, and ``pyworkflow.cancel(run_id)`` (or ``pyworkflow runs cancel``) stops an order.
"""

import asyncio
import tempfile

from pyworkflow import ChildWorkflowError, cancel_async, run_child, sleep, step, workflow
from pyworkflow.storage.sqlite import SQLiteStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock


@step
async def book_carrier(parcel: str) -> str:
    return f"label-{parcel}"


@workflow(name="ship_parcel")
async def ship_parcel(parcel: str) -> str:
    label = await book_carrier(parcel)
    await sleep("2h")  # the carrier picks the parcel up
    return label


@workflow(name="fulfil_order")
async def fulfil_order(order_id: str, parcels: list[str]) -> dict[str, object]:
    try:
        labels = await asyncio.gather(*(run_child(ship_parcel, p) for p in parcels))
    except ChildWorkflowError as exc:
        return {"order": order_id, "status": "shipping failed", "why": str(exc)}
    return {"order": order_id, "status": "shipped", "labels": list(labels)}


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        storage = SQLiteStorageBackend(f"{folder}/runs.db")
        runtime = LocalRuntime(storage, clock=VirtualClock())

        shipped = await runtime.start(fulfil_order, "ORD-1", ["A", "B", "C"])
        run = await runtime.run_until_complete(shipped)
        children = await storage.list_children(shipped)
        print(run.status, run.result, f"({len(children.runs)} child runs)")
        assert run.result["labels"] == ["label-A", "label-B", "label-C"]

        doomed = await runtime.start(fulfil_order, "ORD-2", ["D", "E"])  # children asleep now
        assert await cancel_async(doomed, reason="customer refunded", storage=storage)
        run = await runtime.run_until_complete(doomed)
        kids = [(await storage.get_run(c.run_id)).status for c in (await storage.list_children(doomed)).runs]
        print(run.status, "children:", kids)
        assert run.status == "cancelled" and set(kids) == {"cancelled"}
        await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
