"""The distributed example and the README's onboarding workflow, against real workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.celery.conftest import ROOT, Broker, Subprocess


def test_distributed_example_runs_against_a_worker(
    crash_app: Any, own_broker: Broker, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    imports = "examples.functional.distributed_example,examples.onboarding"
    spawn("worker", PYWORKFLOW_IMPORTS=imports)
    spawn("beat")
    env = {
        **os.environ,
        "PYWORKFLOW_BROKER_URL": own_broker.url,
        "PYWORKFLOW_STORAGE_URL": f"sqlite:///{tmp_path}/runs.db",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "examples/functional/distributed_example.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ORD-7: 4 items packed" in done.stdout
    assert done.stdout.count("packed ORD-7-item-") == 4

    onboarding = subprocess.run(
        [
            sys.executable,
            "-c",
            "from examples.onboarding import onboard_user\n"
            "from pyworkflow import start, wait_for_result\n"
            "print(wait_for_result(start(onboard_user, 'u-1', wait='1s'), timeout=60))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert onboarding.returncode == 0, onboarding.stdout + onboarding.stderr
    assert "['welcome:u-1', 'tips:u-1']" in onboarding.stdout


def test_make_demo_script_runs_with_no_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result: ['welcome:user-42', 'tips:user-42']" in done.stdout
    assert "workflow.completed" in done.stdout and "sleep.completed" in done.stdout
