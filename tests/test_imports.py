"""A light core import and no import-order traps: every public module imports first, on
its own, in a fresh interpreter; ``import pyworkflow`` does not load Celery."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import pyworkflow

HEAVY = ("celery", "kombu", "amqp", "yaml", "click", "billiard", "vine")


def _modules() -> list[str]:
    names = ["pyworkflow"]
    for info in pkgutil.walk_packages(pyworkflow.__path__, "pyworkflow."):
        names.append(info.name)
    return sorted(names)


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module", _modules())
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = _fresh(f"import {module}")
    assert done.returncode == 0, done.stderr


def test_the_core_import_does_not_load_celery() -> None:
    done = _fresh(
        "import sys, pyworkflow, pyworkflow.testing\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"import pyworkflow loaded {done.stdout.strip()}"


def test_celery_loads_when_the_celery_runtime_is_used() -> None:
    done = _fresh("import sys, pyworkflow.celery\nprint('celery' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
