"""A run whose activation died before writing anything, taken over by the tick's lease
recovery or by the next activation that finds the lease expired."""

from __future__ import annotations

import time
import uuid

import pytest

from pyworkflow import RunFailedError, wait_for_result
from pyworkflow.celery.factory import installed_app
from pyworkflow.loop import PROCESS_LOOP
from tests.celery.conftest import wait_until
from tests.chaos import journal
from tests.chaos.conftest import CHAOS_ENV, Fleet
from tests.chaos.workflows import fragile_run

LEASE = float(CHAOS_ENV["PYWORKFLOW_LEASE_TTL"])


class RanAgain(AssertionError):
    """The symptom of the bug this file guards against (fixed: begin_activation reports a
    takeover of an expired lease, and the engine counts the dead attempt)."""


def _kill_in_first_step(fleet: Fleet) -> tuple[str, float]:
    """A run of the one-attempt step, its worker SIGKILLed while the step body runs and
    before the activation wrote anything (its first step.started waits 0.5 s)."""
    worker = fleet.worker()
    run_id = fleet.start(fragile_run, f"frag-{uuid.uuid4().hex[:6]}", 2.0)
    wait_until(lambda: len(journal.running(fleet.journal)) == 1, 30, "the step running")
    killed = fleet.kill(worker)
    events = PROCESS_LOOP.run(fleet.store.backend.get_events(run_id))
    assert [e.type for e in events] == ["workflow.started"], "the activation wrote before it died"
    return run_id, killed


def _events(fleet: Fleet, run_id: str) -> list[str]:
    return [e.type for e in PROCESS_LOOP.run(fleet.store.backend.get_events(run_id))]


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_the_tick_counts_the_attempt_of_an_activation_that_wrote_nothing(sqlite_fleet: Fleet) -> None:
    """The tick recovers the expired lease and tells the run it was interrupted: the
    dead attempt counts, and the one-attempt step fails with StepCrashedError."""
    fleet = sqlite_fleet
    run_id, _ = _kill_in_first_step(fleet)
    fleet.worker()
    fleet.beat()
    with pytest.raises(RunFailedError) as info:
        wait_for_result(run_id, timeout=30)
    assert info.value.error["type"] == "pyworkflow.errors.StepCrashedError"  # type: ignore[attr-defined]
    assert "workflow.interrupted" in _events(fleet, run_id)
    assert len(journal.read(fleet.journal)) == 1, "the step ran once"


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_an_activation_taking_over_an_expired_lease_counts_the_dead_attempt(sqlite_fleet: Fleet) -> None:
    """The same crash, but an activation (a duplicate, a late hint, a redelivery, a start
    guard's re-send: any may arrive at any time) reaches the run after its lease expired
    and before a tick recovered it. It must count the dead attempt as the tick's recovery
    does."""
    fleet = sqlite_fleet
    run_id, killed = _kill_in_first_step(fleet)
    fleet.worker()  # no beat: no tick recovers the lease first
    time.sleep(max(0.0, killed + LEASE + 0.5 - time.time()))  # the lease expires
    installed_app().pyworkflow.send_activation(run_id)
    try:
        wait_for_result(run_id, timeout=30)
    except RunFailedError as exc:
        assert exc.error["type"] == "pyworkflow.errors.StepCrashedError"  # type: ignore[attr-defined]
    else:
        bodies = journal.read(fleet.journal)
        raise RanAgain(
            f"the one-attempt step ran {len(bodies)} times (attempts {[b.attempt for b in bodies]}) and the run "
            f"completed; its log: {_events(fleet, run_id)}"
        )
    assert "workflow.interrupted" in _events(fleet, run_id)
    assert len(journal.read(fleet.journal)) == 1, "the step ran once"
