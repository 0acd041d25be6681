"""A worker SIGKILLed between recording a child and sending its first activation: the
child still starts (its start-guard timer, through the tick), exactly once, and the
parent completes with its result. On each real broker, with worker and beat subprocesses
sharing a SQLite store."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyworkflow import get_run, start, wait_for_result
from pyworkflow.children import child_run_id
from pyworkflow.config import get_storage
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import RunStatus
from tests.celery.conftest import Subprocess
from tests.celery.crash_hooks import CHILD, CRASH_DIR_ENV, IMPORTS, checkout
from tests.celery_workflows import count


def _types(run_id: str) -> list[str]:
    return [str(e.type) for e in PROCESS_LOOP.run(get_storage().get_events(run_id))]


def test_a_worker_killed_before_sending_a_childs_first_activation_still_starts_it_once(
    crash_app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    tag = f"child-crash-{uuid.uuid4().hex[:6]}"
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    parent_id = start(checkout, tag, 21)  # queued: no worker yet
    child_id = child_run_id(parent_id, 1)
    (crash_dir / "target").write_text(child_id)

    # the solo pool runs tasks in the worker's own process: the kill takes all of it
    first = spawn("worker", "--pool=solo", PYWORKFLOW_IMPORTS=IMPORTS, **{CRASH_DIR_ENV: str(crash_dir)})
    assert first.proc.wait(60) == -signal.SIGKILL, f"the worker did not kill itself; see {first.log}"
    assert (crash_dir / "crashed").exists()

    # what the crash left: the parent recorded the child and suspended on it (its append
    # written, its lease released); the child exists, was never activated, ran nothing
    parent = get_run(parent_id)
    assert parent is not None and parent.status == RunStatus.SUSPENDED
    assert _types(parent_id).count("child.started") == 1
    child = get_run(child_id)
    assert child is not None and child.status == RunStatus.PENDING
    assert _types(child_id) == ["workflow.started"]
    assert count(f"{tag}-charge") == 0

    spawn("worker", PYWORKFLOW_IMPORTS=IMPORTS)
    spawn("beat")  # the tick finds the child's start-guard timer due and sends its activation
    assert wait_for_result(parent_id, timeout=90) == 21 * 2 + 1

    children = PROCESS_LOOP.run(get_storage().list_runs(workflow_name=CHILD)).runs
    assert [c.run_id for c in children] == [child_id], "the child exists once"
    child = get_run(child_id)
    assert child is not None and child.status == RunStatus.COMPLETED and child.result == 42
    child_log = _types(child_id)
    assert child_log.count("workflow.started") == 1 and child_log.count("workflow.completed") == 1, child_log
    assert child_log.count("step.started") == 1 and child_log.count("step.completed") == 1, child_log
    assert count(f"{tag}-charge") == 1, "the child's step ran once"
    parent_log = _types(parent_id)
    assert parent_log.count("child.started") == 1 and parent_log.count("child.completed") == 1, parent_log
