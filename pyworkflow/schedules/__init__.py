"""Cron and interval schedules, fired by the tick (Celery Beat's, or ``LocalRuntime.tick``).

    create_schedule("nightly-report", report, cron="0 2 * * *", timezone="Europe/Berlin")
    create_schedule("heartbeat", ping, every="30s", overlap="allow")

Each slot starts one run, exactly once, with the idempotency key
``schedule:<id>:<slot time in UTC>``, however many beats tick and whatever crashes; the
run reads its slot with ``workflow_info().scheduled_at``. Every function has an ``_async``
twin and takes ``storage=`` (default: the configured storage). Runs that a function
starts itself (:func:`trigger_schedule`, :func:`backfill_schedule`) are sent to the
Celery workers when no ``storage`` is given; with a ``storage`` they are recorded due at
once, for the tick that serves that storage to start.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pyworkflow import config
from pyworkflow.clock import SYSTEM_CLOCK, Clock
from pyworkflow.durations import Duration
from pyworkflow.errors import ScheduleNotFoundError
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.registry import definition_of, workflow_definitions
from pyworkflow.schedules.firing import Firing, slot_key
from pyworkflow.schedules.slots import UTC
from pyworkflow.schedules.spec import Schedule, ScheduleInfo, SlotOutcome, State, Timing, check_schedule_id
from pyworkflow.storage.base import StorageBackend, StoredSchedule

#: Most slots one backfill may start.
MAX_BACKFILL = 10_000
_CAS_ATTEMPTS = 50


async def create_schedule_async(
    schedule_id: str,
    wf: Any,
    *,
    cron: str | None = None,
    every: Duration | None = None,
    timezone: str = "UTC",
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    overlap: str = "skip",
    catchup: str | Duration = "latest",
    jitter: Duration | None = None,
    storage: StorageBackend | None = None,
    clock: Clock | None = None,
    declared: bool = False,
) -> ScheduleInfo:
    """Create the schedule ``schedule_id`` or update it in place (an upsert).

    Exactly one of ``cron`` (5 fields, read in ``timezone``) or ``every`` (a duration, at
    least 1 s; slots are multiples of it since the epoch, in UTC). ``overlap`` decides what
    a slot does while the previous run still runs: ``"skip"`` it, ``"allow"`` both,
    ``"buffer_one"`` (start it when the previous run ends; one at most) or
    ``"cancel_previous"``. ``catchup`` decides what slots missed while no tick ran do:
    ``"latest"`` (one run for the most recent), ``"all"`` (each, within a day; or give the
    window: ``"6h"``) or ``"none"``. ``jitter`` delays each slot by a stable amount below it.

    Updating keeps the counters and a pause; a changed timing starts from the next slot
    after now. Bad arguments raise ``ValueError``/``TypeError`` naming them; the
    workflow's arguments are checked and encoded here, as ``start()`` does.
    """
    where = f"create_schedule({schedule_id!r})"
    check_schedule_id(schedule_id, "create_schedule")
    definition = definition_of(wf)
    timing = Timing.check(
        where, cron=cron, every=every, timezone=timezone, overlap=overlap, catchup=catchup, jitter=jitter
    )
    if not isinstance(args, tuple | list):
        raise TypeError(f"{where}: args must be a tuple or a list, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{where}: kwargs must be a dict or None, got {type(kwargs).__name__}")
    call_args, call_kwargs = tuple(args), dict(kwargs or {})
    definition.signature.check_call(call_args, call_kwargs)
    payload = definition.signature.encode_args_for_call(call_args, call_kwargs)[0]
    storage = storage if storage is not None else config.get_storage()
    now = (clock or SYSTEM_CLOCK).now()

    for _ in range(_CAS_ATTEMPTS):
        stored = await storage.get_schedule(schedule_id)
        if stored is None:
            state = State(
                schedule_id=schedule_id,
                workflow=definition.name,
                timing=timing,
                input=payload,
                created_at=now,
                updated_at=now,
                next_slot=timing.next_slot(now),
                declared=declared,
            )
        else:
            state = State.from_body(stored.body)
            if (state.workflow, state.timing, state.input, state.declared) == (
                definition.name,
                timing,
                payload,
                declared,
            ):
                return state.info()  # unchanged: nothing to write
            if state.timing != timing:
                state.next_slot, state.buffered_slot = timing.next_slot(now), None
            state.workflow, state.timing, state.input, state.declared = definition.name, timing, payload, declared
            state.updated_at = now
        if await _save(storage, state, stored):
            return state.info()
    raise RuntimeError(f"{where}: the schedule kept changing under this write; try again")


def create_schedule(schedule_id: str, wf: Any, **options: Any) -> ScheduleInfo:
    """Synchronous :func:`create_schedule_async`."""
    return PROCESS_LOOP.run(create_schedule_async(schedule_id, wf, **options))


async def _save(storage: StorageBackend, state: State, stored: StoredSchedule | None) -> bool:
    version = 0 if stored is None else stored.version
    return await storage.save_schedule(state.schedule_id, state.body(), state.due_at(), version=version) is not None


async def _load(storage: StorageBackend, schedule_id: str, where: str) -> tuple[State, StoredSchedule]:
    check_schedule_id(schedule_id, where)
    stored = await storage.get_schedule(schedule_id)
    if stored is None:
        raise ScheduleNotFoundError(schedule_id)
    return State.from_body(stored.body), stored


async def _change(storage: StorageBackend | None, schedule_id: str, where: str, change: Any) -> ScheduleInfo:
    """Apply ``change(state)`` with compare-and-set, again on a conflict; a change that
    returns ``False`` (nothing to do) writes nothing."""
    storage = storage if storage is not None else config.get_storage()
    for _ in range(_CAS_ATTEMPTS):
        state, stored = await _load(storage, schedule_id, where)
        if change(state) is False or await _save(storage, state, stored):
            return state.info()
    raise RuntimeError(f"{where}({schedule_id!r}): the schedule kept changing under this write; try again")


async def get_schedule_async(schedule_id: str, *, storage: StorageBackend | None = None) -> ScheduleInfo:
    """The schedule's definition, state and counters; :class:`ScheduleNotFoundError` if none."""
    storage = storage if storage is not None else config.get_storage()
    return (await _load(storage, schedule_id, "get_schedule"))[0].info()


def get_schedule(schedule_id: str, *, storage: StorageBackend | None = None) -> ScheduleInfo:
    return PROCESS_LOOP.run(get_schedule_async(schedule_id, storage=storage))


async def list_schedules_async(*, storage: StorageBackend | None = None) -> list[ScheduleInfo]:
    """Every schedule, in id order."""
    storage = storage if storage is not None else config.get_storage()
    found: list[ScheduleInfo] = []
    after: str | None = None
    while True:
        page = await storage.list_schedules(after=after, limit=500)
        found.extend(State.from_body(s.body).info() for s in page)
        if len(page) < 500:
            return found
        after = page[-1].schedule_id


def list_schedules(*, storage: StorageBackend | None = None) -> list[ScheduleInfo]:
    return PROCESS_LOOP.run(list_schedules_async(storage=storage))


async def pause_schedule_async(
    schedule_id: str, *, storage: StorageBackend | None = None, clock: Clock | None = None
) -> ScheduleInfo:
    """Stop starting runs; slots that pass while paused are never caught up. Idempotent."""
    now = (clock or SYSTEM_CLOCK).now()

    def pause(state: State) -> bool:
        if state.paused:
            return False
        state.paused, state.updated_at = True, now
        return True

    return await _change(storage, schedule_id, "pause_schedule", pause)


def pause_schedule(schedule_id: str, *, storage: StorageBackend | None = None) -> ScheduleInfo:
    return PROCESS_LOOP.run(pause_schedule_async(schedule_id, storage=storage))


async def resume_schedule_async(
    schedule_id: str, *, storage: StorageBackend | None = None, clock: Clock | None = None
) -> ScheduleInfo:
    """Start runs again from the next slot after now. Idempotent."""
    now = (clock or SYSTEM_CLOCK).now()

    def resume(state: State) -> bool:
        if not state.paused:
            return False
        state.paused, state.updated_at = False, now
        state.next_slot = state.timing.next_slot(now)
        return True

    return await _change(storage, schedule_id, "resume_schedule", resume)


def resume_schedule(schedule_id: str, *, storage: StorageBackend | None = None) -> ScheduleInfo:
    return PROCESS_LOOP.run(resume_schedule_async(schedule_id, storage=storage))


async def delete_schedule_async(schedule_id: str, *, storage: StorageBackend | None = None) -> bool:
    """Delete the schedule (the runs it started stay); :class:`ScheduleNotFoundError` if none."""
    check_schedule_id(schedule_id, "delete_schedule")
    storage = storage if storage is not None else config.get_storage()
    if not await storage.delete_schedule(schedule_id):
        raise ScheduleNotFoundError(schedule_id)
    return True


def delete_schedule(schedule_id: str, *, storage: StorageBackend | None = None) -> bool:
    return PROCESS_LOOP.run(delete_schedule_async(schedule_id, storage=storage))


def _firing(storage: StorageBackend | None, clock: Clock | None) -> Firing:
    """Runs started from here: sent to the Celery workers (no storage given), or recorded
    due at once for the tick of the given storage."""
    clock = clock or SYSTEM_CLOCK
    if storage is not None:
        return Firing(storage, start_guard=0.0, clock=clock)
    from pyworkflow.celery.factory import installed_app

    runtime = installed_app().pyworkflow

    async def send(run_id: str, workflow: str) -> None:
        runtime.send_activation(run_id, new=True, workflow=workflow)

    return Firing(config.get_storage(), launch=send, start_guard=runtime.settings.start_guard, clock=clock)


async def trigger_schedule_async(
    schedule_id: str, *, storage: StorageBackend | None = None, clock: Clock | None = None
) -> str:
    """Start one run of the schedule now (whatever its overlap policy, even while
    paused); return its run id. The run's ``scheduled_at`` is now."""
    firing = _firing(storage, clock)
    now = firing.clock.now()
    state, _ = await _load(firing.storage, schedule_id, "trigger_schedule")
    run_id, _created = await firing.start(state, now)

    def note(state: State) -> None:
        state.note(now, "triggered", run_id)
        state.last_run_id, state.last_slot = run_id, now

    await _change(firing.storage, schedule_id, "trigger_schedule", note)
    return run_id


def trigger_schedule(schedule_id: str, *, storage: StorageBackend | None = None) -> str:
    return PROCESS_LOOP.run(trigger_schedule_async(schedule_id, storage=storage))


async def backfill_schedule_async(
    schedule_id: str,
    start: datetime,
    end: datetime,
    *,
    storage: StorageBackend | None = None,
    clock: Clock | None = None,
) -> list[str]:
    """Start the runs of every slot from ``start`` (included) to ``end`` (excluded), in
    order, whatever the overlap policy; return their run ids. A slot whose run exists
    already (fired on time, or backfilled before) is not started again: a backfill can be
    repeated safely. At most :data:`MAX_BACKFILL` slots."""
    where = f"backfill_schedule({schedule_id!r})"
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime):
            raise TypeError(f"{where}: {name} must be a datetime, got {value!r}")
    start, end = _aware(start), _aware(end)
    if end <= start:
        raise ValueError(f"{where}: end ({end.isoformat()}) must be after start ({start.isoformat()})")
    firing = _firing(storage, clock)
    state, _ = await _load(firing.storage, schedule_id, "backfill_schedule")
    slots: list[datetime] = []
    slot = state.timing.next_slot(start - timedelta(microseconds=1))
    while slot < end:
        if len(slots) == MAX_BACKFILL:
            raise ValueError(f"{where}: more than {MAX_BACKFILL} slots between start and end; backfill in parts")
        slots.append(slot)
        slot = state.timing.next_slot(slot)
    started = [(s, *await firing.start(state, s)) for s in slots]

    def note(state: State) -> None:
        for s, run_id, created in started:
            if created:  # a slot whose run existed already was counted when it started
                state.note(s, "backfilled", run_id)

    if any(created for _, _, created in started):
        await _change(firing.storage, schedule_id, "backfill_schedule", note)
    return [run_id for _, run_id, _ in started]


def backfill_schedule(
    schedule_id: str, start: datetime, end: datetime, *, storage: StorageBackend | None = None
) -> list[str]:
    return PROCESS_LOOP.run(backfill_schedule_async(schedule_id, start, end, storage=storage))


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def declare_schedules(storage: StorageBackend | None = None, *, clock: Clock | None = None) -> list[str]:
    """Create or update the schedules declared with ``@workflow(schedule=...)`` in the
    registered workflows; the ids. A Celery worker and beat call this when they start
    (with no declared schedule, storage is not even opened)."""
    ids = []
    for definition in workflow_definitions():
        declared = definition.schedule
        if declared is None:
            continue
        storage = storage if storage is not None else config.get_storage()
        schedule_id = declared.id or definition.name
        await create_schedule_async(
            schedule_id,
            definition.name,
            cron=declared.cron,
            every=declared.every,
            timezone=declared.timezone,
            args=declared.args,
            kwargs=declared.kwargs,
            overlap=declared.overlap,
            catchup=declared.catchup,
            jitter=declared.jitter,
            storage=storage,
            clock=clock,
            declared=True,
        )
        ids.append(schedule_id)
    return ids


__all__ = [
    "Firing",
    "Schedule",
    "ScheduleInfo",
    "SlotOutcome",
    "backfill_schedule",
    "backfill_schedule_async",
    "create_schedule",
    "create_schedule_async",
    "declare_schedules",
    "delete_schedule",
    "delete_schedule_async",
    "get_schedule",
    "get_schedule_async",
    "list_schedules",
    "list_schedules_async",
    "pause_schedule",
    "pause_schedule_async",
    "resume_schedule",
    "resume_schedule_async",
    "slot_key",
    "trigger_schedule",
    "trigger_schedule_async",
]
