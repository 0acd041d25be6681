"""Cancellation through a real Celery worker, on each real broker: a sleeping run and a
run inside a long inline step end ``cancelled`` within seconds (no tick running: the
request's own activation message, and the renewal's inbox check), after their cleanup."""

from __future__ import annotations

import time
from typing import Any

import pytest

import pyworkflow.celery.factory as factory
from pyworkflow import cancel, get_run, start
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend
from tests.celery.conftest import wait_until
from tests.celery_workflows import cancellable, count


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


def status(run_id: str) -> str:
    run = get_run(run_id)
    assert run is not None
    return str(run.status)


@pytest.mark.parametrize("where", ["sleep", "step"])
def test_cancel_ends_the_run_cancelled_after_its_cleanup(storage: StorageBackend, where: str) -> None:
    tag = f"cancel-{where}-{time.monotonic_ns()}"
    run_id = start(cancellable, tag, where)
    if where == "sleep":
        wait_until(lambda: status(run_id) == "suspended", 20, "the run sleeps")
    else:
        wait_until(lambda: count(f"{tag}-began") == 1, 20, "the step runs")
    asked = time.monotonic()
    assert cancel(run_id, reason="customer left") is True
    wait_until(lambda: status(run_id) == "cancelled", 20, "the run ends cancelled")
    assert time.monotonic() - asked < 10  # the lease of the tests' app is 5 s: renewals every 1.7 s
    assert count(f"{tag}-cleanup") == 1 and count(f"{tag}-finished") == 0
    events = PROCESS_LOOP.run(storage.get_events(run_id))
    assert events[-1].type == "workflow.cancelled" and events[-1].data == {"reason": "customer left"}
    assert cancel(run_id) is False
