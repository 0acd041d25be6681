"""The smallest workflow: two steps, run in-process, no sleep.

python examples/functional/simple_no_sleep.py
"""

import asyncio

from pyworkflow import step, workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import start_local


@step
async def add(a: int, b: int) -> int:
    return a + b


@step
async def double(x: int) -> int:
    return x * 2


@workflow(name="simple_no_sleep")
async def compute(a: int, b: int) -> int:
    total = await add(a, b)
    return await double(total)


async def main() -> None:
    storage = InMemoryStorageBackend()
    run_id = await start_local(compute, 2, 3, storage=storage)
    run = await storage.get_run(run_id)
    assert run is not None
    print(f"run {run_id}: {run.status} -> {run.result}")
    for event in await storage.get_events(run_id):
        print(f"  {event.seq:>2} {event.type}")
    assert run.status == "completed" and run.result == 10


if __name__ == "__main__":
    asyncio.run(main())
