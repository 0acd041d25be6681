"""A prefork worker with ``PYWORKFLOW_METRICS_PORT`` serves, on that port, what every one
of its pool processes counted (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from pyworkflow import start, wait_for_result
from tests.celery.conftest import Subprocess, free_port
from tests.celery.metrics_workflows import meet
from tests.celery_workflows import add_three, fanout, sleeper

IMPORTS = "tests.celery_workflows,tests.celery.metrics_workflows"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    answer = httpx.get(url, timeout=5)
    answer.raise_for_status()
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def scrape_until(url: str, ready: Callable[[Samples], bool], worker: Subprocess, timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while True:
        assert worker.proc.poll() is None, f"the worker exited; see {worker.log}"
        try:
            samples = scrape(url)
        except httpx.TransportError:
            pass  # not serving yet
        if samples and ready(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"the metrics at {url} did not get there within {timeout}s: {samples}")
        time.sleep(0.05)


def finished(samples: Samples, workflow: str) -> float:
    return samples.get(("pyworkflow_runs_finished_total", (("status", "completed"), ("workflow", workflow))), 0.0)


def test_a_prefork_worker_serves_the_metrics_of_all_its_processes(
    crash_app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    port = free_port()
    temporary = tmp_path / "tmp"  # where the worker makes its PROMETHEUS_MULTIPROC_DIR
    temporary.mkdir()
    worker = spawn(
        "worker", PYWORKFLOW_METRICS_PORT=f"127.0.0.1:{port}", PYWORKFLOW_IMPORTS=IMPORTS, TMPDIR=str(temporary)
    )
    spawn("beat")
    tag = f"meet-{uuid.uuid4().hex[:6]}"
    met = [start(meet, tag) for _ in range(2)]  # each waits in its step until both run
    asleep = [start(sleeper, f"{tag}-{i}", 0.5) for i in range(2)]
    added = start(add_three, 1)
    fanned = start(fanout, 3)  # three dispatched steps, which report to the run's inbox
    pids = {wait_for_result(run_id, timeout=90) for run_id in met}
    assert len(pids) == 2, "two pool processes ran a run each"
    for run_id in asleep:
        wait_for_result(run_id, timeout=90)
    assert wait_for_result(added, timeout=90) == 4
    assert wait_for_result(fanned, timeout=90) == [0, 1, 4]

    url = f"http://127.0.0.1:{port}/metrics"
    ticks = ("pyworkflow_tick_duration_seconds_count", (("runtime", "celery"),))
    samples = scrape_until(
        url,
        lambda s: (
            finished(s, "metrics.meet") == 2
            and finished(s, "celery.sleeper") == 2
            and finished(s, "celery.fanout") == 1
            and s.get(ticks, 0) >= 1
        ),
        worker,
    )
    # summed over both pool processes, each counted once
    assert finished(samples, "metrics.meet") == 2
    assert finished(samples, "celery.sleeper") == 2
    assert finished(samples, "celery.add_three") == 1
    meet_steps = (
        "pyworkflow_step_duration_seconds_count",
        (("outcome", "ok"), ("step", "metrics.meet_step"), ("workflow", "metrics.meet")),
    )
    assert samples[meet_steps] == 2
    late = ("pyworkflow_wake_lateness_seconds_count", (("workflow", "celery.sleeper"),))
    assert samples[late] == 2, "each sleeper woken by its timer once"
    assert not any(("status", "failed") in labels for _, labels in samples)
    dispatched = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "pyworkflow_step_duration_seconds_count" and ("workflow", "celery.fanout") in labels
    }
    assert list(dispatched.values()) == [3], dispatched  # timed on the step worker, one series
    # a step worker posts two messages per dispatched step: it started, and its outcome
    assert samples[("pyworkflow_inbox_depth_sum", (("workflow", "celery.fanout"),))] == 6

    [folder] = temporary.glob("pyworkflow-metrics-*")
    writers = {path.stem.rsplit("_", 1)[1] for path in folder.glob("counter_*.db")}
    assert len(writers) >= 2, f"each pool process writes its own files: {sorted(folder.iterdir())}"
    worker.stop()  # a warm shutdown removes the directory it made
    assert not list(temporary.glob("pyworkflow-metrics-*"))


def test_a_taken_metrics_port_is_logged_and_the_worker_runs_on(
    crash_app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = spawn(
            "worker", PYWORKFLOW_METRICS_PORT=f"127.0.0.1:{port}", PYWORKFLOW_IMPORTS=IMPORTS, TMPDIR=str(temporary)
        )
        assert wait_for_result(start(add_three, 1), timeout=90) == 4
        assert worker.proc.poll() is None
        log = worker.log.read_text()
        assert "metrics_not_served" in log and "PYWORKFLOW_METRICS_PORT" in log, log
    worker.stop()
    assert not list(temporary.glob("pyworkflow-metrics-*")), "the directory it made is removed all the same"
