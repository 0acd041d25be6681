"""Child workflows on every backend, in-process: typed results, failures as
ChildWorkflowError, 100 children through gather in order, a child never created twice
(replay, a crash before the parent's record), attached children cancelled with their
parent (3 levels), a detached child outliving a parent that returns at once, and the
parent's poll finding a child whose message was lost."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from pyworkflow import (
    ChildWorkflowError,
    cancel_async,
    run_child,
    sleep,
    start_child,
    step,
    wait_for_signal,
    workflow,
)
from pyworkflow.children import child_run_id
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

ran: list[str] = []


@step(name="kids.double")
async def double(x: int) -> int:
    ran.append(f"double {x}")
    return x * 2


@workflow(name="kids.child")
async def child(x: int) -> int:
    await sleep("10m")
    return await double(x)


@workflow(name="kids.failing")
async def failing(message: str) -> int:
    raise ValueError(message)


@workflow(name="kids.parent")
async def parent(n: int) -> list[int]:
    handles = [await start_child(child, i) for i in range(n)]
    return list(await asyncio.gather(*(h.result() for h in handles)))


@workflow(name="kids.catches")
async def catches() -> str:
    try:
        await run_child(failing, "card declined")
    except ChildWorkflowError as exc:
        return f"{exc.error_type}: {exc.error_message}"  # type: ignore[attr-defined]
    return "no error"


@workflow(name="kids.waits_forever")
async def waits_forever(level: int) -> str:
    if level > 0:
        await run_child(waits_forever, level - 1)
    return str(await wait_for_signal("never"))


@workflow(name="kids.detaches")
async def detaches() -> str:
    handle = await start_child(child, 21, detached=True)
    return handle.run_id


@workflow(name="kids.leaves_early")
async def leaves_early() -> str:
    handle = await start_child(waits_forever, 0)
    return handle.run_id  # returns without waiting: the attached child is cancelled


def rt_of(storage: StorageBackend) -> LocalRuntime:
    return LocalRuntime(storage, clock=VirtualClock())


async def test_children_return_typed_results_in_order_and_run_once(storage: StorageBackend) -> None:
    ran.clear()
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(parent, 5))
    assert run.status == "completed" and run.result == [0, 2, 4, 6, 8]
    assert sorted(ran) == sorted(f"double {i}" for i in range(5))  # each child's step ran once
    kids = [e.data for e in await storage.get_events(run.run_id) if e.type == "child.started"]
    assert [k["run_id"] for k in kids] == [child_run_id(run.run_id, i + 1) for i in range(5)]
    for kid in kids:
        record = await storage.get_run(kid["run_id"])
        assert record is not None and record.status == "completed"
        started = (await storage.get_events(kid["run_id"]))[0]
        assert started.data["parent"] == {
            "run_id": run.run_id,
            "call_id": kid["call_id"],
            "detached": False,
            "workflow": "kids.parent",  # the name its wake-up message carries
        }


async def test_a_hundred_children_through_gather(storage: StorageBackend) -> None:
    if type(storage).__name__ not in ("InMemoryStorageBackend", "SQLiteStorageBackend", "EncryptedStorage"):
        n = 30  # the slower backends: the same path, fewer runs
    else:
        n = 100
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(parent, n))
    assert run.result == [2 * i for i in range(n)]


async def test_a_failed_child_raises_child_workflow_error_in_the_parent(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(catches))
    assert run.status == "completed" and run.result == "builtins.ValueError: card declined"


async def test_cancelling_a_parent_cancels_its_attached_children_three_levels_down(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    top = await rt.start(waits_forever, 2)
    middle = child_run_id(top, 1)
    bottom = child_run_id(middle, 1)
    for run_id in (top, middle, bottom):
        record = await storage.get_run(run_id)
        assert record is not None and record.status == "suspended"
    assert await cancel_async(top, storage=storage)
    await rt.resume(top)  # the runtime then activates what each end made due
    for run_id in (top, middle, bottom):
        record = await storage.get_run(run_id)
        assert record is not None and record.status == "cancelled", run_id


async def test_an_attached_child_is_cancelled_when_its_parent_returns(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(leaves_early))
    kid = await storage.get_run(run.result)
    assert kid is not None and kid.status == "cancelled"


async def test_a_detached_child_outlives_a_parent_that_returns_at_once(storage: StorageBackend) -> None:
    ran.clear()
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(detaches))
    assert run.status == "completed"
    kid = await rt.run_until_complete(run.result)  # started, then asleep; not cancelled
    assert kid.status == "completed" and kid.result == 42


async def test_a_child_created_before_a_crash_is_found_not_created_again(storage: StorageBackend) -> None:
    # The parent died after creating its child and before recording child.started: its
    # replay derives the same id, finds the child, and records it; one child only.
    from pyworkflow.engine import create_run
    from pyworkflow.registry import definition_of

    rt = rt_of(storage)
    run, _ = await create_run(storage, definition_of(parent), (1,), {})
    orphan = child_run_id(run.run_id, 1)
    parent_info = {"run_id": run.run_id, "call_id": 1, "detached": False}
    await create_run(storage, definition_of(child), (0,), {}, run_id=orphan, parent=parent_info)
    done = await rt.run_until_complete(run.run_id)
    assert done.result == [0]
    assert [e.data["run_id"] for e in await storage.get_events(run.run_id) if e.type == "child.started"] == [orphan]
    page = await storage.list_runs(workflow_name="kids.child")
    assert [r.run_id for r in page.runs].count(orphan) == 1 and len(page.runs) == 1


async def test_a_child_that_ended_before_its_parent_recorded_it_is_seen_at_once(storage: StorageBackend) -> None:
    # The parent died after creating its child and before recording child.started; the
    # child then ran to its end, and its message reached a parent that did not know it
    # yet. The parent's next activation records the child's end without its hourly poll.
    from pyworkflow.engine import create_run
    from pyworkflow.registry import definition_of

    rt = rt_of(storage)
    run, _ = await create_run(storage, definition_of(parent), (1,), {})
    orphan = child_run_id(run.run_id, 1)
    parent_info = {"run_id": run.run_id, "call_id": 1, "detached": False}
    await create_run(storage, definition_of(child), (4,), {}, run_id=orphan, parent=parent_info)
    assert (await rt.run_until_complete(orphan)).status == "completed"  # it sleeps 10 minutes
    # its end woke the parent, whose first activation found it ended: no hour-long poll
    done = await storage.get_run(run.run_id)
    assert done is not None and done.status == "completed" and done.result == [8]
    assert done.completed_at is not None and done.completed_at - run.created_at < timedelta(minutes=30)


async def test_the_parent_finds_a_child_whose_message_was_lost(storage: StorageBackend) -> None:
    # The child ended but its post to the parent was lost with its worker: the parent,
    # woken by its poll timer, looks at the child itself.
    rt = rt_of(storage)
    top = await rt.start(parent, 1)
    kid = child_run_id(top, 1)
    messages = await storage.get_messages(top)
    assert messages == []
    # run the child to its end without telling the parent: drop its message
    original = storage.post_message

    async def lose_child_messages(run_id: str, kind: str, payload: Any = None, **kw: Any) -> str:
        if kind == "child":
            return "lost"
        return await original(run_id, kind, payload, **kw)

    storage.post_message = lose_child_messages  # type: ignore[method-assign]
    try:
        done_kid = await rt.run_until_complete(kid)
    finally:
        storage.post_message = original  # type: ignore[method-assign]
    assert done_kid.status == "completed"
    top_run = await storage.get_run(top)
    assert top_run is not None and top_run.status == "suspended"
    done = await rt.run_until_complete(top)  # its poll timer (1 h) finds the child ended
    assert done.result == [0]


def test_start_child_is_workflow_code() -> None:
    with pytest.raises(RuntimeError, match="workflow code"):
        asyncio.run(start_child(child, 1))


@workflow(name="kids.listens_twice")
async def listens_twice() -> list[Any]:
    return [await wait_for_signal("go"), await wait_for_signal("go")]


@workflow(name="kids.talks")
async def talks() -> list[Any]:
    handle = await start_child(listens_twice)
    await handle.signal("go", 1)
    await handle.signal("go", 2)  # the same name twice: two signals, each sent once
    await sleep("1m")  # replays re-send both under the same keys: nothing doubles
    return list(await handle.result())


async def test_a_handle_signals_its_child_once_per_call(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(talks))
    assert run.status == "completed" and run.result == [1, 2]
    kid = child_run_id(run.run_id, 1)
    assert [m.payload["payload"] for m in await storage.get_messages(kid, pending_only=False)] == [1, 2]
