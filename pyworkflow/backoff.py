"""Retry policies for steps."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyworkflow.durations import Duration, parse_duration, wake_time

FIXED_DELAY = timedelta(seconds=60)
_MAX_EXPONENT = 62  # 2**62 s is far beyond any max_delay: the cap applies long before

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is retried and how long it waits between attempts.

    ``delay`` is ``"fixed"`` (60 s between attempts), ``"exponential"`` (1 s, 2 s, 4 s, …
    capped at ``max_delay``) or a duration such as ``"5s"``. ``jitter`` is the share of
    each delay that is random: ``0.5`` (what ``True`` means) spreads a delay over
    [delay/2, delay], so a fleet of failing steps does not retry in lockstep; the chosen
    delay is recorded, so replay never re-rolls it.
    """

    max_retries: int = 3
    delay: str | timedelta = "exponential"
    max_delay: timedelta = timedelta(hours=1)
    jitter: float = 0.0

    @classmethod
    def build(
        cls,
        max_retries: int,
        retry_delay: Duration,
        max_delay: Duration,
        jitter: bool | float,
        *,
        where: str,
    ) -> RetryPolicy:
        """The policy of a ``@step``; ``where`` (e.g. ``"@step mod.fn"``) starts every
        error message, which also names the option and the value."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError(f"{where}: max_retries must be an int >= 0, got {max_retries!r}")
        if max_retries < 0:
            raise ValueError(f"{where}: max_retries must be an int >= 0, got {max_retries!r}")
        delay: str | timedelta
        if isinstance(retry_delay, str) and retry_delay in ("fixed", "exponential"):
            delay = retry_delay
        else:
            delay = parse_duration(retry_delay, what=f"{where}: retry_delay (or 'fixed'/'exponential')")
        limit = parse_duration(max_delay, what=f"{where}: max_retry_delay")
        return cls(max_retries, delay, limit, jitter_share(jitter, where=where))

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def delay_after(self, attempt: int) -> timedelta:
        """The wait before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
        if self.delay == "fixed":
            base = FIXED_DELAY
        elif self.delay == "exponential":
            exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
            base = timedelta(seconds=min(2.0**exponent, self.max_delay.total_seconds()))
        else:
            assert isinstance(self.delay, timedelta)
            base = self.delay
        if self.jitter and base > timedelta(0):
            base = base * random.uniform(1.0 - self.jitter, 1.0)  # noqa: S311 - spreading load, not security
        return base


def jitter_share(jitter: object, *, where: str) -> float:
    """``retry_jitter`` as the random share of each delay: ``False`` 0, ``True`` 0.5, or
    a number from 0 to 1."""
    if isinstance(jitter, bool):
        return 0.5 if jitter else 0.0
    if not isinstance(jitter, int | float):
        raise TypeError(
            f"{where}: retry_jitter must be True, False or a number from 0 to 1 (the random share of each "
            f"delay), got {jitter!r} ({type(jitter).__name__})"
        )
    if not math.isfinite(jitter) or not 0.0 <= jitter <= 1.0:
        raise ValueError(f"{where}: retry_jitter must be True, False or a number from 0 to 1, got {jitter!r}")
    return float(jitter)


def retry_at(policy: RetryPolicy, attempt: int, retry_after: object, now: datetime) -> datetime:
    """When the next attempt may start: ``retry_after`` from a RetryableError wins.

    Never raises: this runs while a failed attempt is being recorded, and a step whose
    failure cannot be recorded would run again on every replay. An unusable
    ``retry_after`` (one that escaped the check when the error was built) is logged and
    the policy's own delay is used instead.
    """
    if retry_after is None:
        return _policy_wake(policy, attempt, now)
    try:
        return wake_time(retry_after, now, what="RetryableError.retry_after")  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError) as exc:
        _log.warning("%s; retrying after the step's own retry delay instead", exc)
        return _policy_wake(policy, attempt, now)


def _policy_wake(policy: RetryPolicy, attempt: int, now: datetime) -> datetime:
    try:
        return now + policy.delay_after(attempt)
    except OverflowError:  # a delay near MAX_DURATION from a moment near the end of time
        return datetime.max.replace(tzinfo=now.tzinfo)
