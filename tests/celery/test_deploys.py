"""Deploying changed workflow code under runs in flight, on real workers.

Release 1 (tests/celery/deploys/v1.py) starts two runs, which suspend in a sleep; its
worker stops. Release 2 adds a step before the sleep: behind ``patched()`` in one workflow,
bare in the other. On release 2's worker the guarded run completes on the old path and the
unguarded one becomes ``blocked`` (nothing re-run, nothing lost). Release 3 guards the step;
``retry()`` continues the blocked run to the end, each step having run once, and a new run
takes the new path."""

from __future__ import annotations

from typing import Any

import pytest

import tests.celery.deploys.v1  # noqa: F401 - this process is release 1: it starts the runs
from pyworkflow import get_run, retry, start
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import RunStatus
from tests.celery.conftest import wait_until

RELEASE = "tests.celery.deploys.v{}"


def status(run_id: str) -> str:
    run = get_run(run_id)
    return "missing" if run is None else str(run.status)


def step_completions(run_id: str) -> list[str]:
    from pyworkflow import config

    events = PROCESS_LOOP.run(config.get_storage().get_events(run_id))
    return [e.data.get("step") or e.data.get("name") for e in events if e.type == "step.completed"]


@pytest.mark.parametrize("own_broker", ["redis"], indirect=True)
def test_a_deploy_with_and_without_patched(crash_app: Any, spawn: Any) -> None:
    release1 = spawn("worker", PYWORKFLOW_IMPORTS=RELEASE.format(1))
    spawn("beat")
    guarded, unguarded = start("deploy.guarded", 1), start("deploy.unguarded", 1)
    wait_until(
        lambda: status(guarded) == status(unguarded) == "suspended", timeout=60, what="both runs asleep on release 1"
    )
    release1.stop()

    release2 = spawn("worker", PYWORKFLOW_IMPORTS=RELEASE.format(2))
    wait_until(lambda: status(guarded) == "completed", timeout=60, what="the guarded run to complete")
    wait_until(lambda: status(unguarded) == "blocked", timeout=60, what="the unguarded run to block")
    assert get_run(guarded).result == 20  # type: ignore[union-attr] # (1 + 1) * 10: the old path
    blocked = get_run(unguarded)
    assert blocked is not None and blocked.status == RunStatus.BLOCKED
    error = blocked.error or {}
    assert error.get("type") == "pyworkflow.errors.NonDeterminismError"
    assert "deploy.audit" in error.get("message", "") and "sleep" in error.get("message", "")
    release2.stop()

    spawn("worker", PYWORKFLOW_IMPORTS=RELEASE.format(3))
    retry(unguarded)
    wait_until(lambda: status(unguarded) == "completed", timeout=60, what="the retried run to complete")
    assert get_run(unguarded).result == 20  # type: ignore[union-attr]
    for run_id in (guarded, unguarded):
        assert len(step_completions(run_id)) == 2  # fetch and finish, once each

    fresh = start("deploy.unguarded", 1)
    wait_until(lambda: status(fresh) == "completed", timeout=60, what="a run started on release 3")
    assert get_run(fresh).result == (2 + 1000) * 10  # type: ignore[union-attr] # the new path
