"""Versioning: ``patched()`` keeps runs started on old code on their path, and
``pyworkflow.testing.replay`` checks recorded histories against the current code without
running a step or writing anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyworkflow import NonDeterminismError, deprecate_patch, patched, sleep, step, workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock, export_run, replay

ran: list[str] = []


@step(name="ver.a")
async def a(x: int) -> int:
    ran.append("a")
    return x + 1


@step(name="ver.b")
async def b(x: int) -> int:
    ran.append("b")
    return x * 2


@step(name="ver.receipt")
async def receipt(x: int) -> str:
    ran.append("receipt")
    return f"receipt {x}"


@workflow(name="ver.order")
async def order(x: int) -> int:
    y = await a(x)
    await sleep("1h")
    return await b(y)


# The same workflow name after a deploy: a new step guarded by a patch, after the sleep.
VERSION = {"patched": False}


@workflow(name="ver.shipping")
async def shipping(x: int) -> list[Any]:
    y = await a(x)
    await sleep("1h")
    extra: list[Any] = []
    if VERSION["patched"] and patched("send-receipt"):
        extra.append(await receipt(y))
    return [await b(y), *extra]


async def _done(rt: LocalRuntime, wf: Any, *args: Any) -> str:
    run_id = await rt.start(wf, *args)
    await rt.run_until_complete(run_id)
    return run_id


@pytest.fixture
def rt() -> LocalRuntime:
    return LocalRuntime(InMemoryStorageBackend(), clock=VirtualClock())


async def test_replay_of_finished_and_running_runs_runs_nothing_and_writes_nothing(
    rt: LocalRuntime, tmp_path: Path
) -> None:
    done = await _done(rt, order, 1)
    running = await rt.start(order, 5)  # asleep after step a
    ran.clear()
    before = [e.seq for e in await rt.storage.get_events(done)]
    result = await replay(order, await export_run(done, storage=rt.storage))
    assert (result.calls, result.complete) == (3, True)
    partial = await replay(None, await export_run(running, storage=rt.storage))  # the workflow the history names
    assert (partial.calls, partial.complete) == (2, False)
    assert ran == []  # no step ran
    assert [e.seq for e in await rt.storage.get_events(done)] == before
    # a folder of exported histories, replayed from files; and a plain list of events
    folder = tmp_path / "histories"
    folder.mkdir()
    (folder / "done.json").write_text(json.dumps(await export_run(done, storage=rt.storage)))
    for path in folder.glob("*.json"):
        assert (await replay(order, path)).complete
    assert (await replay(order, await rt.storage.get_events(done))).calls == 3


async def test_a_changed_order_of_calls_is_named_by_replay(rt: LocalRuntime) -> None:
    doc = await export_run(await _done(rt, order, 1), storage=rt.storage)

    @workflow(name="ver.order_swapped")
    async def swapped(x: int) -> int:
        y = await b(x)
        await sleep("1h")
        return await a(y)

    doc["events"][0]["data"]["workflow"] = "ver.order_swapped"
    with pytest.raises(NonDeterminismError) as info:
        await replay(swapped, doc)
    assert "recorded as step 'ver.a'" in str(info.value) and "now calls step 'ver.b'" in str(info.value)


async def test_a_workflow_that_now_ends_early_or_returns_otherwise_diverges(rt: LocalRuntime) -> None:
    doc = await export_run(await _done(rt, order, 1), storage=rt.storage)

    @workflow(name="ver.order_short")
    async def short(x: int) -> int:
        return await a(x)

    @workflow(name="ver.order_other_result")
    async def other(x: int) -> int:
        y = await a(x)
        await sleep("1h")
        return await b(y) + 1

    for wf, name, says in (
        (short, "ver.order_short", "without making durable call #2"),
        (other, "ver.order_other_result", "now returns 5"),
    ):
        doc["events"][0]["data"]["workflow"] = name
        with pytest.raises(NonDeterminismError, match=says):
            await replay(wf, doc)


async def test_bad_histories_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        await replay(order, {"format": "other", "events": []})
    with pytest.raises(ValueError, match="workflow.started"):
        await replay(order, [])
    with pytest.raises(ValueError, match="cannot read"):
        await replay(order, tmp_path / "missing.json")
    with pytest.raises(TypeError, match="history must be"):
        await replay(order, 42)  # type: ignore[arg-type]


async def test_patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new(rt: LocalRuntime) -> None:
    VERSION["patched"] = False
    old_past = await _done(rt, shipping, 1)  # finished on old code
    old_before = await rt.start(shipping, 2)  # asleep before the patch point, on old code
    VERSION["patched"] = True  # the deploy
    try:
        ran.clear()
        # a run that reaches the patch point first on new code takes the new path
        assert (await rt.run_until_complete(old_before)).result == [6, "receipt 3"]
        new = await _done(rt, shipping, 3)
        assert (await rt.storage.get_run(new)).result == [8, "receipt 4"]  # type: ignore[union-attr]
        markers = [e.data for e in await rt.storage.get_events(new) if e.type == "patch.marked"]
        assert markers == [{"patch_id": "send-receipt"}]
        # replays: the old finished run keeps its old path, the patched ones their new one
        assert (await replay(shipping, await export_run(old_past, storage=rt.storage))).complete
        assert (await replay(shipping, await export_run(new, storage=rt.storage))).complete
        # the marker holds no call id: durable calls after it keep theirs
        steps = [e.data["call_id"] for e in await rt.storage.get_events(new) if e.type == "step.completed"]
        assert steps == [1, 3, 4]
    finally:
        VERSION["patched"] = False


async def test_patched_and_deprecate_patch_are_workflow_code_with_checked_ids() -> None:
    with pytest.raises(RuntimeError, match="workflow code"):
        patched("x")
    with pytest.raises(RuntimeError, match="workflow code"):
        deprecate_patch("x")
    with pytest.raises(ValueError, match="patched"):
        patched("")
