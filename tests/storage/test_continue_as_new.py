"""Continue-as-new on every backend, in-process: a chain of 1,000 runs with signals
arriving throughout (also while a run is ending, and after it ended), none lost, none
duplicated, in order; get_run/wait_for_result/send_signal/cancel following the chain;
workflow_info's fields; a crash between creating the next run and recording the end
(one next run, whatever happens); bad arguments; replay of every run of a chain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

import pyworkflow
from pyworkflow import (
    RunStatus,
    SerializationError,
    cancel_async,
    config,
    continue_as_new,
    run_child,
    send_signal_async,
    step,
    wait_for_signal,
    workflow,
    workflow_info,
)
from pyworkflow.continuation import continued_run_id
from pyworkflow.engine import activate
from pyworkflow.events import Event
from pyworkflow.storage.base import StorageBackend, WorkflowRun
from pyworkflow.testing import LocalRuntime, VirtualClock, replay


@workflow(name="chain.counter")
async def counter(total: int, expected: int = 0, every: int = 1) -> int:
    """Takes signals ``n`` 0, 1, 2 … in order (anything else fails the run) and continues
    as new after every ``every`` of them."""
    taken = 0
    while expected < total:
        value = await wait_for_signal("n")
        if value != expected:
            raise ValueError(f"run {workflow_info().run_id}: expected signal {expected}, got {value}")
        expected += 1
        taken += 1
        if taken == every and expected < total:
            await continue_as_new(total, expected, every)
    return expected


def rt_of(storage: StorageBackend, **kw: Any) -> LocalRuntime:
    return LocalRuntime(storage, clock=VirtualClock(), **kw)


def _links(storage: StorageBackend) -> int:
    if type(storage).__name__ in ("PostgresStorageBackend", "FileStorageBackend"):
        # the same path with fewer links, to keep the suite's time in bounds: a link costs
        # some fifteen storage operations, each a committed transaction or an fsync'd write
        return 200
    return 1_000


class Sender:
    """Sends signal ``n`` 0, 1, 2 … to a chain, remembering the chain's current run (the
    message id names the run it reached), so each send starts near the chain's end."""

    def __init__(self, storage: StorageBackend, first: str, total: int) -> None:
        self.storage, self.current, self.total, self.sent = storage, first, total, 0

    async def send(self, count: int = 1) -> None:
        for _ in range(count):
            if self.sent >= self.total:
                return
            message = await send_signal_async(self.current, "n", self.sent, storage=self.storage)
            self.current = message.rsplit(":", 1)[0]
            self.sent += 1


async def test_a_thousand_links_with_signals_arriving_throughout(storage: StorageBackend) -> None:
    total = _links(storage)
    rt = rt_of(storage)
    first = await rt.start(counter, total)
    sender = Sender(storage, first, total)
    switches = {"during": 0, "after": 0}
    create, append = storage.create_run, storage.append_events

    async def creating(run: WorkflowRun, events: Any = ()) -> Any:
        created = await create(run, events)
        if events and "continued" in events[0].data:
            switches["during"] += 1  # the old run is still running: this one is left in its inbox
            await sender.send(switches["during"] % 2)
        return created

    async def appending(run_id: str, events: Any, **kw: Any) -> None:
        await append(run_id, events, **kw)
        if any(e.type == "workflow.continued" for e in events):
            switches["after"] += 1  # the old run has ended: this one follows the chain
            await sender.send(1 if switches["after"] % 3 == 0 else 0)

    storage.create_run = creating  # type: ignore[method-assign]
    storage.append_events = appending  # type: ignore[method-assign]
    try:
        burst = 0
        while True:
            burst = burst % 4 + 1
            await sender.send(burst)
            run = await rt.run_until_complete(sender.current)
            sender.current = run.run_id
            if run.status != RunStatus.SUSPENDED:
                break
    finally:
        storage.create_run = create  # type: ignore[method-assign]
        storage.append_events = append  # type: ignore[method-assign]
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.result == total and sender.sent == total  # in order: a gap or a repeat fails the run
    assert switches["during"] >= total - 1 - 1 and switches["after"] == total - 1
    record = await storage.get_run(run.run_id)
    assert record is not None
    assert (await storage.get_events(run.run_id))[0].data["continued"]["index"] == total - 1
    assert run.run_id == _nth(first, total - 1)
    # every signal entered the chain's logs; some moved from run to run before a wait took it
    payloads: set[int] = set()
    inherited = 0
    run_id = first
    for _ in range(total):
        for event in await storage.get_events(run_id):
            if event.type == "signal.received":
                payloads.add(event.data["payload"])
                inherited += "from_run" in event.data
        run_id = continued_run_id(run_id)
    assert payloads == set(range(total)) and inherited > 0


def _nth(first: str, n: int) -> str:
    run_id = first
    for _ in range(n):
        run_id = continued_run_id(run_id)
    return run_id


@pytest.fixture
def configured(storage: StorageBackend) -> Iterator[StorageBackend]:
    previous = config._storage
    config.configure(storage=storage)
    yield storage
    config._storage = previous


async def test_get_run_and_wait_for_result_follow_the_chain(configured: StorageBackend) -> None:
    storage = configured
    rt = rt_of(storage)
    first = await rt.start(counter, 3)
    for i in range(3):
        await send_signal_async(first, "n", i, storage=storage)
    last = await rt.run_until_complete(first)
    assert last.status == RunStatus.COMPLETED and last.run_id == _nth(first, 2)
    assert await pyworkflow.wait_for_result_async(first, timeout=5) == 3
    followed = await pyworkflow.get_run_async(first)
    assert followed is not None and followed.run_id == last.run_id and followed.result == 3
    raw = await storage.get_run(first)  # the backend's own record stays what it is
    assert raw is not None and raw.status == RunStatus.CONTINUED and raw.result is None
    continued = [e for e in await storage.get_events(first) if e.type == "workflow.continued"]
    assert [e.data["run_id"] for e in continued] == [continued_run_id(first)]
    # a continued run is finished: re-activating it does nothing
    before = await storage.get_events(first)
    assert (await activate(storage, first)).status == "finished"
    assert await storage.get_events(first) == before


async def test_wait_for_result_waits_along_a_chain_in_progress(configured: StorageBackend) -> None:
    storage = configured
    rt = rt_of(storage)
    first = await rt.start(counter, 4, 0, 2)
    waiter = asyncio.ensure_future(pyworkflow.wait_for_result_async(first, timeout=10, poll=0.01))
    for i in range(4):
        await send_signal_async(first, "n", i, storage=storage)
        await rt.run_until_complete((await pyworkflow.get_run_async(first)).run_id)  # type: ignore[union-attr]
    assert await waiter == 4


infos: list[pyworkflow.WorkflowInfo] = []


@step(name="chain.noop")
async def noop(i: int) -> int:
    return i


@workflow(name="chain.informed")
async def informed(links: int) -> list[int]:
    counts = []
    for i in range(3):
        await noop(i)
        counts.append(workflow_info().event_count)
        await pyworkflow.sleep("1m")  # a new activation: the count grows
    infos.append(workflow_info())
    if links > 0:
        await continue_as_new(links - 1)
    return counts


async def test_workflow_info_tells_the_run_its_place(storage: StorageBackend) -> None:
    infos.clear()
    rt = rt_of(storage)
    create = storage.create_run
    at = "2031-05-01T09:00:00+00:00"

    async def scheduled(run: WorkflowRun, events: Any = ()) -> Any:  # as a schedule records a slot
        if events and "continued" not in events[0].data:
            first = events[0]
            events = [
                Event.new(1, first.type, first.timestamp, {**first.data, "schedule": {"id": "s", "scheduled_at": at}})
            ]
        return await create(run, events)

    storage.create_run = scheduled  # type: ignore[method-assign]
    try:
        first = await rt.start(informed, 2)
        last = await rt.run_until_complete(first)
    finally:
        storage.create_run = create  # type: ignore[method-assign]
    assert last.status == RunStatus.COMPLETED
    ids = [first, _nth(first, 1), _nth(first, 2)]
    by_run: dict[str, pyworkflow.WorkflowInfo] = {}
    for info in infos:
        by_run[info.run_id] = info  # the last replay of each run
    assert [by_run[r].chain_index for r in ids] == [0, 1, 2]
    assert [by_run[r].continued_from for r in ids] == [None, ids[0], ids[1]]
    assert {by_run[r].first_run_id for r in ids} == {first}
    assert {by_run[r].workflow_name for r in ids} == {"chain.informed"}
    assert by_run[first].scheduled_at == datetime(2031, 5, 1, 9, tzinfo=timezone.utc)
    assert by_run[first].schedule_id == "s"
    assert by_run[ids[1]].scheduled_at is None and by_run[ids[1]].schedule_id is None
    counts = last.result
    assert counts[0] < counts[1] < counts[2]  # the log grew between the activations
    # the same on every replay: each activation replayed the earlier counts unchanged
    for run_id in ids:
        events = await storage.get_events(run_id)
        await replay(informed, events)
    with pytest.raises(dataclasses_frozen()):
        by_run[first].run_id = "x"  # type: ignore[misc]


def dataclasses_frozen() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_workflow_info_and_continue_as_new_are_workflow_code() -> None:
    with pytest.raises(RuntimeError, match="workflow code"):
        workflow_info()
    with pytest.raises(RuntimeError, match="workflow code"):
        asyncio.run(continue_as_new(1))


@workflow(name="chain.crashy")
async def crashy(links: int, seen: int = 0) -> int:
    got = int(await wait_for_signal("n"))
    if links > 0:
        await continue_as_new(links - 1, seen + got)
    return seen + got


class WorkerDied(Exception):
    """Not a storage error: the engine does not retry it; the activation ends with it."""


async def test_a_crash_between_creating_the_next_run_and_recording_the_end(storage: StorageBackend) -> None:
    # The activation dies after the next run is created and before workflow.continued is
    # written; a signal arrives meanwhile. The recovery replays, derives the same next id,
    # finds the run, records the end: one next run, and the signal reaches it.
    crashing = rt_of(storage, lease_ttl=0.2)
    first = await crashing.start(crashy, 1)
    append = storage.append_events
    crashes = 0

    async def dies(run_id: str, events: Any, **kw: Any) -> None:
        nonlocal crashes
        if any(e.type == "workflow.continued" for e in events) and not crashes:
            crashes += 1
            await send_signal_async(first, "n", 10, storage=storage)  # lands in the old run's inbox
            raise WorkerDied("the worker died here")
        await append(run_id, events, **kw)

    storage.append_events = dies  # type: ignore[method-assign]
    try:
        await send_signal_async(first, "n", 5, storage=storage)
        with pytest.raises(WorkerDied):
            await crashing.resume(first)
    finally:
        storage.append_events = append  # type: ignore[method-assign]
    following = continued_run_id(first)
    created = await storage.get_run(following)
    old = await storage.get_run(first)
    assert created is not None and created.status == RunStatus.PENDING
    assert old is not None and not old.status.is_terminal  # its lease is held by the dead activation
    deadline = time.monotonic() + 10
    rt = rt_of(storage)
    while (await storage.get_run(first)).status != RunStatus.CONTINUED:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the crashed run was not recovered"
        await rt.tick()  # recovers the expired lease and re-activates the run
        await asyncio.sleep(0.05)
    last = await rt.run_until_complete(following)
    assert last.status == RunStatus.COMPLETED and last.result == 15
    page = await storage.list_runs(workflow_name="chain.crashy")
    assert sorted(r.run_id for r in page.runs) == sorted([first, following])
    assert [e.type for e in await storage.get_events(following)].count("workflow.started") == 1


@workflow(name="chain.bad_args")
async def bad_args(n: int) -> str:
    problems = []
    try:
        await continue_as_new(1, 2, 3)
    except TypeError as exc:
        problems.append(str(exc))
    try:
        await continue_as_new(object())
    except SerializationError as exc:
        problems.append(str(exc))
    return " | ".join(problems)


async def test_bad_arguments_raise_in_the_workflow_and_record_nothing(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(bad_args, 1))
    assert run.status == RunStatus.COMPLETED
    assert f"run {run.run_id!r}: continue_as_new(): chain.bad_args()" in run.result
    assert "positional" in run.result and "argument 'n'" in run.result
    assert await storage.get_run(continued_run_id(run.run_id)) is None
    assert not [e for e in await storage.get_events(run.run_id) if e.type == "workflow.continued"]


async def test_cancel_and_signals_reach_the_chains_current_run(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    first = await rt.start(counter, 10)
    for i in range(3):
        await send_signal_async(first, "n", i, storage=storage)
    current = await rt.run_until_complete(first)
    assert current.run_id == _nth(first, 3) and current.status == RunStatus.SUSPENDED
    assert await cancel_async(first, storage=storage) is True  # through the chain
    assert await cancel_async(first, storage=storage) is True  # idempotent
    done = await rt.run_until_complete(current.run_id)
    assert done.status == RunStatus.CANCELLED
    assert await cancel_async(first, storage=storage) is False  # the chain has ended
    with pytest.raises(pyworkflow.RunFinishedError):
        await send_signal_async(first, "n", 3, storage=storage)


async def test_a_cancel_that_arrives_while_a_run_continues_reaches_the_next_one(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    first = await rt.start(counter, 10)
    create = storage.create_run

    async def creating(run: WorkflowRun, events: Any = ()) -> Any:
        created = await create(run, events)
        if events and "continued" in events[0].data:
            assert await cancel_async(first, storage=storage) is True  # the old run is still running
        return created

    storage.create_run = creating  # type: ignore[method-assign]
    try:
        await send_signal_async(first, "n", 0, storage=storage)
        await send_signal_async(first, "n", 1, storage=storage)  # left buffered: it moves too
        done = await rt.run_until_complete(first)
    finally:
        storage.create_run = create  # type: ignore[method-assign]
    assert done.run_id == continued_run_id(first) and done.status == RunStatus.CANCELLED
    types = [e.type for e in await storage.get_events(done.run_id)]
    assert types[1:4] == ["messages.inherited", "signal.received", "cancel.requested"]


async def test_replay_of_each_run_of_a_chain_gives_the_same_log(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    first = await rt.start(counter, 6, 0, 2)
    for i in range(6):
        await send_signal_async(first, "n", i, storage=storage)
    last = await rt.run_until_complete(first)
    assert last.result == 6
    run_id = first
    for _ in range(3):
        events = await storage.get_events(run_id)
        result = await replay(counter, events)
        assert result.complete
        assert await activate(storage, run_id) is not None
        assert await storage.get_events(run_id) == events  # re-activation wrote nothing
        run_id = continued_run_id(run_id)


@workflow(name="chain.child")
async def chained_child(left: int, total: int = 0) -> int:
    await pyworkflow.sleep("1m")
    if left > 0:
        await continue_as_new(left - 1, total + left)
    return total


@workflow(name="chain.parent")
async def chain_parent() -> int:
    return int(await run_child(chained_child, 3))


async def test_a_child_that_continues_gives_its_parent_the_chains_result(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(chain_parent))
    assert run.status == RunStatus.COMPLETED and run.result == 6


async def test_continued_runs_are_finished_runs_to_every_listing_and_prune(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    first = await rt.start(counter, 3)
    for i in range(3):
        await send_signal_async(first, "n", i, storage=storage)
    last = await rt.run_until_complete(first)
    chain = [first, _nth(first, 1), _nth(first, 2)]
    assert last.run_id == chain[2]
    continued = await storage.list_runs(status=RunStatus.CONTINUED)
    assert sorted(r.run_id for r in continued.runs) == sorted(chain[:2])
    both = await storage.list_runs(status="continued", workflow_name="chain.counter")
    assert sorted(r.run_id for r in both.runs) == sorted(chain[:2])
    for run_id in chain[:2]:
        record = await storage.get_run(run_id)
        assert record is not None and record.status.is_terminal and record.completed_at is not None
        assert await storage.get_timer(run_id) is None  # a finished run never wakes
        with pytest.raises(pyworkflow.RunFinishedError):
            await storage.post_message(run_id, "signal", {"name": "n", "payload": 9})
    later = datetime.now(timezone.utc).replace(year=2100)
    assert await storage.prune_runs(older_than=later, statuses=["continued"]) == 2
    assert await storage.get_run(chain[0]) is None and await storage.get_run(chain[2]) is not None
    assert await storage.prune_runs(older_than=later) == 1  # by default every finished status


@workflow(name="chain.publishes")
async def publishes(left: int) -> str:
    pyworkflow.set_state("left", left)
    await wait_for_signal("go")
    if left > 0:
        await continue_as_new(left - 1)
    return "done"


async def test_state_pause_and_signals_follow_the_chain(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    first = await rt.start(publishes, 2)
    await send_signal_async(first, "go", storage=storage)
    current = await rt.run_until_complete(first)
    assert current.run_id == _nth(first, 1)
    assert await pyworkflow.get_state_async(first, "left", storage=storage) == 1  # the current run's
    assert await pyworkflow.pause_async(first, storage=storage) is True
    await send_signal_async(first, "go", storage=storage)
    held = await rt.run_until_complete(current.run_id)
    assert held.run_id == current.run_id and held.status == RunStatus.PAUSED
    assert await pyworkflow.unpause_async(first, storage=storage) is True
    current = await rt.run_until_complete(current.run_id)
    assert current.run_id == _nth(first, 2) and current.status == RunStatus.SUSPENDED
    assert await pyworkflow.get_state_async(first, "left", timeout=1, storage=storage) == 0


async def test_a_next_run_activated_early_waits_for_its_predecessor(storage: StorageBackend) -> None:
    # The next run's start guard fired before its predecessor recorded its end (the
    # predecessor's activation is slow, or dead and not yet recovered): it waits.
    rt = rt_of(storage)
    first = await rt.start(crashy, 1)
    append = storage.append_events
    following = continued_run_id(first)

    async def slow(run_id: str, events: Any, **kw: Any) -> None:
        if any(e.type == "workflow.continued" for e in events):
            early = await activate(storage, following, clock=rt.clock)  # the guard fires now
            assert early.status == "suspended" and early.wake_at is not None
            await send_signal_async(first, "n", 2, storage=storage)  # still the old run's
        await append(run_id, events, **kw)

    storage.append_events = slow  # type: ignore[method-assign]
    try:
        await send_signal_async(first, "n", 1, storage=storage)
        await rt.resume(first)
    finally:
        storage.append_events = append  # type: ignore[method-assign]
    last = await rt.run_until_complete(following)
    assert last.status == RunStatus.COMPLETED and last.result == 3
    types = [e.type for e in await storage.get_events(following)]
    assert types[:2] == ["workflow.started", "workflow.suspended"]
    assert types.count("messages.inherited") == 1


async def test_a_next_run_whose_predecessor_never_continued_is_cancelled(storage: StorageBackend) -> None:
    # Created by a continue_as_new() whose activation died; before the recovery, the old
    # run was cancelled, so its replay raised CancelledError where it had continued.
    crashing = rt_of(storage, lease_ttl=0.2)
    first = await crashing.start(crashy, 1)
    append = storage.append_events

    async def dies(run_id: str, events: Any, **kw: Any) -> None:
        if any(e.type == "workflow.continued" for e in events):
            raise WorkerDied("the worker died here")
        await append(run_id, events, **kw)

    storage.append_events = dies  # type: ignore[method-assign]
    try:
        await send_signal_async(first, "n", 1, storage=storage)
        with pytest.raises(WorkerDied):
            await crashing.resume(first)
    finally:
        storage.append_events = append  # type: ignore[method-assign]
    assert await cancel_async(first, storage=storage) is True
    rt = rt_of(storage)
    deadline = time.monotonic() + 10
    while not (await storage.get_run(first)).status.is_terminal:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the crashed run was not recovered"
        await rt.tick()
        await asyncio.sleep(0.05)
    old = await storage.get_run(first)
    assert old is not None and old.status == RunStatus.CANCELLED
    orphan = await rt.run_until_complete(continued_run_id(first))
    assert orphan.status == RunStatus.CANCELLED
    ended = (await storage.get_events(orphan.run_id))[-1]
    assert ended.type == "workflow.cancelled" and "ended cancelled without continuing" in ended.data["reason"]


async def test_a_signal_resent_with_its_key_after_the_run_continued_is_stored_once(storage: StorageBackend) -> None:
    # Sent while the run was ending (it moved to the next run), then sent again with the
    # same key once the run had continued: the old run answers the repeated key, so the
    # chain holds the signal once.
    rt = rt_of(storage)
    first = await rt.start(counter, 3)
    create = storage.create_run

    async def creating(run: WorkflowRun, events: Any = ()) -> Any:
        created = await create(run, events)
        if events and "continued" in events[0].data:
            await send_signal_async(first, "n", 1, idempotency_key="one", storage=storage)
        return created

    storage.create_run = creating  # type: ignore[method-assign]
    try:
        await send_signal_async(first, "n", 0, idempotency_key="zero", storage=storage)
        current = await rt.run_until_complete(first)
    finally:
        storage.create_run = create  # type: ignore[method-assign]
    assert current.run_id == _nth(first, 2) and current.status == RunStatus.SUSPENDED
    again = await send_signal_async(first, "n", 1, idempotency_key="one", storage=storage)
    assert again.startswith(f"{first}:")  # the first run's message, found by its key
    await send_signal_async(first, "n", 2, idempotency_key="two", storage=storage)
    await send_signal_async(first, "n", 2, idempotency_key="two", storage=storage)  # the current run's key
    done = await rt.run_until_complete(current.run_id)
    assert done.status == RunStatus.COMPLETED and done.result == 3  # a repeat would have failed it


@step(name="chain.asks_in_a_step")
async def asks_in_a_step() -> str:
    try:
        workflow_info()
    except RuntimeError as exc:
        return str(exc)
    return "no error"


@workflow(name="chain.asks")
async def asks() -> str:
    return await asks_in_a_step()


async def test_workflow_info_in_a_step_is_refused(storage: StorageBackend) -> None:
    rt = rt_of(storage)
    run = await rt.run_until_complete(await rt.start(asks))
    assert "workflow_info() is workflow code" in run.result


slots_seen: list[datetime | None] = []


@workflow(name="chain.scheduled")
async def scheduled(link: int = 0) -> str:
    slots_seen.append(workflow_info().scheduled_at)
    if link == 0:
        await continue_as_new(1)
    return str(await wait_for_signal("done"))


async def test_a_scheduled_run_knows_its_slot_and_its_chain_counts_as_running(storage: StorageBackend) -> None:
    # overlap="skip": while the chain a slot started goes on in a later run, the next slot
    # is skipped (the slot's own run has ended, continued)
    from datetime import timedelta

    from pyworkflow import create_schedule_async

    slots_seen.clear()
    start = datetime(2027, 6, 1, 12, 0, tzinfo=timezone.utc)
    clock = VirtualClock(start)
    rt = LocalRuntime(storage, clock=clock)
    await create_schedule_async("hourly-chain", scheduled, every="1h", overlap="skip", storage=storage, clock=clock)
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        await rt.tick()
    page = await storage.list_runs(workflow_name="chain.scheduled")
    assert len(page.runs) == 2  # the first slot's run and the run it continued as; no other slot
    first = next(r for r in page.runs if r.status == RunStatus.CONTINUED)
    assert slots_seen[0] == start + timedelta(hours=1)  # the slot the schedule recorded
    assert slots_seen[-1] is None  # a run continue_as_new started has no slot of its own
    following = await storage.get_run(continued_run_id(first.run_id))
    assert following is not None and following.status == RunStatus.SUSPENDED
