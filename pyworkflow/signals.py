"""Talking to a running workflow: signals in, published state out.

In workflow code::

    decision = await wait_for_signal("approval", timeout="3d", default={"approved": False})
    set_state("stage", "waiting for approval")

From outside (any process sharing the storage; ``_async`` twins for async callers)::

    send_signal(run_id, "approval", {"approved": True}, idempotency_key="mail-4711")
    get_state(run_id, "stage")

A signal is a message in the run's inbox (kind ``signal``): posting it needs no lease,
so sending never waits on a running activation. The next activation moves it into the
log as ``signal.received``; which wait takes which signal is decided by the order of the
log alone (:class:`pyworkflow.history.History`), so replay hands every wait the same
signal: the oldest wait of a name takes the oldest signal of that name (FIFO per name),
and a signal sent before any wait, even before the run's first activation, waits in the
buffer for the next wait. A wait with a timeout ends with whichever of ``signal.received``
and ``signal.timed_out`` is recorded first.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from pyworkflow import config, observability
from pyworkflow.durations import Duration, wake_time
from pyworkflow.errors import RunNotFoundError, SerializationError, SignalTimeoutError
from pyworkflow.events import EventType
from pyworkflow.history import SIGNAL_MESSAGE, CallKind, CallState
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.primitives import name_option
from pyworkflow.replay import RunContext, _run, _step
from pyworkflow.serialization import MAX_KEY_LENGTH, check_key, encode
from pyworkflow.storage.base import StorageBackend

#: Inbox keys of signals are prefixed, apart from the engine's own (``step:…``).
_KEY_PREFIX = "signal:"
_NO_DEFAULT: Any = object()


def check_name(value: object, what: str) -> str:
    """A signal name or state key: a non-empty ``str`` without surrounding spaces or
    control characters, at most 255 characters; ``TypeError``/``ValueError`` naming
    ``what`` otherwise."""
    name = name_option(value, "name", what)
    if name is None:
        raise TypeError(f"{what}: the name must be a non-empty str, got None")
    if len(name) > MAX_KEY_LENGTH:
        raise ValueError(f"{what}: the name is {len(name)} characters long; the limit is {MAX_KEY_LENGTH}")
    check_key(name, f"{what}: name")
    return name


def workflow_context(call: str) -> RunContext:
    """The run whose workflow code is calling ``call``; a clear ``RuntimeError`` from a
    step or from outside a run."""
    ctx = _run.get()
    if ctx is None or _step.get() is not None:
        raise RuntimeError(
            f"{call} is workflow code: call it in a @workflow function's body, not in a step or outside a run"
        )
    return ctx


# -- in workflow code ------------------------------------------------------------------------


async def wait_for_signal(name: str, *, timeout: Duration | None = None, default: Any = _NO_DEFAULT) -> Any:
    """The payload of the next signal ``name`` sent to this run (``None`` when it carried
    none), in the order they were sent; one signal per wait.

    The run suspends until the signal arrives and holds no worker meanwhile. With
    ``timeout`` (``"3d"``, seconds, a ``timedelta`` or a ``datetime``) the wait ends at
    that time if no signal came first: it returns ``default`` when one is given, else
    raises :class:`~pyworkflow.errors.SignalTimeoutError` here, which the workflow may
    catch. Waits for two names at once work in ``asyncio.gather``.
    """
    where = "wait_for_signal()"
    name = check_name(name, where)
    ctx = workflow_context(where)
    now = ctx.clock.now()
    timeout_at = None if timeout is None else wake_time(timeout, now, what=f"{where}: timeout")
    call_id, rec = ctx.begin_call(CallKind.SIGNAL, name)
    if rec is None:
        ctx.decide(
            EventType.SIGNAL_WAITING,
            {"call_id": call_id, "name": name, "timeout_at": None if timeout_at is None else timeout_at.isoformat()},
        )
        rec = ctx.folded.signal_waiting(call_id, name, timeout_at)
    if rec.state == CallState.WAITING and rec.wake_at is not None and rec.wake_at <= now:
        ctx.decide(EventType.SIGNAL_TIMED_OUT, {"call_id": call_id})
        ctx.folded.signal_timed_out(call_id)
    if rec.state == CallState.COMPLETED:
        return rec.result
    if rec.state == CallState.TIMED_OUT:
        if default is not _NO_DEFAULT:
            return default
        raise SignalTimeoutError(
            f"run {ctx.run_id!r}: no signal {name!r} arrived before the wait's timeout "
            f"({rec.wake_at.isoformat() if rec.wake_at else '?'})",
            run_id=ctx.run_id,
            name=name,
        )
    # One loop turn before the run suspends: sibling branches of an asyncio.gather reach
    # their own durable calls (a step starts, another wait is recorded) in this activation,
    # as they do while a sleep records itself.
    await asyncio.sleep(0)
    ctx.suspend_on(call_id, rec.wake_at)


def set_state(key: str, value: Any) -> None:
    """Publish ``value`` (JSON: the value policy applies) under ``key`` for
    :func:`get_state` to read from outside: progress, a payment URL, the current stage.
    Recorded once; replay never publishes it again. Workflow code only."""
    where = "set_state()"
    key = check_name(key, where)
    ctx = workflow_context(where)
    data = encode(value, what=f"set_state({key!r}): value")
    index = ctx.next_state_call()
    if index is not None:
        ctx.record_soon(EventType.STATE_SET, {"index": index, "key": key, "value": data})


# -- from outside ----------------------------------------------------------------------------


def check_run_id(run_id: object, where: str) -> str:
    if not isinstance(run_id, str) or not run_id:
        raise TypeError(f"{where}: run_id must be a non-empty str, got {run_id!r}")
    check_key(run_id, f"{where}: run_id")
    return run_id


async def send_signal_async(
    run_id: str,
    name: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
    storage: StorageBackend | None = None,
) -> str:
    """Send signal ``name`` with a JSON ``payload`` to ``run_id``; return its message id.

    Recorded in the run's inbox before this returns, and delivered exactly once into
    the log. The run wakes at once when a Celery app is configured (a direct activation
    message), and through the tick within one tick interval in any case. A run that
    ended with ``continue_as_new()`` passes the signal on: it goes to its chain's current
    run (signals it had not consumed moved there too, in order). The same
    ``idempotency_key`` twice for one run stores one signal (the first one's id is
    returned). Raises :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run,
    :class:`~pyworkflow.errors.RunFinishedError` for a finished one, and
    :class:`~pyworkflow.errors.SerializationError` for a payload that is not JSON, with
    nothing recorded.
    """
    where = "send_signal()"
    run_id = check_run_id(run_id, where)
    name = check_name(name, where)
    data = encode(payload, what=f"send_signal({name!r}): payload")
    key = None
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise TypeError(f"{where}: idempotency_key must be a non-empty str or None, got {idempotency_key!r}")
        limit = MAX_KEY_LENGTH - len(_KEY_PREFIX)
        if len(idempotency_key) > limit:
            raise SerializationError(
                f"{where}: idempotency_key is {len(idempotency_key)} characters long; the limit is {limit} "
                "(hash a longer natural key, e.g. with hashlib.sha256, to fit)"
            )
        check_key(idempotency_key, f"{where}: idempotency_key")
        key = _KEY_PREFIX + idempotency_key
    from pyworkflow.continuation import post_along_chain

    store = storage if storage is not None else config.get_storage()
    run_id, message_id = await post_along_chain(
        store, run_id, SIGNAL_MESSAGE, {"name": name, "payload": data}, idempotency_key=key
    )
    observability.engine_log("signal_sent", run_id=run_id, signal=name)
    if can_wake():  # the message names the workflow (Flower, celery inspect): one read
        workflow = None
        try:
            run = await store.get_run(run_id)
            workflow = run.workflow_name if run is not None else None
        except Exception as exc:  # noqa: BLE001 - the signal is recorded: a name is not worth failing it
            observability.engine_log("signal_wake_unnamed", level="info", run_id=run_id, error=str(exc))
        wake_run(run_id, workflow)
    return message_id


def can_wake() -> bool:
    """Whether this process has a Celery app to send wake-ups with (one was set up, e.g.
    by ``start()``, or ``PYWORKFLOW_BROKER_URL`` names a broker)."""
    factory = sys.modules.get("pyworkflow.celery.factory")
    return (factory is not None and factory._installed is not None) or bool(os.environ.get("PYWORKFLOW_BROKER_URL"))


def wake_run(run_id: str, workflow: str | None = None) -> None:
    """The fast path: an activation message now, named ``workflow``, when this process
    has a Celery app (:func:`can_wake`). The request is already recorded, so a broker
    error here only delays it to the next tick."""
    if not can_wake():
        return
    from pyworkflow.celery.factory import installed_app

    try:
        installed_app().pyworkflow.send_activation(run_id, workflow=workflow)
    except Exception as exc:  # noqa: BLE001 - recorded already: the tick delivers it
        observability.engine_log("signal_wake_failed", level="warning", run_id=run_id, error=str(exc))


def send_signal(
    run_id: str,
    name: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
    storage: StorageBackend | None = None,
) -> str:
    """Synchronous :func:`send_signal_async`."""
    return PROCESS_LOOP.run(send_signal_async(run_id, name, payload, idempotency_key=idempotency_key, storage=storage))


_MISSING: Any = object()


async def get_state_async(
    run_id: str,
    key: str,
    *,
    timeout: float | None = None,
    storage: StorageBackend | None = None,
    poll: float = 0.05,
) -> Any:
    """The latest value the run published under ``key`` with :func:`set_state`, or
    ``None`` when it published none yet.

    With ``timeout`` (seconds), waits until the key is first published; raises
    ``TimeoutError`` when it is not within ``timeout`` or the run finished without it.
    Reads the run's log (only what is new on each poll); never runs workflow code.
    Raises :class:`~pyworkflow.errors.RunNotFoundError` for an unknown run. A run that
    continued as new is followed along its chain: the value is the latest one any run of
    the chain published, up to its current run.
    """
    where = "get_state()"
    run_id = check_run_id(run_id, where)
    key = check_name(key, where)
    if timeout is not None and (not isinstance(timeout, int | float) or not timeout >= 0):
        raise ValueError(f"{where}: timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    store = storage if storage is not None else config.get_storage()
    deadline = None if timeout is None else time.monotonic() + timeout
    value, seen, interval = _MISSING, 0, min(0.005, poll)
    while True:
        run = await store.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        following = None
        for event in await store.get_events(run_id, after_seq=seen):
            seen = event.seq
            if event.type == EventType.STATE_SET and event.data.get("key") == key:
                value = event.data.get("value")
            elif event.type == EventType.WORKFLOW_CONTINUED:
                following = event.data.get("run_id")
        if isinstance(following, str):  # it continued as new: read on along the chain
            run_id, seen = following, 0
            continue
        if value is not _MISSING:
            return value
        if deadline is None:
            return None
        if run.status.is_terminal:
            raise TimeoutError(f"run {run_id!r} finished ({run.status}) without publishing state {key!r}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"run {run_id!r} published no state {key!r} within {timeout:g}s")
        await asyncio.sleep(interval)
        interval = min(interval * 2, poll)


def get_state(run_id: str, key: str, *, timeout: float | None = None, storage: StorageBackend | None = None) -> Any:
    """Synchronous :func:`get_state_async`."""
    return PROCESS_LOOP.run(get_state_async(run_id, key, timeout=timeout, storage=storage))
