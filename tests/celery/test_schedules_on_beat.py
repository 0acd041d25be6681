"""Schedules on real Celery: a worker and two beat subprocesses (each beat sends its own
tick) fire an every-second schedule for ``PYWORKFLOW_SCHEDULE_SLOTS`` slots (300 by
default): every slot starts exactly one run, none is missed, and each run's step runs
once. A schedule declared with ``@workflow(schedule=...)`` is created when the worker and
beat start, and fires."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import tests.celery_workflows  # noqa: F401 - registers celery.scheduled here too
from pyworkflow import config, create_schedule, get_schedule, list_schedules, pause_schedule
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.schedules.firing import slot_key
from tests.celery.conftest import wait_until

SLOTS = int(os.environ.get("PYWORKFLOW_SCHEDULE_SLOTS", "300"))
pytestmark = pytest.mark.timeout(SLOTS + 300)


def recorded_slots(markers: Path) -> list[str]:
    path = markers / "schedule-slots"
    return path.read_text().splitlines() if path.exists() else []


def runs_of(workflow_name: str) -> list[Any]:
    storage = config.get_storage()
    found, cursor = [], None
    while True:
        page = PROCESS_LOOP.run(storage.list_runs(workflow_name=workflow_name, limit=500, cursor=cursor))
        found.extend(page.runs)
        cursor = page.next_cursor
        if cursor is None:
            return found


@pytest.mark.parametrize("own_broker", ["redis"], indirect=True)
def test_two_beats_start_each_slot_once(crash_app: Any, spawn: Any, markers: Path) -> None:
    (markers / "schedule-slots").unlink(missing_ok=True)
    spawn("worker")
    spawn("beat")
    spawn("beat")
    # allow: a run that is slow under load must not make the next slot a skip
    create_schedule("every-second", "celery.scheduled", every="1s", overlap="allow")
    wait_until(lambda: len(recorded_slots(markers)) >= SLOTS, timeout=SLOTS + 120, what=f"{SLOTS} slots")
    pause_schedule("every-second")
    info = get_schedule("every-second")

    def settled() -> bool:
        runs = runs_of("celery.scheduled")
        return len(runs) == info.fired and all(r.status.is_terminal for r in runs)

    wait_until(settled, timeout=60, what="every started run to finish")
    runs = runs_of("celery.scheduled")
    slots = recorded_slots(markers)
    assert len(slots) == len(set(slots)), "a slot's step ran twice"
    times = sorted(datetime.fromisoformat(s) for s in slots)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert set(gaps) == {timedelta(seconds=1)}, "a slot was missed"
    assert len(runs) == len(times) == info.fired >= SLOTS
    assert {r.status for r in runs} == {"completed"}
    assert sorted(r.idempotency_key for r in runs) == sorted(slot_key("every-second", t) for t in times)
    assert (info.missed, info.skipped, info.failed) == (0, 0, 0)


@pytest.mark.parametrize("own_broker", ["redis", "amqp"], indirect=True)
def test_a_declared_schedule_is_created_at_start_and_fires(crash_app: Any, spawn: Any) -> None:
    imports = {"PYWORKFLOW_IMPORTS": "tests.celery_workflows,tests.celery.declared_schedules"}
    spawn("worker", **imports)
    spawn("beat", **imports)
    wait_until(
        lambda: any(s.schedule_id == "declared-every-second" for s in list_schedules()),
        timeout=60,
        what="the declared schedule",
    )
    wait_until(lambda: len(runs_of("celery.declared")) >= 3, timeout=60, what="3 declared runs")
    info = get_schedule("declared-every-second")
    assert info.declared and info.every == 1 and info.workflow == "celery.declared"

    def first_three_done() -> bool:
        oldest = sorted(runs_of("celery.declared"), key=lambda r: r.created_at)[:3]
        return all(r.status == "completed" for r in oldest)

    wait_until(first_three_done, timeout=60, what="the first declared runs to complete")
