"""Schedules in-process: daylight saving time in Europe/Berlin and America/New_York across
both 2027 transitions, a year of a daily schedule on a virtual clock, the declarative
``@workflow(schedule=...)``, and bad input at every function (a clear error naming what was
wrong, nothing recorded)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pyworkflow import (
    Schedule,
    ScheduleNotFoundError,
    backfill_schedule_async,
    create_schedule_async,
    delete_schedule_async,
    get_schedule_async,
    list_schedules_async,
    pause_schedule_async,
    resume_schedule_async,
    trigger_schedule_async,
    workflow,
)
from pyworkflow.registry import _workflows
from pyworkflow.schedules import declare_schedules
from pyworkflow.schedules.slots import next_cron_slot
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.storage.sqlite import SQLiteStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

UTC = timezone.utc
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


@workflow(name="local_sched.job")
async def job(n: int = 0) -> int:
    return n


def slots(expression: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    found, at = [], start
    while (at := next_cron_slot(expression, zone, at)) < end:
        found.append(at)
    return found


def local(zone: ZoneInfo, *parts: int) -> datetime:
    return datetime(*parts, tzinfo=zone)  # type: ignore[misc]


# -- daylight saving time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "spring_day", "gap_hour"),
    [(BERLIN, (2027, 3, 28), 2), (NEW_YORK, (2027, 3, 14), 2)],
)
def test_a_skipped_local_time_fires_once_at_the_next_valid_minute(
    zone: ZoneInfo, spring_day: tuple[int, int, int], gap_hour: int
) -> None:
    day = local(zone, *spring_day)
    daily = slots("30 2 * * *", zone, day - timedelta(days=2), day + timedelta(days=2))
    walls = [s.astimezone(zone).strftime("%m-%d %H:%M") for s in daily]
    month, date = spring_day[1], spring_day[2]
    assert walls == [
        f"{month:02}-{date - 2:02} 02:30",
        f"{month:02}-{date - 1:02} 02:30",
        f"{month:02}-{date:02} 03:00",  # 02:30 does not exist that day
        f"{month:02}-{date + 1:02} 02:30",
    ]
    # every 15 minutes through the gap: 02:00 … 02:45 all map to 03:00, fired once
    quarter = slots("*/15 * * * *", zone, local(zone, *spring_day, 1, 30), local(zone, *spring_day, 3, 31))
    assert [s.astimezone(zone).strftime("%H:%M") for s in quarter] == ["01:45", "03:00", "03:15", "03:30"]
    assert len(set(quarter)) == len(quarter) and quarter == sorted(quarter)


@pytest.mark.parametrize(("zone", "fall_day"), [(BERLIN, (2027, 10, 31)), (NEW_YORK, (2027, 11, 7))])
def test_a_repeated_local_time_fires_once_on_its_first_occurrence(zone: ZoneInfo, fall_day: tuple[int, ...]) -> None:
    start = local(zone, *fall_day) - timedelta(hours=2)
    hourly = slots("30 * * * *", zone, start, start + timedelta(hours=8))
    walls = [(s.astimezone(zone).strftime("%H:%M"), s.astimezone(zone).utcoffset()) for s in hourly]
    repeated = "02:30" if zone is BERLIN else "01:30"
    assert [w for w, _ in walls].count(repeated) == 1  # the hour happens twice; it fires once
    first = hourly[[w for w, _ in walls].index(repeated)]
    # the first occurrence: still on summer time
    assert first.astimezone(zone).dst() != timedelta(0)
    gaps = {b - a for a, b in zip(hourly, hourly[1:], strict=False)}
    assert gaps == {timedelta(hours=1), timedelta(hours=2)}  # the repeated hour's second pass is not a slot


async def test_a_daily_schedule_across_both_transitions_on_the_runtime() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(datetime(2027, 3, 26, tzinfo=UTC))
    rt = LocalRuntime(storage, clock=clock)
    await create_schedule_async(
        "berlin", job, cron="30 2 * * *", timezone="Europe/Berlin", storage=storage, clock=clock
    )
    for _ in range(4 * 24 * 4):  # four days, ticking every 15 minutes
        clock.advance(timedelta(minutes=15))
        await rt.tick()
    info = await get_schedule_async("berlin", storage=storage)
    fired = [o.slot.astimezone(BERLIN).strftime("%d %H:%M %Z") for o in info.recent]
    assert fired == ["26 02:30 CET", "27 02:30 CET", "28 03:00 CEST", "29 02:30 CEST"]
    assert (info.fired, info.missed) == (4, 0)


# -- a year on a virtual clock -----------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def fast_storage(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return InMemoryStorageBackend() if request.param == "memory" else SQLiteStorageBackend(tmp_path / "s.db")


async def test_a_year_of_a_daily_schedule(fast_storage: Any) -> None:
    """365 slots, one run each, on a virtual clock (benchmarks/schedules.py times it)."""
    clock = VirtualClock(datetime(2027, 1, 1, tzinfo=UTC))
    rt = LocalRuntime(fast_storage, clock=clock)
    await create_schedule_async("daily", job, cron="0 6 * * *", args=(7,), storage=fast_storage, clock=clock)
    for _ in range(365):
        clock.advance(timedelta(days=1))
        await rt.tick()
    info = await get_schedule_async("daily", storage=fast_storage)
    assert (info.fired, info.missed, info.skipped, info.failed) == (365, 0, 0, 0)
    page = await fast_storage.list_runs(workflow_name="local_sched.job", limit=1000)
    assert len(page.runs) == 365 and {r.status for r in page.runs} == {"completed"}
    keys = {r.idempotency_key for r in page.runs}
    assert len(keys) == 365 and "schedule:daily:2027-07-01T06:00:00Z" in keys
    await fast_storage.close()


# -- declared with the workflow ------------------------------------------------------------


@pytest.fixture
def declared() -> Iterator[list[str]]:
    """Workflows declared here leave the registry afterwards (a Celery worker started by
    another test would otherwise create their schedules in its own storage)."""
    names: list[str] = []
    yield names
    for name in names:
        _workflows.pop(name, None)


async def test_declared_schedules_are_upserted(declared: list[str]) -> None:
    @workflow(name="local_sched.weekly", schedule="0 9 * * MON")
    async def weekly() -> None:
        return None

    @workflow(name="local_sched.ping", schedule=Schedule(every="30s", args=(3,), overlap="allow", id="pinger"))
    async def ping(n: int) -> int:
        return n

    declared.extend(["local_sched.weekly", "local_sched.ping"])
    storage = InMemoryStorageBackend()
    assert sorted(await declare_schedules(storage)) == ["local_sched.weekly", "pinger"]
    first = {s.schedule_id: s for s in await list_schedules_async(storage=storage)}
    assert first["local_sched.weekly"].cron == "0 9 * * MON" and first["local_sched.weekly"].declared
    assert first["pinger"].every == 30 and first["pinger"].input == {"args": [3], "kwargs": {}}
    await declare_schedules(storage)  # a second worker starting: nothing changes
    assert {s.schedule_id: s for s in await list_schedules_async(storage=storage)} == first


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("every minute", "not a 5-field cron expression"),
        ("* * * * * *", "not a 5-field cron expression"),
        (Schedule(cron="0 9 * * *", every="1h"), "exactly one of cron"),
        (Schedule(), "exactly one of cron"),
        (Schedule(cron="0 9 * * *", timezone="Mars/Olympus"), "not an IANA time zone"),
        (Schedule(every="1h", args=(1, 2)), r"local_sched.bad\(\): too many positional arguments"),
        (42, "must be a cron string or a Schedule"),
    ],
)
def test_a_bad_declared_schedule_fails_at_import(declared: list[str], schedule: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):

        @workflow(name="local_sched.bad", schedule=schedule)
        async def bad() -> None:
            return None

    declared.append("local_sched.bad")
    assert "local_sched.bad" not in _workflows


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({}, ValueError, "exactly one of cron"),
        ({"cron": "0 9 * * *", "every": "1h"}, ValueError, "exactly one of cron"),
        ({"cron": "61 * * * *"}, ValueError, r"cron='61 \* \* \* \*' is not a 5-field"),
        ({"cron": 5}, ValueError, "not a 5-field cron expression"),
        ({"every": "0s"}, ValueError, "shorter than the smallest interval"),
        ({"every": "500ms"}, ValueError, "every"),
        ({"every": "soon"}, ValueError, "every"),
        ({"every": "1h", "timezone": "Europe/Nowhere"}, ValueError, "not an IANA time zone"),
        ({"every": "1h", "timezone": 1}, TypeError, "timezone must be an IANA zone name"),
        ({"every": "1h", "overlap": "queue"}, ValueError, "overlap='queue' is not one of"),
        ({"every": "1h", "catchup": "some"}, ValueError, "catchup='some' must be"),
        ({"every": "1h", "catchup": "-1h"}, ValueError, "catchup"),
        ({"every": "1h", "jitter": "-5s"}, ValueError, "jitter"),
        ({"every": "1h", "args": (1, 2)}, TypeError, r"local_sched.job\(\): too many positional arguments"),
        ({"every": "1h", "args": "12"}, TypeError, "args must be a tuple or a list"),
        ({"every": "1h", "kwargs": [("n", 1)]}, TypeError, "kwargs must be a dict"),
        ({"every": "1h", "args": (object(),)}, TypeError, "argument"),
    ],
)
async def test_create_schedule_refuses_bad_options(options: dict[str, Any], error: type, message: str) -> None:
    storage = InMemoryStorageBackend()
    with pytest.raises(error, match=message):
        await create_schedule_async("bad", job, storage=storage, **options)
    assert await storage.list_schedules() == []  # nothing recorded


@pytest.mark.parametrize(
    ("schedule_id", "message"),
    [
        ("", "non-empty string"),
        (None, "non-empty string"),
        (" padded", "surrounding spaces"),
        ("tab\there", "control characters"),
        ("x" * 201, "at most 200"),
        ("\ud800", "lone surrogate"),
    ],
)
async def test_bad_schedule_ids_are_refused_everywhere(schedule_id: Any, message: str) -> None:
    storage = InMemoryStorageBackend()
    with pytest.raises(ValueError, match=message):
        await create_schedule_async(schedule_id, job, every="1h", storage=storage)
    for call in (get_schedule_async, pause_schedule_async, resume_schedule_async, delete_schedule_async):
        with pytest.raises(ValueError, match=message):
            await call(schedule_id, storage=storage)
    assert await storage.list_schedules() == []


async def test_an_unknown_schedule_is_a_clear_error() -> None:
    storage = InMemoryStorageBackend()
    for call in (get_schedule_async, pause_schedule_async, resume_schedule_async, trigger_schedule_async):
        with pytest.raises(ScheduleNotFoundError, match="schedule 'nope' does not exist") as info:
            await call("nope", storage=storage)
        assert info.value.schedule_id == "nope" and isinstance(info.value, LookupError)
    with pytest.raises(ScheduleNotFoundError):
        await delete_schedule_async("nope", storage=storage)
    t = datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ScheduleNotFoundError):
        await backfill_schedule_async("nope", t, t + timedelta(days=1), storage=storage)
    with pytest.raises(TypeError, match="is not a workflow"):
        await create_schedule_async("x", lambda: None, every="1h", storage=storage)


async def test_backfill_refuses_a_bad_window_and_changes_nothing() -> None:
    storage = InMemoryStorageBackend()
    await create_schedule_async("bf", job, every="1s", storage=storage)
    before = await get_schedule_async("bf", storage=storage)
    t = datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="end .* must be after start"):
        await backfill_schedule_async("bf", t, t, storage=storage)
    with pytest.raises(TypeError, match="start must be a datetime"):
        await backfill_schedule_async("bf", "yesterday", t, storage=storage)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than 10000 slots"):
        await backfill_schedule_async("bf", t, t + timedelta(hours=3), storage=storage)
    assert await get_schedule_async("bf", storage=storage) == before
    assert (await storage.list_runs()).runs == []


async def test_a_slot_whose_run_cannot_start_is_recorded_and_the_schedule_moves_on() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(datetime(2027, 1, 1, tzinfo=UTC))
    rt = LocalRuntime(storage, clock=clock)

    @workflow(name="local_sched.gone")
    async def gone() -> None:
        return None

    await create_schedule_async("orphan", gone, every="1m", storage=storage, clock=clock)
    _workflows.pop("local_sched.gone")  # a deploy removed the workflow
    clock.advance(61)
    await rt.tick()
    info = await get_schedule_async("orphan", storage=storage)
    assert info.failed == 1 and info.recent[-1].action == "failed"
    assert "local_sched.gone" in (info.recent[-1].error or "")
    assert info.next_slot is not None and info.next_slot > clock.now()


@workflow(name="local_sched.slot_reader")
async def slot_reader() -> dict[str, Any]:
    from pyworkflow import workflow_info

    info = workflow_info()
    return {"scheduled_at": info.scheduled_at, "schedule_id": info.schedule_id}


async def test_a_scheduled_run_reads_its_slot_from_workflow_info() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(datetime(2027, 1, 1, tzinfo=UTC))
    rt = LocalRuntime(storage, clock=clock)
    await create_schedule_async("reader", slot_reader, cron="*/10 * * * *", storage=storage, clock=clock)
    clock.advance(timedelta(minutes=10, seconds=3))
    await rt.tick()
    (run,) = (await storage.list_runs(workflow_name="local_sched.slot_reader")).runs
    assert run.result == {"scheduled_at": "2027-01-01T00:10:00Z", "schedule_id": "reader"}
    await rt.start(slot_reader)  # started by hand: no slot
    manual = [r for r in (await storage.list_runs(workflow_name="local_sched.slot_reader")).runs if r != run]
    assert manual[0].result == {"scheduled_at": None, "schedule_id": None}


async def test_a_schedules_arguments_are_encrypted_at_rest(tmp_path: Any) -> None:
    from cryptography.fernet import Fernet

    from pyworkflow.storage.encrypted import EncryptedStorage

    inner = SQLiteStorageBackend(tmp_path / "enc.db")
    storage = EncryptedStorage(inner, Fernet.generate_key().decode())
    await create_schedule_async("secret", job, every="1h", args=(424242,), storage=storage)
    raw = await inner.get_schedule("secret")
    assert raw is not None and "424242" not in raw.body and "$enc" in raw.body
    assert (await get_schedule_async("secret", storage=storage)).input == {"args": [424242], "kwargs": {}}
    await storage.close()


async def test_one_tick_fires_more_schedules_than_its_batch() -> None:
    from pyworkflow.schedules import Firing

    storage = InMemoryStorageBackend()
    clock = VirtualClock(datetime(2027, 1, 1, tzinfo=UTC))
    for i in range(25):
        await create_schedule_async(f"many-{i:02}", job, every="1h", args=(i,), storage=storage, clock=clock)
    clock.advance(timedelta(hours=1, seconds=1))
    started = await Firing(storage, start_guard=30.0, clock=clock).fire_due(limit=10)
    assert started == 25 and await storage.due_schedules(clock.now()) == []
