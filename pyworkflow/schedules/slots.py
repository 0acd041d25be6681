"""When a schedule's slots fall: cron expressions in a time zone, and fixed intervals.

Cron slots are found on the local wall clock (croniter over naive local times) and then
placed on the UTC timeline, which settles daylight saving time the way people expect:

* a local time that does not exist (the hour skipped in spring) fires at the next valid
  minute, once: ``30 2 * * *`` in Europe/Berlin fires at 03:00 CEST on 28 March 2027;
* a local time that happens twice (the hour repeated in autumn) fires once, on its first
  occurrence.

Interval slots (``every``) are multiples of the interval since the Unix epoch, in UTC:
deterministic whoever computes them, and untouched by time zones.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]  # ships no type hints

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)


def cron_is_valid(expression: str) -> bool:
    """Five fields, each one croniter accepts (seconds fields are refused)."""
    return len(expression.split()) == 5 and bool(croniter.is_valid(expression))


def _on_timeline(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive local time: its first occurrence when it is ambiguous,
    the next minute that exists when it falls in a gap."""
    for _ in range(24 * 60):  # gaps are an hour or two; a day bounds any real zone
        candidate = wall.replace(tzinfo=zone, fold=0)
        instant = candidate.astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            return instant
        wall = wall.replace(second=0, microsecond=0) + _MINUTE
    raise ValueError(f"no valid local time near {wall} in {zone.key}")


def next_cron_slot(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first slot of ``expression`` in ``zone`` strictly after the instant ``after``."""
    wall = after.astimezone(zone).replace(tzinfo=None)
    walls = croniter(expression, wall)
    while True:
        slot = _on_timeline(walls.get_next(datetime), zone)
        # A gap maps several wall times to one instant, and the second pass through an
        # ambiguous hour maps to the first: only strictly later instants are new slots.
        if slot > after:
            return slot


def next_interval_slot(every: timedelta, after: datetime) -> datetime:
    """The first multiple of ``every`` since the epoch strictly after ``after``."""
    step_us = every // timedelta(microseconds=1)
    since_us = (after - _EPOCH) // timedelta(microseconds=1)
    return _EPOCH + timedelta(microseconds=(since_us // step_us + 1) * step_us)


def jitter_offset(schedule_id: str, slot: datetime, jitter: timedelta | None) -> timedelta:
    """A delay in ``[0, jitter)`` that is the same for a slot whoever computes it, so
    two beats agree on when a jittered slot is due."""
    if not jitter:
        return timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}\x00{slot.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return timedelta(microseconds=int(fraction * (jitter // timedelta(microseconds=1))))


def slot_text(slot: datetime) -> str:
    """A slot as it appears in idempotency keys: UTC, ISO 8601, ``Z``."""
    text = slot.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"{text}Z"
