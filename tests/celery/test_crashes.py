"""Real crashes: worker subprocesses killed with SIGKILL, a broker that restarts."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyworkflow import RunFailedError, get_run, start, wait_for_result
from tests.celery.conftest import Broker, Subprocess, wait_until
from tests.celery.failure_workflows import IMPORTS, exiting, remote_exiting, slow_then_sleep
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


def _asleep(run_ids: list[str]) -> bool:
    return all((r := get_run(i)) is not None and r.status == "suspended" for i in run_ids)


def _alive(worker: Subprocess) -> None:
    assert worker.proc.poll() is None, f"the worker exited ({worker.proc.returncode}); see {worker.log}"


def _restart(broker: Broker) -> None:
    broker.stop()  # the broker keeps nothing on disk: every queued message is gone
    time.sleep(1.0)
    broker.start()


def test_a_broker_restart_with_countdown_hints_keeps_the_worker(
    crash_app: Any, own_broker: Broker, spawn: Callable[..., Subprocess]
) -> None:
    """Default settings (countdown hints on). When the broker goes away the worker holds
    the sleepers' countdown messages (reserved, unacknowledged) and runs a step of
    another run. It must reconnect, not exit; every run completes; no completed step runs
    again, and the step that was running when the connection dropped is not cut short."""
    tag = f"hints-{uuid.uuid4().hex[:6]}"
    worker = spawn("worker", PYWORKFLOW_IMPORTS=IMPORTS)
    spawn("beat")
    sleepers = [start(sleeper, f"{tag}-{i}", 4.0) for i in range(3)]
    wait_until(lambda: _asleep(sleepers), 60, "all runs asleep")
    busy = start(slow_then_sleep, f"{tag}-busy", 3.0)
    wait_until(lambda: count(f"{tag}-busy-slow-begun") == 1, 60, "a step running")
    _restart(own_broker)
    for i, run_id in enumerate(sleepers):
        assert wait_for_result(run_id, timeout=60) == f"{tag}-{i}"
        assert count(f"{tag}-{i}-before") == 1 and count(f"{tag}-{i}-after") == 1
    assert wait_for_result(busy, timeout=60) == f"{tag}-busy"
    assert count(f"{tag}-busy-slow-begun") == 1 and count(f"{tag}-busy-slow") == 1, "the running step ran once"
    assert count(f"{tag}-busy-after") == 1
    _alive(worker)
    assert wait_for_result(start(sleeper, f"{tag}-new", 0.2), timeout=60) == f"{tag}-new"  # and it still works
    _alive(worker)


def test_an_idle_worker_holding_hints_survives_a_broker_restart(
    crash_app: Any, own_broker: Broker, spawn: Callable[..., Subprocess]
) -> None:
    """Nothing running, only countdown hints held; no beat during the outage either."""
    tag = f"idle-{uuid.uuid4().hex[:6]}"
    worker = spawn("worker")
    run_ids = [start(sleeper, f"{tag}-{i}", 5.0) for i in range(3)]
    wait_until(lambda: _asleep(run_ids), 60, "all runs asleep")
    time.sleep(0.5)
    _restart(own_broker)
    time.sleep(2.0)
    _alive(worker)
    spawn("beat")  # the hints died with the broker: the tick wakes the runs from storage
    for i, run_id in enumerate(run_ids):
        assert wait_for_result(run_id, timeout=60) == f"{tag}-{i}"
        assert count(f"{tag}-{i}-before") == 1 and count(f"{tag}-{i}-after") == 1
    _alive(worker)


def test_a_warm_shutdown_holding_hints_and_a_running_step_loses_no_run(
    crash_app: Any, spawn: Callable[..., Subprocess]
) -> None:
    """SIGTERM to the worker's main process (what docker stop does): it finishes the
    running step, gives back the countdown messages it held, and exits; once a worker is
    back every run completes, each step once."""
    tag = f"term-{uuid.uuid4().hex[:6]}"
    first = spawn("worker", PYWORKFLOW_IMPORTS=IMPORTS)
    spawn("beat")
    sleepers = [start(sleeper, f"{tag}-{i}", 4.0) for i in range(3)]
    wait_until(lambda: _asleep(sleepers), 60, "all runs asleep")
    busy = start(slow_then_sleep, f"{tag}-busy", 2.0)
    wait_until(lambda: count(f"{tag}-busy-slow-begun") == 1, 60, "a step running")
    os.kill(first.proc.pid, signal.SIGTERM)
    assert first.proc.wait(30) == 0, f"warm shutdown failed; see {first.log}"
    assert count(f"{tag}-busy-slow") == 1, "the warm shutdown let the running step finish"
    spawn("worker", PYWORKFLOW_IMPORTS=IMPORTS)
    for i, run_id in enumerate(sleepers):
        assert wait_for_result(run_id, timeout=60) == f"{tag}-{i}"
        assert count(f"{tag}-{i}-before") == 1 and count(f"{tag}-{i}-after") == 1
    assert wait_for_result(busy, timeout=60) == f"{tag}-busy"
    assert count(f"{tag}-busy-slow-begun") == 1 and count(f"{tag}-busy-after") == 1


def test_a_step_raising_system_exit_leaves_the_worker_healthy(crash_app: Any, spawn: Callable[..., Subprocess]) -> None:
    """SystemExit and KeyboardInterrupt from steps (inline and dispatched) fail the step
    once; the one pool process goes on with the next task."""
    tag = f"exit-{uuid.uuid4().hex[:6]}"
    worker = spawn("worker", "-c", "1", PYWORKFLOW_IMPORTS=IMPORTS)
    spawn("beat")
    for kind in ("SystemExit", "KeyboardInterrupt", "CancelledError"):
        for wf, marker in ((exiting, "exits"), (remote_exiting, "remote-exits")):
            run_id = start(wf, f"{tag}-{kind}", kind)
            with pytest.raises(RunFailedError) as info:
                wait_for_result(run_id, timeout=30)
            error = info.value.error  # type: ignore[attr-defined]
            assert error["type"] == "pyworkflow.errors.StepFailedError" and kind in error["message"], error
            assert count(f"{tag}-{kind}-{marker}") == 1, "failed once, never retried"
    assert wait_for_result(start(sleeper, f"{tag}-next", 0.1), timeout=30) == f"{tag}-next"
    pids = set((Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / f"{tag}-SystemExit-exits").read_text().split())
    assert pids == set((Path(os.environ["PYWORKFLOW_TEST_MARKERS"]) / f"{tag}-next-before").read_text().split()), (
        "the same pool process ran the next run"
    )
    _alive(worker)
