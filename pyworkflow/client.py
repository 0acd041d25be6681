"""Starting runs on Celery workers and waiting for their results.

``start()`` is synchronous and safe anywhere: plain scripts, Celery tasks, and code
already inside an event loop (a FastAPI handler) — the storage work runs on the
process's own PyWorkflow loop, never on the caller's. ``start_async()`` is the same for
``async`` callers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pyworkflow import config
from pyworkflow.continuation import continued_run_id, latest_run
from pyworkflow.engine import create_run
from pyworkflow.errors import RunFailedError
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.registry import definition_of, get_workflow
from pyworkflow.storage.base import RunStatus, WorkflowRun


async def start_async(wf: Any, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> str:
    """Record a run of ``wf`` (a ``@workflow`` function or its name) and enqueue its first
    activation on ``pyworkflow.workflows``; return the run id.

    Arguments are validated and encoded first: a bad one raises here and nothing is
    recorded. The run is recorded before the message is sent, so a lost message delays
    the run, never loses it: it is recorded with a timer ``start_guard`` seconds ahead, which
    the tick claims if no activation has run it by then. With an ``idempotency_key`` that
    already names a run, that run's id is returned and nothing new starts.
    """
    from pyworkflow.celery.factory import installed_app

    definition = definition_of(wf)
    storage = config.get_storage()
    runtime = installed_app().pyworkflow
    run, created = await create_run(
        storage, definition, args, kwargs, idempotency_key=idempotency_key, start_guard=runtime.settings.start_guard
    )
    if created:
        runtime.send_activation(run.run_id, new=True, workflow=definition.name)
    return run.run_id


def start(wf: Any, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> str:
    """Synchronous :func:`start_async`: ``run_id = start(process_order, "ORD-1")``."""
    return PROCESS_LOOP.run(start_async(wf, *args, idempotency_key=idempotency_key, **kwargs))


async def get_run_async(run_id: str) -> WorkflowRun | None:
    """:func:`get_run` for ``async`` callers."""
    return await latest_run(config.get_storage(), run_id)


def get_run(run_id: str) -> WorkflowRun | None:
    """The run's record as it stands now (status, result, error …), or ``None``.

    A run that ended with ``continue_as_new()`` (status ``continued``) is followed along
    its chain: the record returned is the chain's current run, whose ``run_id`` is then
    another than the one asked for. The storage backend's own ``get_run`` gives each
    run's record as stored."""
    return PROCESS_LOOP.run(get_run_async(run_id))


async def wait_for_result_async(run_id: str, timeout: float = 30.0, poll: float = 0.05) -> Any:
    """Wait until the run finishes and return its result, decoded to the workflow's
    return type when the workflow is registered here.

    Raises :class:`~pyworkflow.errors.RunFailedError` if it failed and ``TimeoutError``
    if it has not finished within ``timeout`` seconds. Polls storage from every 2 ms
    (most runs finish in milliseconds) backing off to every ``poll`` seconds. A run that
    continued (``continue_as_new()``) is followed to the run of its chain that finishes.
    """
    storage = config.get_storage()
    deadline = time.monotonic() + timeout
    interval = min(0.002, poll)
    current = run_id
    while True:
        run = await storage.get_run(current)
        if run is None:
            raise LookupError(f"run {current!r} does not exist in {storage!r}")
        if run.status == RunStatus.CONTINUED:
            current = continued_run_id(current)
            continue
        if run.status == RunStatus.COMPLETED:
            try:
                return get_workflow(run.workflow_name).signature.decode_result(run.result)
            except LookupError:
                return run.result
        if run.status.is_terminal:
            raise RunFailedError(current, run.error)
        if time.monotonic() >= deadline:
            chain = "" if current == run_id else f" (its chain's current run is {current!r})"
            raise TimeoutError(f"run {run_id!r} is still {run.status} after {timeout:g}s{chain}")
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, poll)


def wait_for_result(run_id: str, timeout: float = 30.0, poll: float = 0.05) -> Any:
    """Synchronous :func:`wait_for_result_async`."""
    return PROCESS_LOOP.run(wait_for_result_async(run_id, timeout, poll))
