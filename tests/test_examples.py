"""The examples are documentation: each one runs, as a user would run it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONAL = sorted((ROOT / "examples" / "functional").glob("*.py"))


def test_the_promised_examples_exist() -> None:
    names = {p.name for p in FUNCTIONAL}
    assert {
        "simple_no_sleep.py",
        "simple_example.py",
        "basic_workflow.py",
        "approval_workflow.py",  # signals, state, webhooks
        "order_with_children.py",  # child workflows, cancellation
        "subscription.py",  # continue-as-new, workflow_info
        "scheduled_report.py",  # schedules: pause, resume, backfill, DST
        "audited_deploy.py",  # interceptors, export_run + replay, patched()
    } <= names


@pytest.mark.parametrize("path", [p for p in FUNCTIONAL if p.name != "distributed_example.py"], ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
