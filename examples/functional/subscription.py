"""A subscription that renews every month for years: each run bills a few months, then
continues as a new run (its log stays short), and a cancellation signal sent to the first
run's id follows the chain to whichever run is current.

python examples/functional/subscription.py
"""

import asyncio
from datetime import timedelta

from pyworkflow import continue_as_new, send_signal_async, step, wait_for_signal, workflow, workflow_info
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

bills: list[str] = []


@step
async def bill(customer: str, month: int) -> str:
    bills.append(f"{customer}: month {month}")
    return f"invoice-{month}"


@workflow(name="subscription")
async def subscription(customer: str, month: int = 1) -> dict[str, object]:
    for _ in range(3):  # three months per run, then a fresh run
        await bill(customer, month)
        stop = await wait_for_signal("unsubscribe", timeout="30d", default=None)
        if stop is not None:
            return {"customer": customer, "months": month, "chain_index": workflow_info().chain_index}
        month += 1
    await continue_as_new(customer, month)
    raise AssertionError("continue_as_new does not return")


async def main() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock()
    runtime = LocalRuntime(storage, clock=clock)
    first = await runtime.start(subscription, "ada")
    for _ in range(10):  # ten months go by on the virtual clock, each ending a 30-day wait
        clock.advance(timedelta(days=30, seconds=1))
        await runtime.tick()
    await send_signal_async(first, "unsubscribe", {"why": "moving"}, storage=storage)  # follows the chain
    last = await runtime.run_until_complete(first)
    print(last.status, last.result, f"{len(bills)} bills")
    assert last.status == "completed" and last.result["months"] == 11 and len(bills) == 11
    assert last.result["chain_index"] == 3  # the fourth run of the chain
    assert (await storage.get_run(first)).status == "continued"


if __name__ == "__main__":
    asyncio.run(main())
