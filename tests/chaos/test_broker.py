"""The broker (the test's own redis-server, which keeps nothing on disk) stopped and
started again under a worker that is busy, and under one whose runs all sleep."""

from __future__ import annotations

import time
import uuid

import pytest

from pyworkflow import get_run
from pyworkflow.storage.base import RunStatus
from tests.celery.conftest import wait_until
from tests.chaos import journal
from tests.chaos.conftest import Fleet
from tests.chaos.workflows import expected, steps

OUTAGE = 1.5  # seconds the broker stays down


def _outage(fleet: Fleet, worker_log: bytes) -> float:
    """Stop the broker, wait until the worker noticed, keep it down OUTAGE s, start it
    again; returns how long it was down."""
    began = time.monotonic()
    fleet.broker.stop()  # every queued message, countdown hint and unacknowledged delivery is gone
    log = fleet.procs[0].log
    wait_until(
        lambda: log.read_bytes().count(b"Connection to broker lost") > worker_log.count(b"Connection to broker lost"),
        20,
        "the worker noticing the broker gone",
    )
    time.sleep(OUTAGE)  # the length of the fault, not a synchronisation
    fleet.broker.start()
    return time.monotonic() - began


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_broker_restart_under_load(fleet: Fleet) -> None:
    """Steps running, activations queued, countdown hints held when the broker goes away.
    The worker reconnects without a restart; every run completes with every step body
    run exactly once (no worker died, so nothing may run twice)."""
    tag = f"load-{uuid.uuid4().hex[:6]}"
    fleet.env["PYWORKFLOW_START_GUARD"] = "4"  # runs whose first message died with the broker: sent again sooner
    worker = fleet.worker()
    fleet.beat()
    runs = {}
    for i in range(24):
        runs[fleet.start(steps, f"{tag}-{i}", 3, 0.3, 1.0)] = expected(f"{tag}-{i}", 3)
    wait_until(lambda: len(journal.running(fleet.journal)) >= 3, 30, "steps running on the worker")
    before = worker.log.read_bytes()
    busy = len(journal.running(fleet.journal))
    down = _outage(fleet, before)
    summary = fleet.verify(list(runs), timeout=120, reruns_from=(), expected=runs)
    fleet.alive(worker)
    print(f"\n{fleet.store.kind}: broker down {down:.1f} s with {busy} step bodies running; {summary.describe()}")


@pytest.mark.chaos
@pytest.mark.timeout(180)
def test_broker_restart_while_runs_sleep(fleet: Fleet) -> None:
    """Every run asleep, its wake-up held by the worker as a countdown hint (default
    hints on), when the broker goes away: the hints die with it. The worker stays up and
    the tick wakes every run from storage; each step body ran once."""
    tag = f"idle-{uuid.uuid4().hex[:6]}"
    worker = fleet.worker()
    fleet.beat()
    runs = {}
    for i in range(10):
        runs[fleet.start(steps, f"{tag}-{i}", 2, 0.05, 6.0)] = expected(f"{tag}-{i}", 2)

    def asleep() -> bool:
        return all((r := get_run(i)) is not None and r.status == RunStatus.SUSPENDED for i in runs)

    wait_until(asleep, 30, "every run asleep")
    down = _outage(fleet, worker.log.read_bytes())
    summary = fleet.verify(list(runs), timeout=60, reruns_from=(), expected=runs)
    fleet.alive(worker)
    print(f"\n{fleet.store.kind}: broker down {down:.1f} s while every run slept; {summary.describe()}")
