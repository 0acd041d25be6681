"""Running workflows in-process, for unit tests and scripts.

``start_local`` runs a workflow until it completes, fails or suspends; ``resume_local``
activates a suspended run again; ``run_local`` drives a run to its end, skipping
through sleeps and retry backoffs on a virtual clock (a ``sleep("3d")`` takes
milliseconds, and every recorded time is still what it would have been).
"""

from __future__ import annotations

from typing import Any

from pyworkflow.clock import VirtualClock
from pyworkflow.continuation import latest_run
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import StorageBackend, WorkflowRun
from pyworkflow.versioning import ReplayResult, export_run, replay


async def start_local(
    wf: Any, *args: Any, storage: StorageBackend | None = None, idempotency_key: str | None = None, **kwargs: Any
) -> str:
    """Start ``wf(*args, **kwargs)`` in this process and return its run id, whatever the
    outcome (a failure is on the run, not raised). ``storage`` defaults to the configured one."""
    return await LocalRuntime(storage).start(wf, *args, idempotency_key=idempotency_key, **kwargs)


async def resume_local(run_id: str, storage: StorageBackend | None = None) -> WorkflowRun | None:
    """Activate a suspended run; a no-op before its wake time and on a finished run.
    Returns the run as it stands afterwards. Given a run that continued as new, the
    chain's current run is activated and returned (see :func:`pyworkflow.get_run`)."""
    runtime = LocalRuntime(storage)
    current = await latest_run(runtime.storage, run_id)
    await runtime.resume(current.run_id if current is not None else run_id)
    return await latest_run(runtime.storage, run_id)


async def run_local(
    wf: Any, *args: Any, storage: StorageBackend | None = None, idempotency_key: str | None = None, **kwargs: Any
) -> str:
    """Start ``wf`` and drive it to completion on a virtual clock; return its run id (the
    chain's first run's, when it continues as new: ``get_run`` follows the chain)."""
    runtime = LocalRuntime(storage, clock=VirtualClock())
    run_id = await runtime.start(wf, *args, idempotency_key=idempotency_key, **kwargs)
    await runtime.run_until_complete(run_id)
    return run_id


__all__ = [
    "LocalRuntime",
    "ReplayResult",
    "VirtualClock",
    "export_run",
    "replay",
    "resume_local",
    "run_local",
    "start_local",
]
