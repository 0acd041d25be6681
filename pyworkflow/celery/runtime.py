"""The Celery runtime: activations as tasks, wake-ups from the beat tick.

An activation never waits: when a run must sleep or back off, it records a timer in
storage and ends. ``pyworkflow.tick`` (Celery Beat, every second) claims the due timers
atomically and enqueues their activations; short waits also get a countdown message as
a latency hint. Every path is idempotent, so duplicates (two beats, a hint racing the
tick) do no harm, and a lost message only delays a run until the next tick.
"""

from __future__ import annotations

import os
import re
import socket
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pyworkflow import config, metrics, observability
from pyworkflow.celery.settings import (
    ACTIVATE_TASK,
    STEP_QUEUE,
    STEP_TASK,
    WORKFLOW_QUEUE,
    Settings,
    broker_kind,
    broker_url_of,
    priority_for,
)
from pyworkflow.clock import utcnow
from pyworkflow.engine import Outcome, activate, recover_crashed
from pyworkflow.errors import CorruptedStorageError, RunNotFoundError, StorageError
from pyworkflow.interceptors import new_run_carrier
from pyworkflow.loop import THREAD_LOOPS, contained
from pyworkflow.storage.base import StorageBackend, unavailable

if TYPE_CHECKING:
    from celery import Celery

    from pyworkflow.dispatch import Dispatch


#: A task that met a storage error is retried after 1 s, 2 s, 4 s … at most this long,
#: this many times (about 15 minutes in all); past that, a run is taken up again by the
#: tick (its timer, or its lease's expiry) once storage is back.
TASK_RETRY_CAP = 60.0
TASK_MAX_RETRIES = 20
#: The longest run id a task accepts (the ids PyWorkflow makes have 32 characters; the
#: file backend names files after them and allows 200).
MAX_RUN_ID = 200
#: What no run id or step name holds: ASCII control characters (as the decorators
#: refuse in names) and lone surrogates (no backend can store them).
_BAD_CHARACTER = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def argument_problem(run_id: Any, call_id: Any = 1, step: Any = "step") -> str | None:
    """What is wrong with a task's arguments, or ``None``: ``run_id`` must be a string of
    1-:data:`MAX_RUN_ID` characters, ``call_id`` an int >= 1 and ``step`` a non-empty
    string, neither string holding control characters or lone surrogates. Checked before
    anything reaches storage, where an int could pass for a missing run, a dict would
    read as a storage error (and be retried as if storage were down), a NUL break a
    PostgreSQL query and a huge string become a key."""
    problem = _text_problem("run_id", run_id, MAX_RUN_ID)
    if problem is not None:
        return problem
    if type(call_id) is not int or call_id < 1:
        return f"call_id must be an int >= 1, got {_shown(call_id)}"
    return _text_problem("step", step, None)


def _text_problem(name: str, value: Any, limit: int | None) -> str | None:
    if not isinstance(value, str):
        return f"{name} must be a string, got {_shown(value)}"
    if not value:
        return f"{name} must not be empty"
    if limit is not None and len(value) > limit:
        return f"{name} must have at most {limit} characters, got {_shown(value)}"
    if _BAD_CHARACTER.search(value) is not None:
        return f"{name} must not hold control characters or lone surrogates, got {_shown(value)}"
    return None


def _shown(value: Any) -> str:
    """``value`` for a log line: its type, and a repr cut to 80 characters."""
    text = repr(value)
    if len(text) > 80:
        size = f" of {len(value)} characters" if isinstance(value, str) else ""
        text = f"{text[:60]}... (a {type(value).__name__}{size})"
    return f"{type(value).__name__} {text}"


class CeleryRuntime:
    """What the tasks of one Celery app do; reachable as ``app.pyworkflow``."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._imported_pid = -1

    @property
    def storage(self) -> StorageBackend:
        return config.get_storage()

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def ensure_imports(self) -> None:
        if self._imported_pid != os.getpid():
            config.import_modules(self.settings.imports)
            self._imported_pid = os.getpid()

    # -- messages ---------------------------------------------------------------------

    def send_activation(
        self, run_id: str, countdown: float | None = None, *, new: bool = False, workflow: str | None = None
    ) -> None:
        """Enqueue an activation. On Redis and AMQP brokers, wake-ups (timers, hints, step
        results) go ahead of new runs, so a burst of starts cannot make sleepers late.
        ``workflow``, when known, is the task's shadow name: Flower, ``celery inspect`` and
        the worker's log show the workflow instead of ``pyworkflow.activate``."""
        priority = priority_for(broker_url_of(self.app.conf), "new" if new else "wake")
        self.app.send_task(
            ACTIVATE_TASK,
            args=[run_id],
            queue=WORKFLOW_QUEUE,
            countdown=countdown,
            ignore_result=True,
            priority=priority,
            shadow=workflow,
            # a run just recorded here with a carrier (trace context) from interceptors
            headers=new_run_carrier(run_id),
        )

    @property
    def priorities(self) -> bool:
        # Redis consumes priority 0 first, AMQP the highest (its queue is declared with
        # x-max-priority): settings.priority_for maps both. The filesystem and memory
        # transports have none: plain FIFO there.
        return broker_kind(broker_url_of(self.app.conf)) is not None

    def send_dispatch(self, dispatch: Dispatch) -> None:
        self.app.send_task(
            STEP_TASK,
            args=[dispatch.run_id, dispatch.call_id, dispatch.step],
            queue=dispatch.queue or STEP_QUEUE,
            ignore_result=True,
            shadow=dispatch.step,  # Flower and the worker's log name the step
            headers=dispatch.carrier,  # the run's carrier (trace context), when interceptors are on
        )

    # -- task bodies ------------------------------------------------------------------

    def check_arguments(self, task: Any, run_id: Any, call_id: Any = 1, step: Any = "step") -> None:
        """Refuse a message with malformed arguments (see :func:`argument_problem`)."""
        problem = argument_problem(run_id, call_id, step)
        if problem is not None:
            raise self.refuse(task, problem)

    def refuse(self, task: Any, problem: str) -> BaseException:
        """What a task raises for a message it can never process: logged, and rejected
        without a retry or a requeue (the same message would fail the same way again)."""
        from celery.exceptions import Reject

        observability.engine_log("task_refused", level="error", task=task.name, task_id=task.request.id, error=problem)
        rejection: BaseException = Reject(f"refused: {problem}; the message is dropped", requeue=False)
        return rejection

    async def activate(self, run_id: str) -> Outcome:
        self.ensure_imports()
        outcome = await activate(
            self.storage,
            run_id,
            lease_ttl=self.settings.lease_ttl,
            owner=self.owner,
            dispatch_guard=self.dispatch_guard,
        )
        if outcome.status == "missing":
            observability.engine_log("activation_of_unknown_run", level="info", task=ACTIVATE_TASK, run_id=run_id)
        for dispatch in outcome.dispatches:
            self.send_dispatch(dispatch)
        for other, workflow in outcome.woken:  # a child started, a parent told of its child's end
            self.send_activation(other, workflow=workflow)
        if outcome.status == "suspended" and outcome.wake_at is not None:
            self._hint(run_id, outcome.wake_at, outcome.workflow)
        return outcome

    def _hint(self, run_id: str, wake_at: datetime, workflow: str | None = None) -> None:
        wait = (wake_at - utcnow()).total_seconds()
        if wait <= self.settings.countdown_hint:
            self.send_activation(run_id, countdown=max(wait, 0.0), workflow=workflow)

    async def tick(self, *, batch: int = 500) -> int:
        """Recover crashed runs, start the runs of due schedule slots, claim due timers,
        enqueue their activations."""
        if metrics.ACTIVE is not None:  # its duration observed only while metrics are on
            return await metrics.timed_tick("celery", self._tick(batch))
        return await self._tick(batch)

    async def _tick(self, batch: int) -> int:
        from pyworkflow.schedules import Firing

        self.ensure_imports()  # scheduled runs are started here: their workflows must be known
        storage = self.storage
        await recover_crashed(storage, limit=batch)
        await Firing(storage, launch=self._launch, start_guard=self.settings.start_guard).fire_due(limit=batch)
        woken = 0  # new runs whose first message was lost are due through their start-guard timer
        while True:
            timers = await storage.claim_due_timers(utcnow(), limit=batch, redeliver_after=self._redeliver_after)
            for timer in timers:
                self.send_activation(timer.run_id, workflow=timer.workflow_name)
            woken += len(timers)
            if len(timers) < batch:
                break
        if woken:
            observability.engine_log("tick_woke_runs", count=woken)
        return woken

    async def _launch(self, run_id: str, workflow: str) -> None:
        self.send_activation(run_id, new=True, workflow=workflow)

    @property
    def dispatch_guard(self) -> timedelta:
        # A dispatched step is sent again only when nothing was heard of it for longer
        # than the broker itself waits before redelivering it (see DISTRIBUTED.md).
        return timedelta(seconds=self.settings.visibility_timeout + self.settings.lease_ttl)

    @property
    def _redeliver_after(self) -> float:
        # A claimed timer whose activation never ran is claimed again after this long.
        return max(30.0, self.settings.lease_ttl / 2)

    async def run_step(self, run_id: str, call_id: int, step: str) -> str:
        from pyworkflow.dispatch import attempt_dispatched_step

        self.ensure_imports()
        storage = self.storage
        try:
            status, workflow = await attempt_dispatched_step(storage, run_id, call_id, step)
        except storage.unavailable_errors as exc:
            raise unavailable(run_id, exc) from exc
        if status == "skipped":
            # a duplicate delivery, or a message naming a call the run is not waiting on
            observability.engine_log(
                "step_message_skipped",
                level="info",
                task=STEP_TASK,
                run_id=run_id,
                call_id=call_id,
                step=step,
                reason="the run has finished, or this call is not a dispatched step of this name awaiting an attempt",
            )
        else:
            # its outcome waits in the inbox; the tick is the fallback
            self.send_activation(run_id, workflow=workflow)
        return status

    def retry_later(self, task: Any, exc: StorageError) -> BaseException:
        """What a task raises after a storage error: a retry of itself with backoff (1 s,
        2 s, 4 s … up to a minute) for anything transient, the error itself for a record
        that cannot be read (retrying cannot fix it). Logged either way."""
        retries = task.request.retries or 0
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, RunNotFoundError):  # a step for a run that is gone (or never was)
            return self.refuse(task, str(exc))
        if isinstance(exc, CorruptedStorageError):
            observability.engine_log("task_failed_storage_error", level="error", task=task.name, error=error)
            return exc
        countdown = min(TASK_RETRY_CAP, 2.0**retries)
        observability.engine_log(
            "task_retried_after_storage_error",
            level="error",
            task=task.name,
            retries=retries,
            countdown=countdown,
            error=error,
        )
        return task.retry(exc=exc, countdown=countdown, throw=False)  # type: ignore[no-any-return]

    def run(self, coro: Any) -> Any:
        """Run a task body's coroutine on the pool thread's own loop; a BaseException it
        ends with (user code's, past the engine) comes out as an ordinary error."""
        return THREAD_LOOPS.run(contained(coro))
