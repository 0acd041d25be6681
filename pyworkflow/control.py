"""Acting on a run from outside: cancellation, pause and unpause, retry.

Every request travels through the run's inbox, like a signal: it needs no lease, so it
never waits on a running activation, and the run takes it up at its next activation.
"""

from __future__ import annotations

from typing import Any

from pyworkflow import config, observability
from pyworkflow.clock import utcnow
from pyworkflow.errors import RunFinishedError, RunNotFoundError, RunNotRetryableError
from pyworkflow.events import Event, EventType
from pyworkflow.history import CANCEL_MESSAGE, PAUSE_MESSAGE, UNPAUSE_MESSAGE
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.serialization import check_json
from pyworkflow.signals import check_run_id, wake_run
from pyworkflow.storage.base import RunStatus, StorageBackend

#: One cancellation per run: a repeated request stores nothing more.
_CANCEL_KEY = "cancel"
MAX_REASON_LENGTH = 1000


async def cancel_async(run_id: str, *, reason: str | None = None, storage: StorageBackend | None = None) -> bool:
    """Ask ``run_id`` to stop. Returns ``True`` when the request is recorded (also when it
    was already), ``False`` when the run had already finished; raises
    :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run.

    The workflow sees ``asyncio.CancelledError`` at the durable call it waits in (a sleep,
    a signal wait, a step being retried or dispatched), or at its next durable call when
    it waits on nothing; a step running inline is interrupted at its next ``await``
    unless declared ``@step(cancel="finish")``. The workflow may catch it and run cleanup
    steps; a ``CancelledError`` that leaves the workflow ends the run ``cancelled``.

    Given a run that ended with ``continue_as_new()``, the request goes to its chain's
    current run (``False`` when the chain has ended).
    """
    where = "cancel()"
    run_id = check_run_id(run_id, where)
    if reason is not None:
        if not isinstance(reason, str):
            raise TypeError(f"{where}: reason must be a str or None, got {reason!r}")
        if len(reason) > MAX_REASON_LENGTH:
            raise ValueError(f"{where}: reason is {len(reason)} characters long; the limit is {MAX_REASON_LENGTH}")
        check_json(reason, f"{where}: reason")
    return await _post(run_id, CANCEL_MESSAGE, storage, {"reason": reason}, _CANCEL_KEY)


def cancel(run_id: str, *, reason: str | None = None, storage: StorageBackend | None = None) -> bool:
    """Synchronous :func:`cancel_async`."""
    return PROCESS_LOOP.run(cancel_async(run_id, reason=reason, storage=storage))


async def _post(
    run_id: str, kind: str, storage: StorageBackend | None, payload: Any = None, key: str | None = None
) -> bool:
    """Post a request to the run's inbox and wake it: ``False`` when the run has ended (a
    repeated request would find its first one by key, so the run is asked first). A run
    that continued (``continue_as_new()``) passes the request to its chain's current run."""
    from pyworkflow.continuation import latest_run, post_along_chain

    store = storage if storage is not None else config.get_storage()
    run = await latest_run(store, run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    if run.status.is_terminal:
        return False
    try:
        run_id, _ = await post_along_chain(store, run.run_id, kind, payload, idempotency_key=key)
    except RunFinishedError:
        return False
    observability.engine_log(f"{kind}_requested", run_id=run_id)
    wake_run(run_id, run.workflow_name)  # a chain's runs share their workflow
    return True


async def pause_async(run_id: str, *, storage: StorageBackend | None = None) -> bool:
    """Hold ``run_id``: the step it is running finishes, then it stops at its next durable
    call (no new step or attempt starts) with status ``paused``, holding no worker.
    Timers that fall due and signals that arrive meanwhile are kept and act after
    :func:`unpause_async`; :func:`cancel_async` works on a paused run. Idempotent.
    Returns ``False`` when the run had already finished; raises
    :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run."""
    return await _post(check_run_id(run_id, "pause()"), PAUSE_MESSAGE, storage)


async def unpause_async(run_id: str, *, storage: StorageBackend | None = None) -> bool:
    """Let a paused run go on from where it was held. Idempotent (a run that is not paused
    is left as it is). Returns ``False`` when the run had already finished."""
    return await _post(check_run_id(run_id, "unpause()"), UNPAUSE_MESSAGE, storage)


def pause(run_id: str, *, storage: StorageBackend | None = None) -> bool:
    """Synchronous :func:`pause_async`."""
    return PROCESS_LOOP.run(pause_async(run_id, storage=storage))


def unpause(run_id: str, *, storage: StorageBackend | None = None) -> bool:
    """Synchronous :func:`unpause_async`."""
    return PROCESS_LOOP.run(unpause_async(run_id, storage=storage))


#: How long ``retry`` may hold a run's lease while it records the retry.
_RETRY_LEASE = 30.0


async def retry_async(run_id: str, *, storage: StorageBackend | None = None) -> None:
    """Continue a ``failed`` or ``blocked`` run in place: completed steps keep their
    results and never run again; the steps that failed run again with fresh attempts,
    and the workflow code is replayed as it is now (a fix deployed since is used). A
    ``workflow.retried`` event records it. Raises
    :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run and
    :class:`~pyworkflow.errors.RunNotRetryableError` for a run in another status (or
    being changed by someone else at that moment). Given a run that continued as new, the
    chain's current run is the one retried."""
    from pyworkflow.continuation import latest_run

    where = "retry()"
    run_id = check_run_id(run_id, where)
    store = storage if storage is not None else config.get_storage()
    run = await latest_run(store, run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    run_id = run.run_id
    if run.status not in (RunStatus.FAILED, RunStatus.BLOCKED):
        raise RunNotRetryableError(
            f"run {run_id!r} is {run.status}: only a failed or blocked run can be retried", run_id=run_id
        )
    lease = await store.acquire_lease(run_id, "retry", _RETRY_LEASE)
    if lease is None:
        raise RunNotRetryableError(f"run {run_id!r} is being activated right now; try again", run_id=run_id)
    try:
        last = await store.get_events(run_id)
        now = utcnow()
        retried = Event.new(
            len(last) + 1, EventType.WORKFLOW_RETRIED, now, {"previous_status": str(run.status), "error": run.error}
        )
        await store.append_events(
            run_id,
            [retried],
            lease_token=lease.token,
            run_changes={"status": RunStatus.SUSPENDED, "error": None, "completed_at": None, "wake_at": now},
            release_lease=True,
        )
    except BaseException:
        await store.release_lease(lease)
        raise
    observability.engine_log("run_retried", run_id=run_id, previous_status=str(run.status))
    wake_run(run_id, run.workflow_name)


def retry(run_id: str, *, storage: StorageBackend | None = None) -> None:
    """Synchronous :func:`retry_async`."""
    PROCESS_LOOP.run(retry_async(run_id, storage=storage))
