"""Retry policies for steps."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyworkflow.durations import Duration, parse_duration

FIXED_DELAY = timedelta(seconds=60)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a step is retried and how long it waits between attempts.

    ``delay`` is ``"fixed"`` (60 s between attempts), ``"exponential"`` (1 s, 2 s, 4 s, …
    capped at ``max_delay``) or a duration such as ``"5s"``. ``jitter`` spreads each
    delay randomly over [delay/2, delay] so a fleet of failing steps does not retry in
    lockstep; the chosen delay is recorded, so replay never re-rolls it.
    """

    max_retries: int = 3
    delay: str | timedelta = "exponential"
    max_delay: timedelta = timedelta(hours=1)
    jitter: bool = False

    @classmethod
    def build(
        cls,
        max_retries: int,
        retry_delay: Duration,
        max_delay: Duration,
        jitter: bool,
        *,
        where: str,
    ) -> RetryPolicy:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"{where}: max_retries must be an int >= 0, got {max_retries!r}")
        delay: str | timedelta
        if retry_delay in ("fixed", "exponential"):
            delay = str(retry_delay)
        else:
            delay = parse_duration(retry_delay, what=f"{where}: retry_delay (or 'fixed'/'exponential')")
        return cls(max_retries, delay, parse_duration(max_delay, what=f"{where}: max_retry_delay"), bool(jitter))

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def delay_after(self, attempt: int) -> timedelta:
        """The wait before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
        if self.delay == "fixed":
            base = FIXED_DELAY
        elif self.delay == "exponential":
            base = timedelta(seconds=min(2.0 ** (attempt - 1), self.max_delay.total_seconds()))
        else:
            assert isinstance(self.delay, timedelta)
            base = self.delay
        if self.jitter and base > timedelta(0):
            base = base * random.uniform(0.5, 1.0)  # noqa: S311 - spreading load, not security
        return base


def retry_at(policy: RetryPolicy, attempt: int, retry_after: object, now: datetime) -> datetime:
    """When the next attempt may start: ``retry_after`` from a RetryableError wins."""
    from pyworkflow.durations import wake_time

    if retry_after is None:
        return now + policy.delay_after(attempt)
    return wake_time(retry_after, now, what="RetryableError.retry_after")  # type: ignore[arg-type]
