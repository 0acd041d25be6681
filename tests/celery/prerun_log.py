"""Imported by the worker subprocesses (``PYWORKFLOW_IMPORTS``) of tests that check the
order in which a worker ran its tasks: one ``task:args`` line per task, appended to the
file named by :data:`LOG_ENV` before the task runs."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import task_prerun

IMPORTS = "tests.celery.prerun_log"
LOG_ENV = "PYWORKFLOW_TEST_PRERUN_LOG"


def _record(sender: Any = None, args: Any = None, **_: Any) -> None:
    path = os.environ.get(LOG_ENV)
    if path and sender is not None:
        with open(path, "a") as log:
            log.write(sender.name + ":" + ",".join(args or ()) + "\n")


task_prerun.connect(_record, weak=False)
