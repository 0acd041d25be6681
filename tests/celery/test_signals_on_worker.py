"""Signals through a real Celery worker, on each real broker: a signal wakes a suspended
run at once through its own activation message (no tick running), one sent before the
first activation is delivered, a timeout wakes the run through its hint, and state is
readable from outside while the run waits."""

from __future__ import annotations

import time
from typing import Any

import pytest

import pyworkflow.celery.factory as factory
from pyworkflow import get_state, send_signal, start, wait_for_result
from pyworkflow.engine import create_run
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import StorageBackend
from tests.celery.conftest import wait_until
from tests.celery_workflows import approval


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


def status(storage: StorageBackend, run_id: str) -> str:
    run = PROCESS_LOOP.run(storage.get_run(run_id))
    assert run is not None
    return str(run.status)


def test_a_signal_wakes_a_suspended_run_without_a_tick(storage: StorageBackend) -> None:
    run_id = start(approval, "ORD-1")
    assert get_state(run_id, "stage", timeout=20) == "waiting"
    wait_until(lambda: status(storage, run_id) == "suspended", 20, "the run suspends on its signal")
    sent = time.monotonic()
    send_signal(run_id, "decision", {"ship": True}, idempotency_key="mail-1")
    send_signal(run_id, "decision", {"ship": False}, idempotency_key="mail-1")  # a retried delivery
    wait_until(lambda: get_state(run_id, "stage") == "decided", 20, "the signal resumes the run")
    assert time.monotonic() - sent < 10  # no tick runs here: the signal's own message woke it
    result = wait_for_result(run_id, timeout=30)
    assert result == {"order": "ORD-1", "decision": {"ship": True}, "shipped": 9, "late": "none"}
    events = PROCESS_LOOP.run(storage.get_events(run_id))
    assert [e.type for e in events].count("signal.received") == 1
    assert [e.type for e in events].count("signal.timed_out") == 1


def test_a_signal_sent_before_the_first_activation_is_delivered(storage: StorageBackend) -> None:
    run, _ = PROCESS_LOOP.run(create_run(storage, definition_of(approval), ("ORD-2",), {}))
    send_signal(run.run_id, "decision", {"ship": False})  # its message is the run's first activation
    assert wait_for_result(run.run_id, timeout=30) == {
        "order": "ORD-2",
        "decision": {"ship": False},
        "shipped": 0,
        "late": "none",
    }
