"""Schedules on every backend, in-process with a virtual clock: each slot starts one run
(with two tickers racing too), catch-up after an outage by each policy, the overlap
policies with a slow workflow, pause and resume, trigger and backfill, and the slot a run
records in ``workflow.started``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pyworkflow import (
    backfill_schedule_async,
    create_schedule_async,
    get_schedule_async,
    list_schedules_async,
    pause_schedule_async,
    resume_schedule_async,
    sleep,
    trigger_schedule_async,
    workflow,
)
from pyworkflow.schedules.firing import slot_key
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

UTC = timezone.utc
#: A round start: every="5m" slots fall at :00, :05 … after it.
T0 = datetime(2027, 6, 1, 12, 0, 0, tzinfo=UTC)


@workflow(name="sched.report")
async def report(label: str = "daily") -> dict[str, Any]:
    return {"label": label}


@workflow(name="sched.slow")
async def slow(seconds: int) -> str:
    await sleep(seconds)
    return "done"


def runtime(storage: StorageBackend, at: datetime = T0) -> tuple[LocalRuntime, VirtualClock]:
    clock = VirtualClock(at)
    return LocalRuntime(storage, clock=clock), clock


async def scheduled_runs(storage: StorageBackend, workflow_name: str) -> list[Any]:
    """The runs of a workflow, oldest first, with the slot each was started for."""
    page = await storage.list_runs(workflow_name=workflow_name, limit=1000)
    runs = sorted(page.runs, key=lambda r: r.created_at)
    out = []
    for run in runs:
        started = (await storage.get_events(run.run_id, limit=1))[0]
        out.append((run, datetime.fromisoformat(started.data["schedule"]["scheduled_at"])))
    return out


async def tick_every(rt: LocalRuntime, clock: VirtualClock, step: timedelta, until: datetime) -> None:
    """Tick at each ``step`` up to ``until`` (the virtual clock also moves a little in real
    time between jumps, so the count comes from the times, not from ``clock.now()``)."""
    for _ in range(round((until - clock.now()) / step)):
        clock.advance(step)
        await rt.tick()


async def test_each_slot_starts_one_run_that_knows_its_slot(storage: StorageBackend) -> None:
    rt, clock = runtime(storage)
    info = await create_schedule_async(
        "five-minutes", report, every="5m", args=("hourly",), storage=storage, clock=clock
    )
    assert info.next_slot == T0 + timedelta(minutes=5) and info.fired == 0

    await tick_every(rt, clock, timedelta(minutes=1), T0 + timedelta(minutes=30))
    runs = await scheduled_runs(storage, "sched.report")
    slots = [T0 + timedelta(minutes=5 * i) for i in range(1, 7)]
    assert [slot for _, slot in runs] == slots
    for run, slot in runs:
        assert run.status == "completed"
        assert run.idempotency_key == slot_key("five-minutes", slot)
        assert run.result == {"label": "hourly"}
        assert run.created_at - slot < timedelta(minutes=1)  # on the first tick after the slot
    info = await get_schedule_async("five-minutes", storage=storage)
    assert (info.fired, info.skipped, info.missed, info.failed) == (6, 0, 0, 0)
    assert info.next_slot == T0 + timedelta(minutes=35)
    assert [o.action for o in info.recent] == ["started"] * 6
    assert info.last_run_id == runs[-1][0].run_id


async def test_two_tickers_racing_start_each_slot_once(storage: StorageBackend) -> None:
    clock = VirtualClock(T0)
    one, two = LocalRuntime(storage, clock=clock), LocalRuntime(storage, clock=clock)
    await create_schedule_async("raced", report, every="1m", storage=storage, clock=clock)
    for _ in range(12):
        clock.advance(60)
        await asyncio.gather(one.fire_schedules(), two.fire_schedules(), one.tick(), two.tick())
    runs = await scheduled_runs(storage, "sched.report")
    slots = [slot for _, slot in runs]
    assert slots == [T0 + timedelta(minutes=i) for i in range(1, 13)]  # none twice, none missing
    assert (await get_schedule_async("raced", storage=storage)).missed == 0


@pytest.mark.parametrize(
    ("catchup", "fired_slots", "missed"),
    [
        ("latest", [50], 9),
        ("none", [], 10),
        ("all", [5, 10, 15, 20, 25, 30, 35, 40, 45, 50], 0),
        ("15m", [40, 45, 50], 7),
    ],
)
async def test_catch_up_after_an_outage(
    storage: StorageBackend, catchup: str, fired_slots: list[int], missed: int
) -> None:
    rt, clock = runtime(storage)
    await create_schedule_async("outage", report, every="5m", catchup=catchup, storage=storage, clock=clock)
    clock.advance(timedelta(minutes=52))  # no tick ran for 52 minutes: slots :05 … :50 are late
    await rt.tick()
    runs = await scheduled_runs(storage, "sched.report")
    assert [slot for _, slot in runs] == [T0 + timedelta(minutes=m) for m in fired_slots]
    info = await get_schedule_async("outage", storage=storage)
    assert (info.fired, info.missed) == (len(fired_slots), missed)
    assert info.next_slot == T0 + timedelta(minutes=55)
    await rt.tick()  # nothing more for the same outage
    assert len(await scheduled_runs(storage, "sched.report")) == len(fired_slots)


async def overlap_run(storage: StorageBackend, overlap: str) -> tuple[list[Any], Any]:
    """every="1m" of a workflow that sleeps 150 s, ticked each 30 s for 6 minutes."""
    rt, clock = runtime(storage)
    await create_schedule_async("slow", slow, every="1m", args=(150,), overlap=overlap, storage=storage, clock=clock)
    await tick_every(rt, clock, timedelta(seconds=30), T0 + timedelta(minutes=6))
    return await scheduled_runs(storage, "sched.slow"), await get_schedule_async("slow", storage=storage)


async def test_overlap_skip(storage: StorageBackend) -> None:
    runs, info = await overlap_run(storage, "skip")
    # :01 runs until 3:30, so :02 and :03 are skipped; :04 starts (until 6:30), :05 and :06 skipped
    assert [slot.minute for _, slot in runs] == [1, 4]
    assert (info.fired, info.skipped) == (2, 4)
    assert [o.action for o in info.recent] == ["started", "skipped", "skipped", "started", "skipped", "skipped"]


async def test_overlap_allow(storage: StorageBackend) -> None:
    runs, info = await overlap_run(storage, "allow")
    assert [slot.minute for _, slot in runs] == [1, 2, 3, 4, 5, 6]
    assert sum(run.status == "completed" for run, _ in runs) == 3  # :01 :02 :03 ended by 6:00
    assert (info.fired, info.skipped) == (6, 0)


async def test_overlap_buffer_one(storage: StorageBackend) -> None:
    runs, info = await overlap_run(storage, "buffer_one")
    # :02 is buffered and starts when :01 ends (at the 3:30 tick); :03 is skipped (one
    # buffered already); :04 :05 come while :02 runs: :04 buffered, :05 skipped; :06 too
    assert [slot.minute for _, slot in runs] == [1, 2, 4]
    started_at = {slot.minute: run.created_at for run, slot in runs}
    assert abs(started_at[2] - (T0 + timedelta(minutes=3, seconds=30))) < timedelta(seconds=5)
    assert [o.action for o in info.recent][:4] == ["started", "buffered", "skipped", "started"]
    assert info.buffered_slot is None or info.buffered_slot.minute in (5, 6)


async def test_overlap_cancel_previous(storage: StorageBackend) -> None:
    runs, info = await overlap_run(storage, "cancel_previous")
    assert [slot.minute for _, slot in runs] == [1, 2, 3, 4, 5, 6]
    statuses = [run.status for run, _ in runs]
    # each slot cancels the run before it; :05's cancellation acts at the next tick
    assert statuses == ["cancelled"] * 4 + ["suspended"] * 2
    assert [m.kind for m in await storage.get_messages(runs[4][0].run_id)] == ["cancel"]
    events = await storage.get_events(runs[0][0].run_id)
    cancelled = [e for e in events if e.type == "workflow.cancelled"]
    assert "cancel_previous" in str(cancelled[0].data)
    assert info.fired == 6


async def test_pause_resume_never_catches_up_paused_slots(storage: StorageBackend) -> None:
    rt, clock = runtime(storage)
    await create_schedule_async("paused", report, every="5m", catchup="all", storage=storage, clock=clock)
    await tick_every(rt, clock, timedelta(minutes=5), T0 + timedelta(minutes=10))
    info = await pause_schedule_async("paused", storage=storage, clock=clock)
    assert info.paused and info.next_run_at is None
    assert await pause_schedule_async("paused", storage=storage, clock=clock) == info  # idempotent
    await tick_every(rt, clock, timedelta(minutes=5), T0 + timedelta(minutes=40))
    assert len(await scheduled_runs(storage, "sched.report")) == 2

    info = await resume_schedule_async("paused", storage=storage, clock=clock)
    assert not info.paused and info.next_slot == T0 + timedelta(minutes=45)
    await tick_every(rt, clock, timedelta(minutes=5), T0 + timedelta(minutes=50))
    runs = await scheduled_runs(storage, "sched.report")
    assert [slot.minute for _, slot in runs] == [5, 10, 45, 50]
    info = await get_schedule_async("paused", storage=storage)
    assert (info.fired, info.missed, info.skipped) == (4, 0, 0)


async def test_trigger_and_backfill(storage: StorageBackend) -> None:
    rt, clock = runtime(storage)
    await create_schedule_async("manual", report, cron="0 * * * *", storage=storage, clock=clock)
    run_id = await trigger_schedule_async("manual", storage=storage, clock=clock)
    await rt.tick()  # recorded due at once; the tick of this storage starts it
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "completed"

    start, end = T0 - timedelta(hours=5), T0 - timedelta(hours=1)
    ids = await backfill_schedule_async("manual", start, end, storage=storage, clock=clock)
    assert len(ids) == 4
    again = await backfill_schedule_async("manual", start, end + timedelta(hours=1), storage=storage, clock=clock)
    assert again[:4] == ids and len(again) == 5  # the slots already run are not run again
    await rt.tick()
    runs = await scheduled_runs(storage, "sched.report")
    slots = sorted(slot for _, slot in runs)
    assert slots[:5] == [T0 - timedelta(hours=h) for h in (5, 4, 3, 2, 1)] and slots[5] - T0 < timedelta(seconds=5)
    assert all(run.status == "completed" for run, _ in runs)
    info = await get_schedule_async("manual", storage=storage)
    assert info.fired == 6 and [o.action for o in info.recent][-1] == "backfilled"


async def test_upsert_keeps_state_and_list_orders_by_id(storage: StorageBackend) -> None:
    rt, clock = runtime(storage)
    first = await create_schedule_async("b-upsert", report, every="5m", storage=storage, clock=clock)
    same = await create_schedule_async("b-upsert", report, every="5m", storage=storage, clock=clock)
    assert same == first  # nothing changed, nothing written
    await tick_every(rt, clock, timedelta(minutes=5), T0 + timedelta(minutes=10))
    await pause_schedule_async("b-upsert", storage=storage, clock=clock)
    changed = await create_schedule_async("b-upsert", report, every="10m", args=("x",), storage=storage, clock=clock)
    assert changed.every == 600 and changed.fired == 2 and changed.paused  # counters and the pause kept
    assert changed.input == {"args": ["x"], "kwargs": {}}
    await create_schedule_async("a-first", report, cron="0 9 * * MON", timezone="Europe/Berlin", storage=storage)
    assert [s.schedule_id for s in await list_schedules_async(storage=storage)] == ["a-first", "b-upsert"]


async def test_a_crash_between_starting_a_slot_and_saving_the_schedule_starts_it_once(
    storage: StorageBackend,
) -> None:
    # The tick starts the slot's run, then dies before it saves the schedule's state: the
    # next tick sees the same slot due again, and its key finds the run already there.
    rt, clock = runtime(storage)
    await create_schedule_async("crashy", report, every="5m", storage=storage, clock=clock)
    original = storage.save_schedule

    async def die(*args: Any, **kwargs: Any) -> int | None:
        raise RuntimeError("the tick's process died here")

    storage.save_schedule = die  # type: ignore[method-assign]
    try:
        clock.advance(timedelta(minutes=5, seconds=1))
        await rt.fire_schedules()  # logged as failed; the run was recorded first
    finally:
        storage.save_schedule = original  # type: ignore[method-assign]
    assert len(await scheduled_runs(storage, "sched.report")) == 1
    info = await get_schedule_async("crashy", storage=storage)
    assert info.fired == 0 and info.next_slot == T0 + timedelta(minutes=5)  # the save never happened

    await rt.tick()
    runs = await scheduled_runs(storage, "sched.report")
    assert [slot for _, slot in runs] == [T0 + timedelta(minutes=5)]  # once
    info = await get_schedule_async("crashy", storage=storage)
    assert info.fired == 1 and info.next_slot == T0 + timedelta(minutes=10)
