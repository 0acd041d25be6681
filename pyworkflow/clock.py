"""Where the engine reads the time.

The engine never calls ``datetime.now`` directly: it asks a clock, so tests can run a
three-day sleep in milliseconds with a :class:`VirtualClock` while every recorded time
stays what it would have been.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

_UTC = timezone.utc
_now = datetime.now  # the engine asks for the time several times per step


def utcnow() -> datetime:
    return _now(_UTC)


class Clock:
    """Wall-clock time; ``wait_until`` really waits."""

    def now(self) -> datetime:
        return _now(_UTC)

    async def wait_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock(Clock):
    """A clock that moves only when told to; ``wait_until`` jumps instead of waiting.

    It starts at the real current time (or ``start``) and advances in real time between
    jumps, so ordering against wall-clock events (lease expiry) stays sane.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._offset = timedelta(0)
        if start is not None:
            if start.tzinfo is None:
                start = start.replace(tzinfo=timezone.utc)
            self._offset = start - utcnow()

    def now(self) -> datetime:
        return utcnow() + self._offset

    def advance(self, delta: timedelta | float) -> None:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta > timedelta(0):
            self._offset += delta

    async def wait_until(self, when: datetime) -> None:
        self.advance(when - self.now())


SYSTEM_CLOCK = Clock()
