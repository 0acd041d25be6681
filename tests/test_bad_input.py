# mypy: disable-error-code="call-overload,attr-defined,arg-type"
"""A catalogue of bad input, one boundary after another: each is refused where it
entered, with an error of the promised class whose message names what was wrong, and
nothing already recorded (registry, runs, events) changes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pyworkflow import RetryableError, sleep, step, workflow
from pyworkflow.celery.settings import Settings
from pyworkflow.durations import parse_duration, wake_time
from pyworkflow.errors import ConfigurationError, IdempotencyConflictError, SerializationError, WorkflowNotFoundError
from pyworkflow.registry import get_step, workflow_names
from pyworkflow.storage import storage_from_url
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock, run_local, start_local

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


# -- decorators ---------------------------------------------------------------------------

# (decorator factory, error class, what the message must name besides decorator and function)
DECORATOR_CASES: list[tuple[str, Callable[[], Any], type[Exception], list[str]]] = [
    ("queue-int", lambda: step(queue=123), TypeError, ["queue", "123"]),
    ("queue-empty", lambda: step(queue=""), ValueError, ["queue", "''"]),
    ("queue-blank", lambda: step(queue="  "), ValueError, ["queue", "'  '"]),
    ("queue-newline", lambda: step(queue="q\n"), ValueError, ["queue"]),
    ("step-name-empty", lambda: step(name=""), ValueError, ["name", "''"]),
    ("step-name-bytes", lambda: step(name=b"x"), TypeError, ["name", "b'x'"]),
    ("workflow-name-int", lambda: workflow(name=123), TypeError, ["name", "123"]),
    ("workflow-name-empty", lambda: workflow(name=""), ValueError, ["name", "''"]),
    ("timeout-zero", lambda: step(timeout=0), ValueError, ["timeout", "0"]),
    ("timeout-zero-str", lambda: step(timeout="0s"), ValueError, ["timeout", "'0s'"]),
    ("timeout-negative", lambda: step(timeout=-1), ValueError, ["timeout", "-1"]),
    ("timeout-nan", lambda: step(timeout=float("nan")), ValueError, ["timeout", "nan"]),
    ("timeout-huge", lambda: step(timeout="99999999w"), ValueError, ["timeout", "'99999999w'"]),
    ("jitter-str", lambda: step(retry_jitter="no"), TypeError, ["retry_jitter", "'no'"]),
    ("jitter-big", lambda: step(retry_jitter=1.5), ValueError, ["retry_jitter", "1.5"]),
    ("jitter-negative", lambda: step(retry_jitter=-0.1), ValueError, ["retry_jitter", "-0.1"]),
    ("jitter-nan", lambda: step(retry_jitter=float("nan")), ValueError, ["retry_jitter", "nan"]),
    ("retries-negative", lambda: step(max_retries=-1), ValueError, ["max_retries", "-1"]),
    ("retries-bool", lambda: step(max_retries=True), TypeError, ["max_retries", "True"]),
    ("retries-float", lambda: step(max_retries=1.5), TypeError, ["max_retries", "1.5"]),
    ("retries-str", lambda: step(max_retries="3"), TypeError, ["max_retries", "'3'"]),
    ("delay-word", lambda: step(retry_delay="soon"), ValueError, ["retry_delay", "'soon'"]),
    ("delay-negative", lambda: step(retry_delay=-5), ValueError, ["retry_delay", "-5"]),
    ("delay-huge", lambda: step(retry_delay=1e300), ValueError, ["retry_delay", "1e+300"]),
    ("max-delay-inf", lambda: step(max_retry_delay=float("inf")), ValueError, ["max_retry_delay", "inf"]),
    ("max-duration-0s", lambda: workflow(max_duration="0s"), ValueError, ["max_duration", "'0s'"]),
    ("max-duration-0", lambda: workflow(max_duration=0), ValueError, ["max_duration", "0"]),
    ("max-duration-negative", lambda: workflow(max_duration=-1), ValueError, ["max_duration", "-1"]),
    ("max-duration-word", lambda: workflow(max_duration="forever"), ValueError, ["max_duration", "'forever'"]),
]


@pytest.mark.parametrize(("make", "error", "named"), [pytest.param(m, e, n, id=i) for i, m, e, n in DECORATOR_CASES])
def test_decorator_options_are_refused_at_decoration(
    make: Callable[[], Any], error: type[Exception], named: list[str]
) -> None:
    async def bad_options_target() -> None: ...

    before = workflow_names()
    with pytest.raises(error) as info:
        make()(bad_options_target)
    message = str(info.value)
    decorator = "@workflow" if "workflow" in repr(make.__code__.co_names) else "@step"
    assert decorator in message and "bad_options_target" in message
    for part in named:
        assert part in message, (part, message)
    assert workflow_names() == before and get_step(bad_options_target.__qualname__) is None


@pytest.mark.parametrize("decorator", [workflow, step()], ids=["workflow", "step"])
def test_plain_functions_are_refused_by_name(decorator: Callable[[Any], Any]) -> None:
    def plain_function() -> None: ...

    with pytest.raises(TypeError, match="plain_function.*async def"):
        decorator(plain_function)


def test_valid_decorator_options_still_work() -> None:
    async def fine() -> None: ...

    defn = step(name="bad_input.fine", queue="q", timeout="1m", retry_jitter=0.25, max_retries=0)(fine)
    assert defn.__pyworkflow_step__.retry.jitter == 0.25 and defn.__pyworkflow_step__.timeout == 60.0
    assert step(retry_jitter=True)(fine).__pyworkflow_step__.retry.jitter == 0.5
    assert workflow(name="bad_input.fine_wf", max_duration=None)(fine).__pyworkflow_workflow__.max_duration is None


# -- durations ----------------------------------------------------------------------------

BAD_DURATIONS = [
    "99999999w",
    "1e5s",
    "",
    "5",
    "-5s",
    1e300,
    10**30,
    -1,
    float("inf"),
    float("-inf"),
    float("nan"),
    timedelta(days=400_000),
    timedelta(seconds=-1),
    None,
    True,
]


@pytest.mark.parametrize("value", BAD_DURATIONS, ids=repr)
def test_bad_durations_raise_value_error_naming_the_value(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value, what="sleep")
    assert repr(value) in str(info.value) and "sleep" in str(info.value)
    with pytest.raises(ValueError, match="sleep"):
        wake_time(value, NOW)


@pytest.mark.parametrize("value", ["99999999w", 1e300, float("inf"), float("nan")], ids=repr)
async def test_bad_sleeps_outside_a_run_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError) as info:
        await sleep(value)
    assert repr(value) in str(info.value)


def test_long_but_valid_durations_still_work() -> None:
    assert parse_duration("52w") == timedelta(weeks=52)
    assert parse_duration(365_000 * 86400) == timedelta(days=365_000)
    assert wake_time("1000w", NOW) == NOW + timedelta(weeks=1000)


sleep_value: list[object] = []


@step(name="bad_input.before_sleep")
async def before_sleep() -> str:
    return "done"


@workflow(name="bad_input.bad_sleep")
async def sleeps_badly() -> None:
    await before_sleep()
    await sleep(sleep_value[0])


@pytest.mark.parametrize("value", ["99999999w", 1e300, float("inf"), float("nan")], ids=repr)
async def test_a_bad_sleep_in_a_run_fails_it_naming_the_value(memory: InMemoryStorageBackend, value: object) -> None:
    sleep_value[:] = [value]
    run_id = await start_local(sleeps_badly, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "builtins.ValueError" and repr(value) in run.error["message"]
    types = [e.type for e in await memory.get_events(run_id)]
    assert "step.completed" in types and "sleep.created" not in types


# -- settings from the environment ----------------------------------------------------------

ENV_CASES = [
    ("PYWORKFLOW_LEASE_TTL", "nan"),
    ("PYWORKFLOW_VISIBILITY_TIMEOUT", "inf"),
    ("PYWORKFLOW_START_GUARD", "nan"),
    ("PYWORKFLOW_TICK_INTERVAL", "inf"),
    ("PYWORKFLOW_COUNTDOWN_HINT", "nan"),
    ("PYWORKFLOW_LEASE_TTL", "soon"),
    ("PYWORKFLOW_STORAGE_URL", "garbage://x"),
    ("PYWORKFLOW_BROKER_URL", "garbage://x"),
    ("PYWORKFLOW_BROKER_URL", "localhost:6379"),
]


@pytest.mark.parametrize(("variable", "raw"), ENV_CASES)
def test_bad_environment_settings_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    for name in list(os.environ):
        if name.startswith("PYWORKFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "memory://")
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env()
    assert variable in str(info.value) and raw in str(info.value)


# -- storage URLs ---------------------------------------------------------------------------

STORAGE_CASES: list[tuple[object, str]] = [
    ("garbage://x", "'garbage://x'"),
    ("mysql://admin:hunter2@db/app", "mysql://admin:***@db/app"),
    ("pyworkflow.db", "'pyworkflow.db'"),
    (42, "42"),
    (None, "None"),
    ("sqlite://", "names no database file"),
    ("sqlite:///x.db?journal=off", "journal"),
    ("sqlite:///x.db?synchronous=SOMETIMES", "SOMETIMES"),
    ("file://", "file://"),
]


@pytest.mark.parametrize(("url", "named"), STORAGE_CASES, ids=repr)
def test_bad_storage_urls_are_refused_naming_them(url: object, named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        storage_from_url(url)
    assert named in str(info.value) and "hunter2" not in str(info.value)


# -- start arguments --------------------------------------------------------------------------


@workflow(name="bad_input.adds")
async def adds(a: int, b: int = 1) -> int:
    return a + b


@workflow(name="bad_input.other")
async def other() -> None:
    return None


START_CASES: list[tuple[str, Callable[[InMemoryStorageBackend], Any], type[Exception], str]] = [
    ("unknown-name", lambda s: start_local("bad_input.nope", storage=s), WorkflowNotFoundError, "bad_input.nope"),
    ("plain-function", lambda s: start_local(len, storage=s), TypeError, "len"),
    ("missing-argument", lambda s: start_local(adds, storage=s), TypeError, "bad_input.adds"),
    ("extra-argument", lambda s: start_local(adds, 1, 2, 3, storage=s), TypeError, "bad_input.adds"),
    ("unknown-keyword", lambda s: start_local(adds, 1, c=2, storage=s), TypeError, "c"),
    ("unencodable", lambda s: start_local(adds, object(), storage=s), SerializationError, "a"),
    ("key-int", lambda s: start_local(adds, 1, storage=s, idempotency_key=5), ValueError, "idempotency_key"),
    ("key-empty", lambda s: start_local(adds, 1, storage=s, idempotency_key=""), ValueError, "idempotency_key"),
]


@pytest.mark.parametrize(("start", "error", "named"), [pytest.param(s, e, n, id=i) for i, s, e, n in START_CASES])
async def test_bad_start_arguments_record_nothing(
    memory: InMemoryStorageBackend, start: Callable[[InMemoryStorageBackend], Any], error: type[Exception], named: str
) -> None:
    existing = await start_local(adds, 1, storage=memory, idempotency_key="kept")
    before = await memory.get_events(existing)
    with pytest.raises(error) as info:
        await start(memory)
    assert named in str(info.value)
    assert [r.run_id for r in (await memory.list_runs()).runs] == [existing]
    assert await memory.get_events(existing) == before


async def test_an_idempotency_key_of_another_workflow_changes_nothing(memory: InMemoryStorageBackend) -> None:
    existing = await start_local(adds, 1, storage=memory, idempotency_key="taken")
    before = await memory.get_events(existing)
    with pytest.raises(IdempotencyConflictError, match="taken"):
        await start_local(other, storage=memory, idempotency_key="taken")
    assert await memory.get_events(existing) == before


# -- RetryableError(retry_after=...) ----------------------------------------------------------

body_runs: Counter[str] = Counter()
retry_after_value: list[object] = []


@step(name="bad_input.retries_badly", max_retries=2, retry_delay="1s")
async def retries_badly() -> None:
    body_runs[repr(retry_after_value[0])] += 1
    raise RetryableError("try again", retry_after=retry_after_value[0])


@workflow(name="bad_input.catches")
async def catches() -> str:
    try:
        await retries_badly()
    except RetryableError as exc:
        return f"caught {exc}"
    return "not raised"


@pytest.mark.parametrize("value", ["soon", -1, float("nan"), float("inf"), "99999999w", 1e300, object()], ids=repr)
async def test_an_invalid_retry_after_never_reruns_a_recorded_attempt(
    memory: InMemoryStorageBackend, value: object
) -> None:
    retry_after_value[:] = [value]
    key = repr(value)
    body_runs[key] = 0
    run_id = await run_local(catches, storage=memory)
    run = await memory.get_run(run_id)
    # refused where it is raised: the step fails with a ValueError naming retry_after, an
    # ordinary failure retried by the step's own policy, and the workflow does not catch it
    assert run is not None and run.status == "failed" and run.error is not None
    assert "retry_after" in run.error["message"]
    assert body_runs[key] == 3, "one first attempt and two retries (the step's own delay), no more"
    events = await memory.get_events(run_id)
    assert [e.type for e in events].count("step.retrying") == 2
    # replaying the finished run runs nothing again and records nothing
    await LocalRuntime(memory, clock=VirtualClock()).resume(run_id)
    assert body_runs[key] == 3 and await memory.get_events(run_id) == events
