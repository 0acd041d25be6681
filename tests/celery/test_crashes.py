"""Real crashes: worker subprocesses killed with SIGKILL, a broker that restarts."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from pyworkflow import RunFailedError, get_run, start, wait_for_result
from tests.celery.conftest import Broker, Subprocess, wait_until
from tests.celery_workflows import count, crashy, oom, sleeper


def test_a_worker_killed_mid_step_loses_nothing(crash_app: Any, spawn: Callable[..., Subprocess]) -> None:
    tag = f"kill-{uuid.uuid4().hex[:6]}"
    first = spawn("worker")
    run_id = start(crashy, tag)
    wait_until(lambda: count(f"{tag}-step2") == 1, 60, "step 2 running on the first worker")
    first.kill()  # SIGKILL, pool children included: no cleanup, the lease stays behind

    spawn("worker")
    spawn("beat")  # the tick recovers the run once its lease expires
    assert wait_for_result(run_id, timeout=90) == "second try"
    assert count(f"{tag}-step1") == 1, "a completed step never runs again"
    assert count(f"{tag}-step2") == 2, "the interrupted step ran again (at-least-once)"
    assert count(f"{tag}-step3") == 1


def test_a_step_that_kills_its_worker_fails_after_its_attempts(
    crash_app: Any, spawn: Callable[..., Subprocess]
) -> None:
    tag = f"oom-{uuid.uuid4().hex[:6]}"
    spawn("worker")
    spawn("beat")
    run_id = start(oom, tag)
    with pytest.raises(RunFailedError) as info:
        wait_for_result(run_id, timeout=120)
    assert info.value.error["type"] == "pyworkflow.errors.StepCrashedError"  # type: ignore[attr-defined]
    assert count(f"{tag}-killer") == 2, "max_retries=1: two attempts, then the step fails"


def test_a_broker_restart_mid_run_loses_no_run(
    crash_app: Any, own_broker: Broker, spawn: Callable[..., Subprocess]
) -> None:
    tag = f"restart-{uuid.uuid4().hex[:6]}"
    spawn("worker", PYWORKFLOW_COUNTDOWN_HINT="0")
    spawn("beat")
    run_ids = [start(sleeper, f"{tag}-{i}", 3.0) for i in range(3)]
    wait_until(
        lambda: all((r := get_run(i)) is not None and r.status == "suspended" for i in run_ids), 60, "all runs asleep"
    )
    own_broker.stop()  # the broker keeps nothing on disk: every queued message is gone
    own_broker.start()
    for i, run_id in enumerate(run_ids):
        assert wait_for_result(run_id, timeout=120) == f"{tag}-{i}"
        assert count(f"{tag}-{i}-before") == 1 and count(f"{tag}-{i}-after") == 1
