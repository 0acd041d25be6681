"""Prometheus metrics: runs, steps, wake-ups, inboxes, ticks and schedule slots counted
exactly once in-process (replays count nothing again), scraped and parsed as Prometheus
would; the dashboard's ``GET /metrics`` behind its token; ``PYWORKFLOW_METRICS_PORT``
checked where it enters. The worker's own port is tested in
``tests/celery/test_metrics_on_worker.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pyworkflow import (
    FatalError,
    RetryableError,
    cancel_async,
    continue_as_new,
    create_schedule_async,
    metrics,
    send_signal_async,
    sleep,
    step,
    wait_for_signal,
    workflow,
)
from pyworkflow import interceptors as interceptor_module
from pyworkflow.celery.settings import Settings
from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2027, 1, 1, 0, 0, 30, tzinfo=timezone.utc)

flaky_calls: list[int] = []
diverge: list[bool] = []


@step(name="metrics.add")
async def add(x: int) -> int:
    return x + 1


@step(name="metrics.other")
async def other(x: int) -> int:
    return x - 1


@step(name="metrics.flaky", max_retries=2, retry_delay="1s")
async def flaky() -> str:
    flaky_calls.append(1)
    if len(flaky_calls) == 1:
        raise RetryableError("not yet")
    return "ok"


@step(name="metrics.fatal")
async def fatal() -> None:
    raise FatalError("no way")


@workflow(name="metrics.flow")
async def flow(x: int) -> int:
    a = await add(x)
    await flaky()
    await sleep("1h")
    return await add(a)


@workflow(name="metrics.broken")
async def broken() -> None:
    await add(1)
    await fatal()


@workflow(name="metrics.waiter")
async def waiter() -> int:
    first = await wait_for_signal("go")
    second = await wait_for_signal("go")
    return int(first) + int(second)


@workflow(name="metrics.sleeper")
async def sleeper() -> None:
    await sleep("1d")


@workflow(name="metrics.looping")
async def looping(n: int) -> int:
    if n > 0:
        await continue_as_new(n - 1)
    return n


@workflow(name="metrics.diverging")
async def diverging() -> int:
    value = await (other(1) if diverge else add(1))
    await sleep("1h")
    return value


@workflow(name="metrics.job")
async def job() -> None:
    await sleep("90s")


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    flaky_calls.clear()
    diverge.clear()
    registry = CollectorRegistry()
    metrics.enable_metrics(registry)
    yield registry
    metrics.disable_metrics()


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back, by name and labels."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def of(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], prefix: str) -> dict[str, float]:
    """The samples whose name starts with ``prefix``, as ``name{label=value,…}``
    (histograms: their count and sum only)."""
    found = {}
    for (name, labels), value in samples.items():
        if name.startswith(prefix) and not name.endswith("_bucket") and not name.endswith("_created"):
            found[name + "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"] = value
    return found


async def test_runs_and_steps_are_counted_once_each(registry: CollectorRegistry) -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(T0)
    rt = LocalRuntime(storage, clock=clock)

    # a retrying step, then a sleep: woken by the tick 2 s and 5 s late
    flow_id = await rt.start(flow, 1)
    clock.advance(timedelta(seconds=3))  # the retry was due after 1 s
    await rt.tick()
    clock.advance(timedelta(hours=1, seconds=5))
    await rt.tick()
    assert (await storage.get_run(flow_id)).status == "completed"  # type: ignore[union-attr]
    # replays, and activations that find nothing to do, count nothing
    await rt.resume(flow_id)
    await rt.tick()

    assert (await rt.run_until_complete(await rt.start(broken))).status == "failed"

    waiting = await rt.start(waiter)
    await send_signal_async(waiting, "go", 2, storage=storage)
    await send_signal_async(waiting, "go", 3, storage=storage)
    assert (await rt.run_until_complete(waiting)).result == 5  # one activation took both

    sleeping = await rt.start(sleeper)
    await cancel_async(sleeping, storage=storage)
    assert (await rt.run_until_complete(sleeping)).status == "cancelled"

    assert (await rt.run_until_complete(await rt.start(looping, 1))).status == "completed"

    blocked = await rt.start(diverging)
    diverge.append(True)  # a new release calls another step first
    assert (await rt.run_until_complete(blocked)).status == "blocked"

    samples = scrape(registry)
    assert of(samples, "pyworkflow_runs_") == {
        "pyworkflow_runs_started_total{workflow=metrics.flow}": 1,
        "pyworkflow_runs_started_total{workflow=metrics.broken}": 1,
        "pyworkflow_runs_started_total{workflow=metrics.waiter}": 1,
        "pyworkflow_runs_started_total{workflow=metrics.sleeper}": 1,
        "pyworkflow_runs_started_total{workflow=metrics.looping}": 2,  # the continued run too
        "pyworkflow_runs_started_total{workflow=metrics.diverging}": 1,
        "pyworkflow_runs_finished_total{status=completed,workflow=metrics.flow}": 1,
        "pyworkflow_runs_finished_total{status=failed,workflow=metrics.broken}": 1,
        "pyworkflow_runs_finished_total{status=completed,workflow=metrics.waiter}": 1,
        "pyworkflow_runs_finished_total{status=cancelled,workflow=metrics.sleeper}": 1,
        "pyworkflow_runs_finished_total{status=continued,workflow=metrics.looping}": 1,
        "pyworkflow_runs_finished_total{status=completed,workflow=metrics.looping}": 1,
        "pyworkflow_runs_blocked_total{workflow=metrics.diverging}": 1,
    }
    steps = {key: value for key, value in of(samples, "pyworkflow_step_").items() if "_sum{" not in key}
    assert steps == {
        "pyworkflow_step_duration_seconds_count{outcome=ok,step=metrics.add,workflow=metrics.flow}": 2,
        "pyworkflow_step_duration_seconds_count{outcome=error,step=metrics.flaky,workflow=metrics.flow}": 1,
        "pyworkflow_step_duration_seconds_count{outcome=ok,step=metrics.flaky,workflow=metrics.flow}": 1,
        "pyworkflow_step_duration_seconds_count{outcome=ok,step=metrics.add,workflow=metrics.broken}": 1,
        "pyworkflow_step_duration_seconds_count{outcome=error,step=metrics.fatal,workflow=metrics.broken}": 1,
        "pyworkflow_step_duration_seconds_count{outcome=ok,step=metrics.add,workflow=metrics.diverging}": 1,
        "pyworkflow_step_retries_total{step=metrics.flaky,workflow=metrics.flow}": 1,
        "pyworkflow_step_failures_total{step=metrics.fatal,workflow=metrics.broken}": 1,
    }
    for key, value in of(samples, "pyworkflow_step_duration_seconds_sum").items():
        assert 0 <= value < 5, key

    # the virtual clock moves in real time between its jumps too: a few ms more
    lateness = of(samples, "pyworkflow_wake_lateness_seconds")
    assert lateness == {
        "pyworkflow_wake_lateness_seconds_count{workflow=metrics.flow}": 2,
        "pyworkflow_wake_lateness_seconds_sum{workflow=metrics.flow}": pytest.approx(7.0, abs=0.5),  # 2 s + 5 s
        # run_until_complete wakes a sleeper at its wake time
        "pyworkflow_wake_lateness_seconds_count{workflow=metrics.diverging}": 1,
        "pyworkflow_wake_lateness_seconds_sum{workflow=metrics.diverging}": pytest.approx(0.0, abs=0.5),
    }
    inbox = of(samples, "pyworkflow_inbox_depth")
    # flow: 3 activations; waiter: its first, then one with both signals; sleeper: its
    # first, then one with the cancellation; looping: one per run; diverging: two
    assert {k: v for k, v in inbox.items() if "_count" in k} == {
        "pyworkflow_inbox_depth_count{workflow=metrics.flow}": 3,
        "pyworkflow_inbox_depth_count{workflow=metrics.broken}": 1,
        "pyworkflow_inbox_depth_count{workflow=metrics.waiter}": 2,
        "pyworkflow_inbox_depth_count{workflow=metrics.sleeper}": 2,
        "pyworkflow_inbox_depth_count{workflow=metrics.looping}": 2,
        "pyworkflow_inbox_depth_count{workflow=metrics.diverging}": 2,
    }
    assert inbox["pyworkflow_inbox_depth_sum{workflow=metrics.waiter}"] == 2
    assert inbox["pyworkflow_inbox_depth_sum{workflow=metrics.sleeper}"] == 1
    assert inbox["pyworkflow_inbox_depth_sum{workflow=metrics.flow}"] == 0
    waiter_buckets = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "pyworkflow_inbox_depth_bucket" and ("workflow", "metrics.waiter") in labels
    }
    assert waiter_buckets[(("le", "0.0"), ("workflow", "metrics.waiter"))] == 1
    assert waiter_buckets[(("le", "2.0"), ("workflow", "metrics.waiter"))] == 2

    activations = of(samples, "pyworkflow_activation_duration_seconds_count")
    assert activations == {
        k.replace("inbox_depth", "activation_duration_seconds"): v for k, v in inbox.items() if "_count" in k
    }
    # three ticks, each timed once
    assert samples[("pyworkflow_tick_duration_seconds_count", (("runtime", "local"),))] == 3


async def test_schedule_slots_fired_skipped_and_missed(registry: CollectorRegistry) -> None:
    storage = InMemoryStorageBackend()
    clock = VirtualClock(T0)
    rt = LocalRuntime(storage, clock=clock)
    await create_schedule_async(
        "metrics-every-minute", job, every="1m", overlap="skip", catchup="none", storage=storage, clock=clock
    )
    clock.advance(timedelta(seconds=30))  # 00:01:00: the first slot fires; its run sleeps 90 s
    await rt.tick()
    clock.advance(timedelta(minutes=1))  # 00:02:00: its run still sleeps, the slot is skipped
    await rt.tick()
    clock.advance(timedelta(minutes=8, seconds=30))  # 00:10:30: 00:03-00:09 missed, 00:10 on time
    await rt.tick()

    samples = scrape(registry)
    assert of(samples, "pyworkflow_schedule_slots") == {
        "pyworkflow_schedule_slots_total{outcome=fired,schedule=metrics-every-minute}": 2,
        "pyworkflow_schedule_slots_total{outcome=skipped,schedule=metrics-every-minute}": 1,
        "pyworkflow_schedule_slots_total{outcome=missed,schedule=metrics-every-minute}": 7,
    }
    assert of(samples, "pyworkflow_runs_started_total") == {"pyworkflow_runs_started_total{workflow=metrics.job}": 2}
    assert of(samples, "pyworkflow_runs_finished_total") == {
        "pyworkflow_runs_finished_total{status=completed,workflow=metrics.job}": 1
    }
    late = of(samples, "pyworkflow_wake_lateness_seconds")  # woke at 00:10:30, due at 00:02:30
    assert late == {
        "pyworkflow_wake_lateness_seconds_count{workflow=metrics.job}": 1,
        "pyworkflow_wake_lateness_seconds_sum{workflow=metrics.job}": pytest.approx(480.0, abs=0.5),
    }
    assert samples[("pyworkflow_tick_duration_seconds_count", (("runtime", "local"),))] == 3


async def test_a_tick_that_lost_the_race_counts_no_slot(registry: CollectorRegistry) -> None:
    from pyworkflow.schedules import Firing

    storage = InMemoryStorageBackend()
    clock = VirtualClock(T0)
    await create_schedule_async("metrics-raced", job, every="1m", storage=storage, clock=clock)
    clock.advance(timedelta(seconds=30))
    now = clock.now()
    [stored] = await storage.due_schedules(now)
    # two beats' ticks read the same version of the schedule; the second one's save fails
    assert await Firing(storage, clock=clock).fire(stored, now) == 1
    assert await Firing(storage, clock=clock).fire(stored, now) == 0
    assert of(scrape(registry), "pyworkflow_schedule_slots") == {
        "pyworkflow_schedule_slots_total{outcome=fired,schedule=metrics-raced}": 1
    }


async def test_enable_is_idempotent_and_disable_stops_counting() -> None:
    registry = CollectorRegistry()
    try:
        first = metrics.enable_metrics(registry)
        assert metrics.enable_metrics(registry) is first and metrics.enable_metrics() is first
        assert interceptor_module.CHAIN.count(first) == 1
        other = CollectorRegistry()
        moved = metrics.enable_metrics(other)  # another registry: the metrics move there
        assert moved is not first and metrics.ACTIVE is moved and first not in interceptor_module.CHAIN
        assert "pyworkflow_runs_started" not in generate_latest(registry).decode()
    finally:
        metrics.disable_metrics()
    assert metrics.ACTIVE is None and not any(
        isinstance(i, metrics.PrometheusInterceptor) for i in interceptor_module.CHAIN
    )
    rt = LocalRuntime(InMemoryStorageBackend(), clock=VirtualClock(T0))
    await rt.run_until_complete(await rt.start(broken))
    await rt.tick()
    assert "pyworkflow_" not in generate_latest(other).decode()  # off: nothing counted anywhere


# -- the dashboard ---------------------------------------------------------------------------


@pytest.fixture
async def dashboard_storage(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InMemoryStorageBackend]:
    import pyworkflow.celery.factory as factory

    monkeypatch.delenv("PYWORKFLOW_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(factory, "_installed", None)
    yield InMemoryStorageBackend()


def _client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")  # type: ignore[arg-type]


async def test_the_dashboard_serves_metrics_behind_its_token(
    registry: CollectorRegistry, dashboard_storage: InMemoryStorageBackend
) -> None:
    from pyworkflow.dashboard import create_app

    rt = LocalRuntime(dashboard_storage, clock=VirtualClock(T0))
    await rt.run_until_complete(await rt.start(broken))
    token = "metrics-token-0123456789"
    async with _client(create_app(storage=dashboard_storage, token=token)) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401 and "pyworkflow_" not in refused.text
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})
        ).status_code == 401
        answer = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(answer.text)}
        started = families["pyworkflow_runs_started"].samples
        assert [(s.labels, s.value) for s in started] == [({"workflow": "metrics.broken"}, 1.0)]
        assert families["pyworkflow_runs_finished"].type == "counter"
        openmetrics = await http.get(
            "/metrics", headers={"Authorization": f"Bearer {token}", "Accept": "application/openmetrics-text"}
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")
    async with _client(create_app(storage=dashboard_storage)) as http:  # no token configured: open
        assert (await http.get("/metrics")).status_code == 200


async def test_a_metrics_route_of_your_own_is_kept(dashboard_storage: InMemoryStorageBackend) -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pyworkflow.dashboard import create_app

    async def mine(request: object) -> PlainTextResponse:
        return PlainTextResponse("mine")

    app = create_app(storage=dashboard_storage, extra_routes=[Route("/metrics", mine)])
    async with _client(app) as http:
        assert (await http.get("/metrics")).text == "mine"


# -- PYWORKFLOW_METRICS_PORT -------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PYWORKFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "memory://")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("http", "is not a port number"),
        ("9191.5", "is not a port number"),
        ("-1", "is not a port number"),
        ("localhost:", "is not a port number"),
        ("0", "is out of range"),
        ("65536", "is out of range"),
        ("127.0.0.1:70000", "is out of range"),
    ],
)
def test_a_bad_metrics_port_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, problem: str
) -> None:
    monkeypatch.setenv("PYWORKFLOW_METRICS_PORT", raw)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env()
    assert f"PYWORKFLOW_METRICS_PORT={raw!r} {problem}" in str(info.value)
    assert "1 to 65535" in str(info.value)


@pytest.mark.usefixtures("clean_env")
def test_good_metrics_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().metrics_port is None
    monkeypatch.setenv("PYWORKFLOW_METRICS_PORT", " 9191 ")
    assert Settings.from_env().metrics_port == "9191"
    assert metrics.parse_port("9191") == ("0.0.0.0", 9191)
    assert metrics.parse_port("127.0.0.1:9191") == ("127.0.0.1", 9191)
    assert metrics.parse_port("[::1]:9191") == ("::1", 9191)
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_METRICS_PORT"):
        Settings(broker_url="memory://", metrics_port="nope").check()


def test_the_worker_refuses_a_bad_metrics_port_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    env.update({"PYWORKFLOW_BROKER_URL": "memory://", "PYWORKFLOW_METRICS_PORT": "metrics", "PYTHONPATH": str(ROOT)})
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run(
        [str(celery), "-A", "pyworkflow.celery.app", "worker", "--loglevel=WARNING"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        "pyworkflow: ConfigurationError: PYWORKFLOW_METRICS_PORT='metrics' is not a port number; expected a port "
        "number from 1 to 65535, or HOST:PORT (e.g. 9191 or 127.0.0.1:9191)"
    ]


def test_without_prometheus_client_a_worker_stops_and_other_processes_start(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "prometheus_client.py").write_text("raise ImportError(\"No module named 'prometheus_client'\")\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    env.update(
        {"PYWORKFLOW_BROKER_URL": "memory://", "PYWORKFLOW_METRICS_PORT": "9191", "PYTHONPATH": f"{hidden}:{ROOT}"}
    )
    client = subprocess.run(  # the application sharing the workers' variables
        [sys.executable, "-c", "import pyworkflow.celery.app"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert client.returncode == 0, client.stderr
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run(
        [str(celery), "-A", "pyworkflow.celery.app", "worker", "--loglevel=WARNING"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1] == (
        "pyworkflow: ConfigurationError: PYWORKFLOW_METRICS_PORT is set, but metrics need prometheus-client "
        "(No module named 'prometheus_client'); install it with: pip install 'pyworkflow-celery[metrics]'"
    )
    assert "Traceback" not in output
