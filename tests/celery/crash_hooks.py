"""Workflows for the child-crash test, and the hook that kills a worker at the worst
moment: after the parent's activation wrote ``child.started`` (the child exists in
storage), before the child's first activation message is sent.

Imported by the test and by its worker subprocesses (``PYWORKFLOW_IMPORTS``). The hook is
installed only in a process whose environment names a crash directory
(:data:`CRASH_DIR_ENV`); that directory holds ``target``, the run id of the child whose
first activation must never be sent, and ``crashed``, made (exclusively) just before the
kill, so the process that finds it already there sends normally: the crash happens once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from pyworkflow import run_child, step, workflow
from tests.celery_workflows import mark

IMPORTS = "tests.celery.crash_hooks"
CRASH_DIR_ENV = "PYWORKFLOW_TEST_CHILD_CRASH_DIR"
CHILD = "crash.charge_card"
PARENT = "crash.checkout"
#: The children's start guard in a crashing worker (see :func:`install`).
SHORT_START_GUARD = 2.0


@step(name="crash.charge")
async def charge(tag: str, cents: int) -> int:
    mark(f"{tag}-charge")  # one line per execution, whatever process runs it
    return cents * 2


@workflow(name=CHILD)
async def charge_card(tag: str, cents: int) -> int:
    return await charge(tag, cents)


@workflow(name=PARENT)
async def checkout(tag: str, cents: int) -> int:
    return await run_child(charge_card, tag, cents) + 1


def install(crash_dir: Path) -> None:
    """Make this process SIGKILL itself when it is about to send the first activation of
    the child named in ``crash_dir/target`` (once: ``crash_dir/crashed``)."""
    import pyworkflow.children
    from pyworkflow.celery.runtime import CeleryRuntime

    # A child run is created with a start-guard timer of children.CHILD_START_GUARD (30 s,
    # a constant: PYWORKFLOW_START_GUARD covers start() only), after which the tick starts
    # it should its first message be lost, as here. start_child() reads the module global
    # when it creates the child, so in this process (where the child is created) the
    # guard is shortened, only to keep the test short; the recovery path is the same.
    pyworkflow.children.CHILD_START_GUARD = SHORT_START_GUARD

    send_activation = CeleryRuntime.send_activation

    def send_or_die(self: CeleryRuntime, run_id: str, *args: Any, **kwargs: Any) -> None:
        if run_id == (crash_dir / "target").read_text().strip():
            try:
                (crash_dir / "crashed").open("x").close()
            except FileExistsError:
                pass  # crashed once already: send as usual
            else:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no ack, nothing sent
        send_activation(self, run_id, *args, **kwargs)

    CeleryRuntime.send_activation = send_or_die  # type: ignore[method-assign]


if os.environ.get(CRASH_DIR_ENV):
    install(Path(os.environ[CRASH_DIR_ENV]))
