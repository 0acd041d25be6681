"""The schedule half of the tick: start the runs of due slots, exactly once each.

Every slot's run is started with the idempotency key ``schedule:<id>:<slot in UTC>``, so
two beats, a retried tick or a crash between starting a run and saving the schedule start
it once; the schedule's state is then written with compare-and-set, and a tick that lost
that race drops its copy (what it did twice was idempotent).

A slot is *on time* when the tick reaches it within :data:`GRACE` of its due time; on-time
slots always fire. Later ones follow the catch-up policy: ``latest`` fires the most recent
of them when no on-time slot fired, ``all`` fires those within its window, ``none`` none;
the rest are counted missed. Each slot to fire then meets the overlap policy, decided on
the previous run's status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from pyworkflow import metrics, observability
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.engine import create_run
from pyworkflow.errors import RunNotFoundError
from pyworkflow.registry import get_workflow
from pyworkflow.schedules.slots import slot_text
from pyworkflow.schedules.spec import State
from pyworkflow.storage.base import StorageBackend

#: A slot the tick reaches within this of its due time is on time (not a catch-up).
GRACE = timedelta(seconds=60)
#: How soon a schedule with a buffered slot is looked at again.
RECHECK = timedelta(seconds=1)
#: Slots examined per schedule and tick; a schedule further behind skips the rest as missed.
SCAN_LIMIT = 10_000
#: Schedules fired side by side within one tick.
CONCURRENCY = 16

#: What starts a run once it is recorded: ``(run_id, workflow_name)``; e.g. sends its first
#: activation (Celery) or runs it (the in-process runtime).
Launch = Callable[[str, str], Awaitable[Any]]


def slot_key(schedule_id: str, slot: datetime) -> str:
    """The idempotency key of a slot's run."""
    return f"schedule:{schedule_id}:{slot_text(slot)}"


class Firing:
    """How one runtime starts scheduled runs: its storage, clock, launch and start guard
    (seconds after which the tick starts a recorded run whose launch was lost)."""

    def __init__(
        self,
        storage: StorageBackend,
        *,
        launch: Launch | None = None,
        start_guard: float | None = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.storage = storage
        self.launch = launch
        self.start_guard = start_guard
        self.clock = clock

    async def start(self, state: State, slot: datetime, key: str | None = None) -> tuple[str, bool]:
        """Start the run of ``slot`` (once: by its key); its id and whether it is new."""
        definition = get_workflow(state.workflow)
        args, kwargs = definition.signature.decode_args(state.input)
        run, created = await create_run(
            self.storage,
            definition,
            args,
            kwargs,
            idempotency_key=key or slot_key(state.schedule_id, slot),
            clock=self.clock,
            start_guard=self.start_guard,
            schedule={"id": state.schedule_id, "scheduled_at": slot.isoformat()},
        )
        if created and self.launch is not None:
            await self.launch(run.run_id, definition.name)
        return run.run_id, created

    async def running(self, run_id: str | None) -> bool:
        if run_id is None:
            return False
        from pyworkflow.continuation import latest_run

        run = await latest_run(self.storage, run_id)  # a run that continued as new goes on in its chain
        return run is not None and not run.status.is_terminal

    async def fire_due(self, *, limit: int = 500) -> int:
        """Fire every due schedule, ``limit`` at a time, until none is left due (each
        schedule once per call, so one that keeps failing cannot hold the tick); the runs
        started."""
        now = self.clock.now()
        gate = asyncio.Semaphore(CONCURRENCY)
        seen: set[str] = set()
        started = 0

        async def one(stored: Any) -> int:
            async with gate:
                try:
                    return await self.fire(stored, now)
                except Exception as exc:  # noqa: BLE001 - one schedule must not stop the others
                    observability.engine_log(
                        "schedule_fire_failed", level="error", schedule_id=stored.schedule_id, error=repr(exc)
                    )
                    return 0

        while True:
            # Those fired already and still due (their fire failed) come back too: ask for
            # as many more.
            wanted = limit + len(seen)
            batch = await self.storage.due_schedules(now, limit=wanted)
            unseen = [s for s in batch if s.schedule_id not in seen]
            fresh = unseen[:limit]
            seen.update(s.schedule_id for s in fresh)
            started += sum(await asyncio.gather(*(one(s) for s in fresh)))
            if not fresh or (len(batch) < wanted and len(unseen) == len(fresh)):
                break  # nothing else is due
        if started:
            observability.engine_log("schedules_fired", runs=started, schedules=len(seen))
        return started

    async def fire(self, stored: Any, now: datetime) -> int:
        """Fire one schedule's due slots; the runs started (0 when another tick won)."""
        state = State.from_body(stored.body)
        if state.paused:
            return 0
        counted = metrics.slot_counts(state) if metrics.ACTIVE is not None else None
        started = 0
        previous_runs = await self.running(state.last_run_id)
        if state.buffered_slot is not None and not previous_runs:
            started += await self._start(state, state.buffered_slot)
            state.buffered_slot = None
            previous_runs = True

        timing, slot = state.timing, state.next_slot
        slots: list[datetime] = []
        while timing.due(state.schedule_id, slot) <= now and len(slots) < SCAN_LIMIT:
            slots.append(slot)
            slot = timing.next_slot(slot)
        if len(slots) == SCAN_LIMIT:  # far behind: go straight to the first slot ahead
            while timing.due(state.schedule_id, slot) <= now:
                slot = timing.next_slot(max(slot, now - (timing.jitter or timedelta(0))))
        state.next_slot = slot

        # The overlap policy weighs each slot against the run that ran before this tick:
        # slots this tick fires together (a catch-up) do not hold each other back.
        cancelled = False
        for fire_slot, fires in self._caught_up(state, slots, now):
            if not fires:
                state.note(fire_slot, "missed")
                continue
            policy = state.timing.overlap
            if previous_runs and policy == "skip":
                state.note(fire_slot, "skipped", state.last_run_id)
                continue
            if previous_runs and policy == "buffer_one":
                if state.buffered_slot is None:
                    state.buffered_slot = fire_slot
                    state.note(fire_slot, "buffered", state.last_run_id)
                else:
                    state.note(fire_slot, "skipped", state.last_run_id)
                continue
            if previous_runs and policy == "cancel_previous" and not cancelled:
                await self._cancel_previous(state, fire_slot)
                cancelled = True
            started += await self._start(state, fire_slot)

        state.updated_at = now
        saved = await self.storage.save_schedule(
            state.schedule_id, state.body(), state.due_at(now + RECHECK), version=stored.version
        )
        if saved is None:
            return 0  # another tick saved first: what it decided is what counts
        if counted is not None and metrics.ACTIVE is not None:
            metrics.ACTIVE.slots_noted(state, counted)
        return started

    @staticmethod
    def _caught_up(state: State, slots: list[datetime], now: datetime) -> list[tuple[datetime, bool]]:
        """Each due slot with whether it fires (``False``: missed), by the catch-up policy."""
        timing = state.timing
        on_time = [now - timing.due(state.schedule_id, s) <= GRACE for s in slots]
        fires = list(on_time)
        late = [i for i, ok in enumerate(on_time) if not ok]
        if late and timing.catchup == "latest" and not any(on_time):
            fires[late[-1]] = True
        elif late and timing.catchup == "all" and timing.catchup_window is not None:
            for i in late:
                fires[i] = now - slots[i] <= timing.catchup_window
        return [(s, ok) for s, ok in zip(slots, fires, strict=True)]

    async def _start(self, state: State, slot: datetime) -> int:
        try:
            run_id, created = await self.start(state, slot)
        except self.storage.unavailable_errors:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the schedule, which moves on
            state.note(slot, "failed", error=f"{type(exc).__name__}: {exc}")
            observability.engine_log(
                "schedule_slot_failed",
                level="error",
                schedule_id=state.schedule_id,
                slot=slot_text(slot),
                error=repr(exc),
            )
            return 0
        state.note(slot, "started", run_id)
        state.last_run_id, state.last_slot = run_id, slot
        return 1 if created else 0

    async def _cancel_previous(self, state: State, slot: datetime) -> None:
        from pyworkflow.control import cancel_async

        previous = state.last_run_id
        if previous is not None:
            reason = f"schedule {state.schedule_id!r}: slot {slot_text(slot)} replaces it (overlap=cancel_previous)"
            with contextlib.suppress(RunNotFoundError):  # pruned meanwhile: nothing to cancel
                await cancel_async(previous, reason=reason, storage=self.storage)
