"""The in-process runtime: activations run in the caller's event loop.

Same engine as the Celery runtime; only the scheduling differs: a suspended run moves
again when :meth:`LocalRuntime.resume` (or :meth:`tick`) is called after its wake time,
or :meth:`run_until_complete` drives it to the end — instantly with a
:class:`~pyworkflow.clock.VirtualClock`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyworkflow import config, metrics, observability
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.continuation import continued_run_id
from pyworkflow.engine import DEFAULT_LEASE_TTL, Outcome, activate, create_run, recover_crashed
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun

#: Outcomes after which a run needs no more activations from this runtime.
_DONE = frozenset({"completed", "failed", "cancelled", "continued", "finished", "missing"})


#: A scheduled run is started at once; its timer this far ahead covers a crash meanwhile.
SCHEDULED_START_GUARD = 30.0


class LocalRuntime:
    """Start and drive runs in this process.

    ``clock`` decides what "now" is for every recorded time; pass a
    :class:`~pyworkflow.clock.VirtualClock` to skip through sleeps and retry backoffs.
    """

    def __init__(
        self, storage: StorageBackend | None = None, *, clock: Clock | None = None, lease_ttl: float = DEFAULT_LEASE_TTL
    ) -> None:
        self.storage = storage if storage is not None else config.get_storage()
        self.clock = clock or SYSTEM_CLOCK
        self.lease_ttl = lease_ttl
        #: Runs other activations made due (children), which run_until_complete drives too.
        self._woken: set[str] = set()

    async def start(self, wf: Any, *args: Any, idempotency_key: str | None = None, **kwargs: Any) -> str:
        """Record a run of ``wf`` and run its first activation; return the run id.

        A failure is recorded on the run, not raised. With an ``idempotency_key`` that
        already names a run, nothing new starts and that run's id is returned.
        """
        definition = definition_of(wf)
        run, created = await create_run(
            self.storage, definition, args, kwargs, idempotency_key=idempotency_key, clock=self.clock
        )
        if created:
            await self.resume(run.run_id)
        return run.run_id

    async def resume(self, run_id: str) -> Outcome:
        """One activation: a no-op before the wake time, on a finished run, or while
        another activation holds the run. The runs it made due (children it started, the
        parent it told of its end, the run it continued as) are activated next, as a
        Celery worker would, depth first (iteratively: a chain of a thousand runs that
        continue at once is no thousand nested calls)."""
        outcome = await activate(self.storage, run_id, clock=self.clock, lease_ttl=self.lease_ttl)
        if outcome.status in _DONE:
            self._woken.discard(run_id)
        stack = list(reversed(outcome.woken))
        while stack:
            other, _ = stack.pop()
            woken = await activate(self.storage, other, clock=self.clock, lease_ttl=self.lease_ttl)
            if woken.status in _DONE:
                self._woken.discard(other)
            else:
                self._woken.add(other)
            stack.extend(reversed(woken.woken))
        return outcome

    async def fire_schedules(self, *, limit: int = 100) -> int:
        """Start the runs of the schedules due now (by this runtime's clock) and run them;
        how many started. :meth:`tick` does this first."""
        from pyworkflow.schedules import Firing

        async def launch(run_id: str, workflow: str) -> None:
            await self.resume(run_id)

        firing = Firing(self.storage, launch=launch, start_guard=SCHEDULED_START_GUARD, clock=self.clock)
        return await firing.fire_due(limit=limit)

    async def tick(self, *, limit: int = 100) -> list[Outcome]:
        """Activate every run whose timer is due, then start the runs of due schedule
        slots (what Celery Beat's tick does): a scheduled run that just ended lets the
        next slot start under ``overlap="skip"``.

        One run whose activation raises (its stored record cannot be read back …) is
        logged and left out of the outcomes; the others are activated all the same."""
        if metrics.ACTIVE is not None:  # its duration observed only while metrics are on
            return await metrics.timed_tick("local", self._tick(limit))
        return await self._tick(limit)

    async def _tick(self, limit: int) -> list[Outcome]:
        await recover_crashed(self.storage, limit=limit)
        timers = await self.storage.claim_due_timers(self.clock.now(), limit=limit)
        outcomes = []
        for timer in timers:
            try:
                outcomes.append(await self.resume(timer.run_id))
            except Exception as exc:  # noqa: BLE001 - one bad run must not stop the others
                observability.engine_log(
                    "tick_activation_failed", level="warning", run_id=timer.run_id, error=repr(exc)
                )
        await self.fire_schedules(limit=limit)
        return outcomes

    async def run_until_complete(self, run_id: str, *, max_activations: int = 100_000) -> WorkflowRun:
        """Activate ``run_id`` again and again, waiting out each suspension, until it ends,
        or until it waits for a message only (a signal wait without a timeout, a pause) or
        is blocked (its code diverged from its log):
        then the run is returned, for the test to send the message and call this again.

        A run that continues as new (``continue_as_new()``) is followed along its chain:
        the run returned is then the chain's last one (another ``run_id``)."""
        for _ in range(max_activations):
            outcome = await self.resume(run_id)
            run = await self.storage.get_run(run_id)
            if run is None:
                raise LookupError(f"run {run_id!r} does not exist in {self.storage!r}")
            if run.status == RunStatus.CONTINUED:
                run_id = continued_run_id(run_id)
                continue
            if run.status.is_terminal or run.status in (RunStatus.PAUSED, RunStatus.BLOCKED):
                return run
            if run.status == RunStatus.SUSPENDED and run.wake_at is None:
                return run
            if outcome.wake_at is not None:
                await self.clock.wait_until(outcome.wake_at)
                for other in sorted(self._woken):  # its children, asleep meanwhile, move too
                    await self.resume(other)
            elif outcome.status == "busy":
                await asyncio.sleep(0.01)  # another activation holds the run: let it finish
        raise RuntimeError(f"run {run_id!r} did not finish within {max_activations} activations")
