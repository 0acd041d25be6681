"""Instructions per 3-step workflow on memory storage: a figure the VM's noise cannot move.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out .venv/bin/python benchmarks/instructions.py 100
    valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out .venv/bin/python benchmarks/instructions.py 600

(the difference of the two "Collected" totals) / 500 = instructions per workflow.

Add ``--no-gc`` (after the count) to measure with the garbage collector off: the engine's
own work. With it on, the figure also holds the full collections that walk every run the
memory backend keeps, whose placement is a threshold effect: a change that allocates a
little differently moves it by tens of thousands of instructions either way.
"""

import asyncio
import gc
import sys

from pyworkflow import step, workflow
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.memory import InMemoryStorageBackend


@step
async def add_one(x: int) -> int:
    return x + 1


@workflow(name="bench.three_steps")
async def three_steps(x: int) -> int:
    return await add_one(await add_one(await add_one(x)))


async def main(count: int) -> None:
    runtime = LocalRuntime(InMemoryStorageBackend())
    for i in range(count):
        await runtime.start(three_steps, i)


if __name__ == "__main__":
    if "--no-gc" in sys.argv[2:]:
        gc.disable()
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
