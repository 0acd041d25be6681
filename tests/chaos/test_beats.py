"""Two beats at once: every tick is sent twice, and the twin ticks race each other for
due timers and expired leases."""

from __future__ import annotations

import uuid

import pytest

from tests.celery.conftest import wait_until
from tests.chaos import journal
from tests.chaos.conftest import Fleet
from tests.chaos.workflows import expected, steps


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_two_beats(fleet: Fleet) -> None:
    """Countdown hints off, so every wake-up goes through a tick's claim; the worker is
    killed once mid-step, so both beats' ticks race to recover its leases. Every run
    completes, no event is duplicated, no completed step runs again, and a step runs
    again only when the killed worker ran it."""
    tag = f"beats-{uuid.uuid4().hex[:6]}"
    fleet.env["PYWORKFLOW_COUNTDOWN_HINT"] = "0"
    beats = [fleet.beat(), fleet.beat()]
    worker = fleet.worker()
    runs = {}
    for i in range(30):
        runs[fleet.start(steps, f"{tag}-{i}", 3, 0.2, 0.5)] = expected(f"{tag}-{i}", 3)
    wait_until(lambda: len(journal.running(fleet.journal)) >= 2, 30, "steps running")
    fleet.kill(worker)
    fleet.worker()
    summary = fleet.verify(list(runs), timeout=90, reruns_from=set(fleet.kills), expected=runs)
    for beat in beats:
        fleet.alive(beat)
        assert b"Sending due task" in beat.log.read_bytes(), f"{beat.log} sent no tick"
    print(f"\n{fleet.store.kind}: two beats, 1 SIGKILL; {summary.describe()}")
    assert summary.unfinished, "the kill interrupted no step"
