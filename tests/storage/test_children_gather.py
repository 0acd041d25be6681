"""``asyncio.gather(*[run_child(wf, i) for i in range(n)])`` on every backend: the one
activation that creates the children records every one of them (``child.started``), also
where storage really waits on I/O (Redis, PostgreSQL), so each child's end message
finds its call in the parent's log and the parent completes without its poll timer."""

from __future__ import annotations

import asyncio

from pyworkflow import run_child, step, workflow
from pyworkflow.children import child_run_id
from pyworkflow.engine import activate, create_run
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import StorageBackend


@step(name="gather.bump")
async def bump(i: int) -> int:
    return i + 1


@workflow(name="gather.child")
async def child(i: int) -> int:
    return await bump(i)


@workflow(name="gather.parent")
async def parent(n: int) -> list[int]:
    return list(await asyncio.gather(*[run_child(child, i) for i in range(n)]))


async def test_one_activation_records_every_child_a_gather_of_run_child_creates(storage: StorageBackend) -> None:
    n = 30
    run, _ = await create_run(storage, definition_of(parent), (n,), {})
    first = await activate(storage, run.run_id)
    assert first.status == "suspended"
    kids = [child_run_id(run.run_id, call) for call in range(1, n + 1)]
    started = [e.data for e in await storage.get_events(run.run_id) if e.type == "child.started"]
    assert sorted(d["call_id"] for d in started) == list(range(1, n + 1)), "a child.started per child, in one append"
    assert sorted(run_id for run_id, _ in first.woken) == sorted(kids)

    for kid in kids:  # real time: nothing is due but what the children's messages make due
        assert (await activate(storage, kid)).status == "completed"
    assert (await activate(storage, run.run_id)).status == "completed"
    done = await storage.get_run(run.run_id)
    assert done is not None and done.result == [i + 1 for i in range(n)]
