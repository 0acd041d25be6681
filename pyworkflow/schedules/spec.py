"""What a schedule is: its definition (checked where it enters), its state, and the JSON
body storage keeps for it.

:class:`Schedule` is the declarative form (``@workflow(schedule=Schedule(...))``);
:class:`ScheduleInfo` is what the public functions return: definition, state and
counters (fired, skipped, missed) with the last slots' outcomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict

from pyworkflow.durations import Duration, parse_duration
from pyworkflow.schedules.slots import UTC, cron_is_valid, jitter_offset, next_cron_slot, next_interval_slot

OVERLAP_POLICIES = ("skip", "allow", "buffer_one", "cancel_previous")
#: ``catchup="all"`` catches up at most this far back (give a duration for another window).
ALL_WINDOW = timedelta(days=1)
#: The longest schedule id: it goes into every slot's idempotency key.
MAX_ID_LENGTH = 200
#: How many of the last slots' outcomes a schedule keeps.
RECENT = 20

Action = Literal["started", "skipped", "missed", "buffered", "failed", "triggered", "backfilled"]


def check_schedule_id(schedule_id: object, where: str) -> str:
    if not isinstance(schedule_id, str) or not schedule_id.strip():
        raise ValueError(f"{where}: schedule_id must be a non-empty string, got {schedule_id!r}")
    if len(schedule_id) > MAX_ID_LENGTH:
        raise ValueError(f"{where}: schedule_id is {len(schedule_id)} characters long; at most {MAX_ID_LENGTH}")
    if schedule_id != schedule_id.strip() or any(ord(c) < 32 or ord(c) == 127 for c in schedule_id):
        raise ValueError(
            f"{where}: schedule_id must have no surrounding spaces or control characters, got {schedule_id!r}"
        )
    try:
        schedule_id.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{where}: schedule_id holds a lone surrogate: {schedule_id!r}") from None
    return schedule_id


@dataclass(frozen=True)
class Timing:
    """When slots fall and what happens to late and overlapping ones (checked)."""

    cron: str | None
    every: timedelta | None
    timezone: str
    overlap: str
    catchup: str
    catchup_window: timedelta | None  # None: "latest" or "none"
    jitter: timedelta | None

    @classmethod
    def check(
        cls,
        where: str,
        *,
        cron: str | None,
        every: Duration | None,
        timezone: str,
        overlap: str,
        catchup: str | Duration,
        jitter: Duration | None,
    ) -> Timing:
        if (cron is None) == (every is None):
            raise ValueError(f"{where}: give exactly one of cron= (5 fields) or every= (a duration)")
        interval = None
        if cron is not None:
            if not isinstance(cron, str) or not cron_is_valid(cron):
                raise ValueError(
                    f"{where}: cron={cron!r} is not a 5-field cron expression "
                    '(minute hour day-of-month month day-of-week, e.g. "0 9 * * MON")'
                )
            cron = " ".join(cron.split())
        else:
            assert every is not None
            interval = parse_duration(every, what=f"{where}: every")
            if interval < timedelta(seconds=1):
                raise ValueError(f"{where}: every={every!r} is shorter than the smallest interval, 1 second")
        if not isinstance(timezone, str):
            raise TypeError(f"{where}: timezone must be an IANA zone name such as 'Europe/Berlin', got {timezone!r}")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{where}: timezone={timezone!r} is not an IANA time zone (e.g. 'UTC', 'Europe/Berlin')"
            ) from None
        if overlap not in OVERLAP_POLICIES:
            raise ValueError(f"{where}: overlap={overlap!r} is not one of {', '.join(OVERLAP_POLICIES)}")
        window: timedelta | None = None
        if catchup == "all":
            window = ALL_WINDOW
        elif catchup not in ("latest", "none"):
            try:
                window = parse_duration(catchup, what=f"{where}: catchup")
            except (TypeError, ValueError):
                raise ValueError(
                    f'{where}: catchup={catchup!r} must be "latest", "none", "all" or a window such as "6h"'
                ) from None
            if window <= timedelta(0):
                raise ValueError(f"{where}: catchup={catchup!r}: a catch-up window must be longer than zero")
            catchup = "all"
        spread = None
        if jitter is not None:
            spread = parse_duration(jitter, what=f"{where}: jitter")
            if spread < timedelta(0):
                raise ValueError(f"{where}: jitter={jitter!r} must not be negative")
            spread = spread or None
        return cls(cron, interval, timezone, overlap, str(catchup), window, spread)

    def next_slot(self, after: datetime) -> datetime:
        if self.cron is not None:
            return next_cron_slot(self.cron, ZoneInfo(self.timezone), after)
        assert self.every is not None
        return next_interval_slot(self.every, after)

    def due(self, schedule_id: str, slot: datetime) -> datetime:
        """When the tick starts the slot: its time, plus its jitter."""
        return slot + jitter_offset(schedule_id, slot, self.jitter)

    def as_json(self) -> dict[str, Any]:
        return {
            "cron": self.cron,
            "every": None if self.every is None else self.every.total_seconds(),
            "timezone": self.timezone,
            "overlap": self.overlap,
            "catchup": self.catchup,
            "catchup_window": None if self.catchup_window is None else self.catchup_window.total_seconds(),
            "jitter": None if self.jitter is None else self.jitter.total_seconds(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timing:
        def seconds(value: float | None) -> timedelta | None:
            return None if value is None else timedelta(seconds=value)

        return cls(
            data["cron"],
            seconds(data["every"]),
            data["timezone"],
            data["overlap"],
            data["catchup"],
            seconds(data["catchup_window"]),
            seconds(data["jitter"]),
        )


@dataclass(frozen=True)
class Schedule:
    """A schedule declared with its workflow: ``@workflow(schedule=Schedule(cron="0 9 * * MON",
    timezone="Europe/Berlin"))``; a plain cron string means ``Schedule(cron=...)``.

    It is created (or updated) when a Celery worker or beat starts, under ``id`` (default:
    the workflow's name). The arguments are those of :func:`pyworkflow.create_schedule`.
    """

    cron: str | None = None
    every: Duration | None = None
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    overlap: str = "skip"
    catchup: str | Duration = "latest"
    jitter: Duration | None = None
    id: str | None = None

    def timing(self, where: str) -> Timing:
        return Timing.check(
            where,
            cron=self.cron,
            every=self.every,
            timezone=self.timezone,
            overlap=self.overlap,
            catchup=self.catchup,
            jitter=self.jitter,
        )


class SlotOutcome(BaseModel):
    """What became of one slot: ``started`` (with its run), ``skipped`` (the previous run
    still ran), ``missed`` (late beyond the catch-up policy), ``buffered``, ``failed`` (the
    run could not be started: ``error`` says why), ``triggered`` or ``backfilled``."""

    model_config = ConfigDict(frozen=True)

    slot: datetime
    action: Action
    run_id: str | None = None
    error: str | None = None


class ScheduleInfo(BaseModel):
    """A schedule as the public functions return it."""

    model_config = ConfigDict(frozen=True)

    schedule_id: str
    workflow: str
    cron: str | None
    every: float | None  # seconds
    timezone: str
    overlap: str
    catchup: str
    catchup_window: float | None  # seconds
    jitter: float | None  # seconds
    input: dict[str, Any]
    paused: bool
    declared: bool
    next_slot: datetime | None
    next_run_at: datetime | None  # the next slot's time with its jitter; None while paused
    last_run_id: str | None
    last_slot: datetime | None
    buffered_slot: datetime | None
    fired: int
    skipped: int
    missed: int
    failed: int
    recent: list[SlotOutcome]
    created_at: datetime
    updated_at: datetime


@dataclass
class State:
    """A schedule's definition and state, as its storage body holds them."""

    schedule_id: str
    workflow: str
    timing: Timing
    input: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    next_slot: datetime
    paused: bool = False
    declared: bool = False
    last_run_id: str | None = None
    last_slot: datetime | None = None
    buffered_slot: datetime | None = None
    fired: int = 0
    skipped: int = 0
    missed: int = 0
    failed: int = 0
    recent: list[SlotOutcome] = field(default_factory=list)

    def due_at(self, recheck: datetime | None = None) -> datetime | None:
        """When the tick must look at it next: never while paused; the next slot's due
        time, or sooner while a buffered slot waits for the previous run to end."""
        if self.paused:
            return None
        due = self.timing.due(self.schedule_id, self.next_slot)
        if self.buffered_slot is not None and recheck is not None:
            return min(due, recheck)
        return due

    def note(self, slot: datetime, action: Action, run_id: str | None = None, error: str | None = None) -> None:
        self.recent = [*self.recent, SlotOutcome(slot=slot, action=action, run_id=run_id, error=error)][-RECENT:]
        counter = {"started": "fired", "triggered": "fired", "backfilled": "fired"}.get(action, action)
        if counter in ("fired", "skipped", "missed", "failed"):
            setattr(self, counter, getattr(self, counter) + 1)

    def body(self) -> str:
        def when(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return json.dumps(
            {
                "schedule_id": self.schedule_id,
                "workflow": self.workflow,
                "timing": self.timing.as_json(),
                "input": self.input,
                "created_at": when(self.created_at),
                "updated_at": when(self.updated_at),
                "next_slot": when(self.next_slot),
                "paused": self.paused,
                "declared": self.declared,
                "last_run_id": self.last_run_id,
                "last_slot": when(self.last_slot),
                "buffered_slot": when(self.buffered_slot),
                "fired": self.fired,
                "skipped": self.skipped,
                "missed": self.missed,
                "failed": self.failed,
                "recent": [o.model_dump(mode="json") for o in self.recent],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_body(cls, body: str) -> State:
        data = json.loads(body)

        def when(value: str | None) -> datetime | None:
            return None if value is None else datetime.fromisoformat(value).astimezone(UTC)

        next_slot = when(data["next_slot"])
        created, updated = when(data["created_at"]), when(data["updated_at"])
        assert next_slot is not None and created is not None and updated is not None
        return cls(
            schedule_id=data["schedule_id"],
            workflow=data["workflow"],
            timing=Timing.from_json(data["timing"]),
            input=data["input"],
            created_at=created,
            updated_at=updated,
            next_slot=next_slot,
            paused=data["paused"],
            declared=data["declared"],
            last_run_id=data["last_run_id"],
            last_slot=when(data["last_slot"]),
            buffered_slot=when(data["buffered_slot"]),
            fired=data["fired"],
            skipped=data["skipped"],
            missed=data["missed"],
            failed=data["failed"],
            recent=[SlotOutcome.model_validate(o) for o in data["recent"]],
        )

    def info(self) -> ScheduleInfo:
        timing = self.timing.as_json()
        return ScheduleInfo(
            schedule_id=self.schedule_id,
            workflow=self.workflow,
            **timing,
            input=self.input,
            paused=self.paused,
            declared=self.declared,
            next_slot=None if self.paused else self.next_slot,
            next_run_at=self.due_at(),
            last_run_id=self.last_run_id,
            last_slot=self.last_slot,
            buffered_slot=self.buffered_slot,
            fired=self.fired,
            skipped=self.skipped,
            missed=self.missed,
            failed=self.failed,
            recent=self.recent,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )
