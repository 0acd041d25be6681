"""Durations and wake times: ``"30s"``, ``"1h30m"``, seconds, ``timedelta``, ``datetime``."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")

MAX_DURATION = timedelta(days=365_000)
"""The longest duration accepted (about 1000 years): longer ones are surely a mistake,
and a wake time must still be a ``datetime`` (which ends in the year 9999)."""

Duration = int | float | str | timedelta


def _too_long(what: str, value: object) -> ValueError:
    return ValueError(
        f"invalid {what} {value!r}: longer than the maximum of {MAX_DURATION.days} days (about 1000 years)"
    )


def parse_duration(value: Duration, *, what: str = "duration") -> timedelta:
    """Turn ``"30s"``, ``"10m"``, ``"2h"``, ``"3d"``, ``"1w"``, ``"1h30m"``, ``"500ms"``,
    int/float seconds or a ``timedelta`` into a non-negative ``timedelta``.

    Raises ``ValueError`` naming the value when it is none of these, negative, not
    finite, or longer than :data:`MAX_DURATION`.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid {what} {value!r}: expected seconds, a string like '30s' or '1h30m', or a timedelta")
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"invalid {what} {value!r}: not a finite number of seconds")
        if value < 0:
            raise ValueError(f"invalid {what} {value!r}: must not be negative")
        if value > MAX_DURATION.total_seconds():
            raise _too_long(what, value)
        delta = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not _WHOLE.fullmatch(text):
            raise ValueError(
                f"invalid {what} {value!r}: expected a number with a unit (ms, s, m, h, d, w), "
                "e.g. '30s', '2h', '1h30m'"
            )
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
        if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
            raise _too_long(what, value)
        delta = timedelta(seconds=seconds)
    else:
        raise ValueError(
            f"invalid {what} {value!r} ({type(value).__name__}): expected seconds, a string like '30s', a timedelta"
        )
    if delta < timedelta(0):
        raise ValueError(f"invalid {what} {value!r}: must not be negative")
    if delta > MAX_DURATION:
        raise _too_long(what, value)
    return delta


def wake_time(value: Duration | datetime, now: datetime, *, what: str = "sleep") -> datetime:
    """The UTC moment a wait for ``value`` starting at ``now`` ends.

    A ``datetime`` is an absolute wake time (naive means UTC; a past one means no wait).
    Raises ``ValueError`` naming the value for anything :func:`parse_duration` refuses.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    delta = parse_duration(value, what=what)
    try:
        return now + delta
    except OverflowError:
        raise _too_long(what, value) from None
