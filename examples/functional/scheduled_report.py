"""A report every weekday at 08:00 in Berlin: a schedule created once (an upsert by id),
paused over a holiday (the slots it skips are not caught up), resumed, and one missed day
backfilled; each slot starts one run, which knows its slot.

python examples/functional/scheduled_report.py

In-process: ``LocalRuntime.tick`` fires schedules as Celery Beat's tick does. On Celery,
``create_schedule(...)`` once, or ``@workflow(schedule="0 8 * * MON-FRI")``, and run beat.
"""

import asyncio
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from pyworkflow import (
    backfill_schedule_async,
    create_schedule_async,
    get_schedule_async,
    pause_schedule_async,
    resume_schedule_async,
    workflow,
    workflow_info,
)
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

BERLIN = ZoneInfo("Europe/Berlin")


@workflow(name="sales_report")
async def sales_report(team: str) -> str:
    slot = workflow_info().scheduled_at
    assert slot is not None
    return f"{team} report for {slot.astimezone(BERLIN):%a %d %b %H:%M}"


async def days(runtime: LocalRuntime, clock: VirtualClock, count: int) -> None:
    for _ in range(count * 24):  # tick hourly
        clock.advance(timedelta(hours=1))
        await runtime.tick()


async def main() -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(datetime(2027, 3, 22, tzinfo=timezone.utc))  # a Monday
    runtime = LocalRuntime(storage, clock=clock)
    options = {"cron": "0 8 * * MON-FRI", "timezone": "Europe/Berlin", "args": ("sales",), "storage": storage}
    await create_schedule_async("weekday-report", sales_report, clock=clock, **options)

    await days(runtime, clock, 3)  # Mon-Wed
    await pause_schedule_async("weekday-report", storage=storage, clock=clock)
    await days(runtime, clock, 2)  # Thu-Fri: a holiday, paused
    await resume_schedule_async("weekday-report", storage=storage, clock=clock)
    await days(runtime, clock, 4)  # the weekend, Mon and Tue (summer time from Sunday)
    thursday = datetime(2027, 3, 25, tzinfo=BERLIN)
    await backfill_schedule_async("weekday-report", thursday, thursday + timedelta(days=1), storage=storage)
    await runtime.tick()

    info = await get_schedule_async("weekday-report", storage=storage)
    runs = sorted((await storage.list_runs(workflow_name="sales_report")).runs, key=lambda r: r.idempotency_key)
    for run in runs:
        print(run.result)
    print(f"fired {info.fired}, missed {info.missed}, skipped {info.skipped}; next {info.next_run_at}")
    assert (info.fired, info.missed) == (6, 0)
    assert [r.result.split(" for ")[1][:3] for r in runs].count("Thu") == 1  # the backfilled day


if __name__ == "__main__":
    asyncio.run(main())
