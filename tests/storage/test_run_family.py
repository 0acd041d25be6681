"""A child run names its parent (``WorkflowRun.parent_run_id``), and a parent's children
are listed by ``list_children`` with list_runs' filters and cursor, on every backend."""

from __future__ import annotations

import asyncio

from pyworkflow import run_child, start_child, workflow
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock


@workflow(name="family.leaf")
async def leaf(n: int) -> int:
    if n < 0:
        raise ValueError("negative")
    return n * 2


@workflow(name="family.other_leaf")
async def other_leaf() -> str:
    return "other"


@workflow(name="family.parent")
async def parent(count: int) -> list[int]:
    results = await asyncio.gather(*(run_child(leaf, i) for i in range(count)))
    handle = await start_child(other_leaf)
    await handle.result()
    return list(results)


async def test_children_name_their_parent_and_are_listed(storage: StorageBackend) -> None:
    rt = LocalRuntime(storage, clock=VirtualClock())
    parent_id = await rt.start(parent, 5)
    done = await rt.run_until_complete(parent_id)
    assert done.status == "completed" and done.result == [0, 2, 4, 6, 8]
    assert done.parent_run_id is None

    page = await storage.list_children(parent_id)
    assert len(page.runs) == 6 and page.next_cursor is None
    assert {r.parent_run_id for r in page.runs} == {parent_id}
    assert sorted(r.workflow_name for r in page.runs) == ["family.leaf"] * 5 + ["family.other_leaf"]
    assert [(r.created_at, r.run_id) for r in page.runs] == sorted(
        ((r.created_at, r.run_id) for r in page.runs), reverse=True
    )
    for child in page.runs:
        stored = await storage.get_run(child.run_id)
        assert stored is not None and stored.parent_run_id == parent_id

    only = await storage.list_children(parent_id, workflow_name="family.other_leaf")
    assert [r.workflow_name for r in only.runs] == ["family.other_leaf"]
    assert (await storage.list_children(parent_id, status="failed")).runs == []

    first = await storage.list_children(parent_id, limit=4)
    rest = await storage.list_children(parent_id, limit=4, cursor=first.next_cursor)
    assert len(first.runs) == 4 and len(rest.runs) == 2 and rest.next_cursor is None
    assert {r.run_id for r in first.runs + rest.runs} == {r.run_id for r in page.runs}
    assert (await storage.list_children("no-such-run")).runs == []
