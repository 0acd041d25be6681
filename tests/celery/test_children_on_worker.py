"""Child workflows through a real Celery worker, on each real broker: a parent fans out
children, each started by its own activation message once the parent's append is
written, and resumes as they end (their messages, no tick running)."""

from __future__ import annotations

from typing import Any

import pytest

import pyworkflow.celery.factory as factory
from pyworkflow import start, wait_for_result
from pyworkflow.children import child_run_id
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend
from tests.celery_workflows import fan_out_children


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


def test_a_parent_fans_out_children_and_gets_their_results_in_order(storage: StorageBackend) -> None:
    run_id = start(fan_out_children, 10)
    assert wait_for_result(run_id, timeout=60) == [i + 3 for i in range(10)]
    for call_id in range(1, 11):
        kid = PROCESS_LOOP.run(storage.get_run(child_run_id(run_id, call_id)))
        assert kid is not None and kid.status == "completed"
    types = [e.type for e in PROCESS_LOOP.run(storage.get_events(run_id))]
    assert types.count("child.started") == 10 and types.count("child.completed") == 10
