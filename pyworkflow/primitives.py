"""What workflow code is written with: ``@workflow``, ``@step`` and ``sleep``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import random as _random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pyworkflow.backoff import RetryPolicy
from pyworkflow.clock import utcnow
from pyworkflow.durations import Duration, parse_duration, wake_time
from pyworkflow.registry import StepDefinition, WorkflowDefinition, register_step, register_workflow
from pyworkflow.replay import _run, _step
from pyworkflow.serialization import Signature

if TYPE_CHECKING:
    from pyworkflow.schedules.spec import Schedule

F = TypeVar("F", bound=Callable[..., Any])


def _require_async(fn: Callable[..., Any], decorator: str) -> None:
    if not callable(fn):
        raise TypeError(f"{decorator} decorates an async function, got {fn!r}")
    if not inspect.iscoroutinefunction(fn):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"{decorator} needs an async function, but {name} is not one: define it with 'async def'")


def _where(decorator: str, fn: Callable[..., Any]) -> str:
    """``"@step mod.fn"``: how every option error starts."""
    return f"{decorator} {fn.__module__}.{fn.__qualname__}"


def name_option(value: object, option: str, where: str) -> str | None:
    """A ``name=``/``queue=`` option: ``None`` or a non-empty string without surrounding
    whitespace or control characters (it is stored, logged and used as a key)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{where}: {option} must be a non-empty str or None, got {value!r} ({type(value).__name__})")
    if not value.strip() or value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(
            f"{where}: {option} must be a non-empty str without surrounding spaces or control characters, got {value!r}"
        )
    return value


def _positive(value: Duration | None, option: str, where: str) -> timedelta | None:
    """A ``timeout=``/``max_duration=`` option: ``None`` or a duration above zero."""
    if value is None:
        return None
    delta = parse_duration(value, what=f"{where}: {option}")
    if delta <= timedelta(0):
        raise ValueError(f"{where}: {option} must be longer than zero (or None for no limit), got {value!r}")
    return delta


@overload
def workflow(fn: F) -> F: ...
@overload
def workflow(
    *,
    name: str | None = None,
    max_duration: Duration | None = None,
    on_nondeterminism: str = "block",
    schedule: str | Schedule | None = None,
) -> Callable[[F], F]: ...


def workflow(
    fn: F | None = None,
    *,
    name: str | None = None,
    max_duration: Duration | None = None,
    on_nondeterminism: str = "block",
    schedule: str | Schedule | None = None,
) -> F | Callable[[F], F]:
    """Declare an async function as a durable workflow.

    ``name`` defaults to the function's qualified name; ``max_duration`` (e.g. ``"1h"``)
    fails a run that has not finished in that time. When replay meets another durable call
    than the log recorded (the code changed under a run in flight), the run is
    ``blocked`` until a fix and :func:`pyworkflow.retry`; ``on_nondeterminism="fail"``
    fails it instead. ``schedule`` (a 5-field cron string, or a
    :class:`~pyworkflow.Schedule`) declares a schedule for it, created or updated under the
    workflow's name when a Celery worker or beat starts. Start runs with :func:`pyworkflow.start` or
    :func:`pyworkflow.testing.start_local`. Called directly, the function runs as a plain
    coroutine.
    """

    def decorate(fn: F) -> F:
        _require_async(fn, "@workflow")
        where = _where("@workflow", fn)
        wf_name = name_option(name, "name", where) or fn.__qualname__
        limit = _positive(max_duration, "max_duration", where)
        if on_nondeterminism not in ("block", "fail"):
            raise ValueError(f'{where}: on_nondeterminism must be "block" or "fail", got {on_nondeterminism!r}')
        signature = Signature(fn, wf_name)
        declared = _declared_schedule(schedule, where, signature)
        definition = WorkflowDefinition(wf_name, fn, signature, limit, on_nondeterminism, declared)
        register_workflow(definition)

        @functools.wraps(fn)
        async def run_plain(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        run_plain.__pyworkflow_workflow__ = definition  # type: ignore[attr-defined]
        return run_plain  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _declared_schedule(schedule: object, where: str, signature: Signature) -> Schedule | None:
    """``schedule=``: checked here, at import, so a typo fails the deploy, not a beat."""
    if schedule is None:
        return None  # (schedules, croniter and their models stay unimported: see pyworkflow/__init__)
    from pyworkflow.schedules.spec import Schedule

    if isinstance(schedule, str):
        schedule = Schedule(cron=schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{where}: schedule must be a cron string or a Schedule, got {schedule!r}")
    schedule.timing(f"{where}: schedule")
    args, kwargs = tuple(schedule.args), dict(schedule.kwargs or {})
    signature.check_call(args, kwargs)
    signature.encode_args_for_call(args, kwargs)
    return schedule


@overload
def step(fn: F) -> F: ...
@overload
def step(
    *,
    name: str | None = None,
    max_retries: int = 3,
    retry_delay: str | Duration = "exponential",
    max_retry_delay: Duration = "1h",
    retry_jitter: bool | float = False,
    timeout: Duration | None = None,
    queue: str | None = None,
    cancel: str = "interrupt",
) -> Callable[[F], F]: ...


def step(
    fn: F | None = None,
    *,
    name: str | None = None,
    max_retries: int = 3,
    retry_delay: str | Duration = "exponential",
    max_retry_delay: Duration = "1h",
    retry_jitter: bool | float = False,
    timeout: Duration | None = None,
    queue: str | None = None,
    cancel: str = "interrupt",
) -> F | Callable[[F], F]:
    """Declare an async function as a step: recorded, retried, never re-run once completed.

    ``max_retries`` (default 3) retries after the first attempt; ``retry_delay`` is
    ``"exponential"`` (1 s, 2 s, 4 s … capped at ``max_retry_delay``), ``"fixed"`` (60 s)
    or a duration like ``"5s"``; ``retry_jitter`` spreads delays randomly (``True``: each
    delay is drawn from [delay/2, delay]; a number from 0 to 1 sets that random share). A
    :class:`~pyworkflow.RetryableError` may set ``retry_after``; a
    :class:`~pyworkflow.FatalError` is never retried. ``timeout`` bounds each attempt
    (a timeout is a retryable failure). When the run is cancelled while an attempt runs
    inline, ``cancel="interrupt"`` (default) cancels it at its next ``await`` and
    ``cancel="finish"`` lets it finish and records its result first. Outside a workflow
    the step runs as a plain coroutine.
    """

    def decorate(fn: F) -> F:
        _require_async(fn, "@step")
        where = _where("@step", fn)
        step_name = name_option(name, "name", where) or fn.__qualname__
        limit = _positive(timeout, "timeout", where)
        if cancel not in ("interrupt", "finish"):
            raise ValueError(f'{where}: cancel must be "interrupt" or "finish", got {cancel!r}')
        definition = StepDefinition(
            name=step_name,
            fn=fn,
            signature=Signature(fn, step_name),
            retry=RetryPolicy.build(max_retries, retry_delay, max_retry_delay, retry_jitter, where=where),
            timeout=limit.total_seconds() if limit is not None else None,
            queue=name_option(queue, "queue", where),
            finish_on_cancel=cancel == "finish",
        )
        register_step(definition)
        check_call = definition.signature.check_call

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            ctx = _run.get()
            if ctx is None or _step.get() is not None:
                return await fn(*args, **kwargs)
            check_call(args, kwargs)
            return await ctx.step(definition, args, kwargs)

        call.__pyworkflow_step__ = definition  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


async def sleep(duration: Duration | datetime | timedelta) -> None:
    """Wait ``duration``: ``"30s"``, ``"10m"``, ``"2h"``, ``"3d"``, ``"1w"``, ``"1h30m"``,
    seconds, a ``timedelta``, or until a ``datetime`` (naive means UTC; past means no wait).

    In a workflow the wait is durable: the run suspends, holds no worker, and continues
    after the wake time (never before). In a step or outside a workflow it is
    ``asyncio.sleep``. A bad value raises ``ValueError`` naming it.
    """
    ctx = _run.get()
    if ctx is not None and _step.get() is None:
        await ctx.sleep(duration)
        return
    now = utcnow()
    delay = (wake_time(duration, now) - now).total_seconds()
    await asyncio.sleep(max(delay, 0.0))


def _recorded(kind: str, produce: Callable[[], Any], encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Any:
    ctx = _run.get()
    if ctx is None or _step.get() is not None:
        return produce()
    return ctx.value(kind, produce, encode, decode)


def now() -> datetime:
    """The current UTC time; in workflow code, recorded once and replayed after, so a
    replay sees the time the first execution saw (``datetime.now()`` would not)."""
    ctx = _run.get()
    clock_now = ctx.clock.now if ctx is not None else utcnow
    return _recorded("now", clock_now, datetime.isoformat, datetime.fromisoformat)  # type: ignore[no-any-return]


def uuid4() -> uuid.UUID:
    """A random UUID; in workflow code, recorded once and the same on every replay."""
    return _recorded("uuid4", uuid.uuid4, str, uuid.UUID)  # type: ignore[no-any-return]


def random() -> float:
    """A random float in [0, 1); in workflow code, recorded once and the same on every replay."""
    return _recorded("random", _random.random, float, float)  # type: ignore[no-any-return]
