"""PyWorkflow on a real Celery worker (in-process, threads pool), on each real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyworkflow.celery.factory as factory
from pyworkflow import RunFailedError, get_run, send_signal, start, wait_for_result
from pyworkflow.clock import utcnow
from pyworkflow.events import Event
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend, WorkflowRun, new_run_id
from tests.celery.conftest import Ticker, wait_until
from tests.celery_workflows import add_three, approval, count, fan_out_children, fanout, gated_run, sleeper


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


def events_of(storage: StorageBackend, run_id: str) -> list[Event]:
    return PROCESS_LOOP.run(storage.get_events(run_id))


def test_start_runs_on_the_worker(storage: StorageBackend) -> None:
    run_id = start(add_three, 4)
    assert wait_for_result(run_id, timeout=20) == 7
    run = get_run(run_id)
    assert run is not None and run.status == "completed"
    assert [e.type for e in events_of(storage, run_id)].count("step.completed") == 3


def test_idempotent_start(storage: StorageBackend) -> None:
    first = start(add_three, 1, idempotency_key="celery-idem")
    assert start(add_three, 1, idempotency_key="celery-idem") == first
    assert wait_for_result(first, timeout=20) == 4


async def test_start_from_inside_a_running_event_loop(storage: StorageBackend) -> None:
    run_id = start(add_three, 10)  # sync call inside this test's loop: must not deadlock
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, wait_for_result, run_id, 20.0)
    assert result == 13


def test_short_sleep_wakes_via_countdown_hint(storage: StorageBackend, celery_app: Any) -> None:
    run_id = start(sleeper, "hint", 0.5)
    assert wait_for_result(run_id, timeout=20) == "hint"
    events = events_of(storage, run_id)
    created = next(e for e in events if e.type == "sleep.created")
    done = next(e for e in events if e.type == "sleep.completed")
    assert done.timestamp >= created.timestamp
    assert done.timestamp >= __import__("datetime").datetime.fromisoformat(created.data["wake_at"])


@contextlib.contextmanager
def activations_sent(runtime: Any) -> Iterator[list[tuple[str, float | None, str | None]]]:
    """Every activation ``runtime`` sends meanwhile, as ``(run id, countdown, workflow)``;
    each is still sent."""
    sent: list[tuple[str, float | None, str | None]] = []
    original = runtime.send_activation

    def spy(run_id: str, countdown: float | None = None, **kw: Any) -> None:
        sent.append((run_id, countdown, kw.get("workflow")))
        original(run_id, countdown, **kw)

    runtime.send_activation = spy
    try:
        yield sent
    finally:
        del runtime.send_activation


def test_a_sleeping_run_wakes_via_the_tick_alone(storage: StorageBackend, celery_app: Any) -> None:
    runtime = celery_app.pyworkflow
    runtime.settings.countdown_hint = 0.0
    try:
        with activations_sent(runtime) as sent:
            run_id = start(sleeper, "tick-only", 1.0)
            wait_until(lambda: (r := get_run(run_id)) is not None and r.status == "suspended", 20, "suspended")
            with Ticker(celery_app, 0.2):
                assert wait_for_result(run_id, timeout=20) == "tick-only"
    finally:
        runtime.settings.countdown_hint = 10.0
    assert all(countdown is None or countdown == 0 for _, countdown, _ in sent), sent


def test_two_tickers_cause_no_duplicate_effects(storage: StorageBackend, celery_app: Any) -> None:
    runtime = celery_app.pyworkflow
    runtime.settings.countdown_hint = 0.0
    tags = [f"dup-{os.urandom(4).hex()}-{i}" for i in range(10)]  # markers outlive a test: once per broker
    try:
        run_ids = [start(sleeper, tag, 0.5) for tag in tags]
        with Ticker(celery_app, 0.05), Ticker(celery_app, 0.05):
            for run_id in run_ids:
                wait_for_result(run_id, timeout=30)
    finally:
        runtime.settings.countdown_hint = 10.0
    for tag, run_id in zip(tags, run_ids, strict=True):
        assert count(f"{tag}-before") == 1 and count(f"{tag}-after") == 1
        types = [e.type for e in events_of(storage, run_id)]
        assert types.count("workflow.resumed") == 1 and types.count("sleep.completed") == 1


def test_gather_fans_dispatched_steps_out_in_one_activation(storage: StorageBackend) -> None:
    run_id = start(fanout, 5)
    assert wait_for_result(run_id, timeout=30) == [0, 1, 4, 9, 16]
    types = [e.type for e in events_of(storage, run_id)]
    first_suspend = types.index("workflow.suspended")
    assert types[:first_suspend].count("step.dispatched") == 5, types
    assert types.count("step.completed") == 5
    for call_id in range(1, 6):
        assert count(f"square-{run_id}:{call_id}") == 1


def test_an_unknown_workflow_fails_naming_the_imported_modules(storage: StorageBackend, celery_app: Any) -> None:
    now = utcnow()
    run = WorkflowRun(run_id=new_run_id(), workflow_name="nobody.knows", created_at=now, updated_at=now)
    PROCESS_LOOP.run(storage.create_run(run, [Event.new(1, "workflow.started", now, {"workflow": "nobody.knows"})]))
    celery_app.pyworkflow.send_activation(run.run_id)
    with pytest.raises(RunFailedError) as info:
        wait_for_result(run.run_id, timeout=20)
    assert "nobody.knows" in str(info.value) and "PYWORKFLOW_IMPORTS" in str(info.value)


def test_a_dispatched_outcome_never_waits_on_a_long_lease(
    storage: StorageBackend, celery_app: Any, markers: Path
) -> None:
    """With a lease far longer than any old wait (90 s), a step worker records its outcome
    while another activation holds the run: it posts to the inbox and is done; the run
    moves as soon as the lease is let go, and the step ran once."""
    runtime = celery_app.pyworkflow
    previous = runtime.settings.lease_ttl
    runtime.settings.lease_ttl = 90.0
    tag = f"gate-{os.urandom(4).hex()}"
    try:
        run_id = start(gated_run, tag)
        wait_until(lambda: (r := get_run(run_id)) is not None and r.status == "suspended", 20, "dispatched")
        holder = PROCESS_LOOP.run(storage.acquire_lease(run_id, "a-long-activation", 90))
        assert holder is not None
        (markers / f"gate-{tag}").touch()  # the step may finish now, while the run is leased
        wait_until(lambda: len(PROCESS_LOOP.run(storage.get_messages(run_id))) == 2, 20, "started and outcome posted")
        assert count(f"{tag}-gated") == 1
        run = get_run(run_id)
        assert run is not None and run.status == "suspended"
        PROCESS_LOOP.run(storage.release_lease(holder))
        with Ticker(celery_app, 0.2):  # due since the post; the step worker's nudge found it leased
            assert wait_for_result(run_id, timeout=30) == tag
    finally:
        runtime.settings.lease_ttl = previous
    assert count(f"{tag}-gated") == 1
    types = [e.type for e in events_of(storage, run_id)]
    assert types.count("step.started") == 1 and types.count("step.completed") == 1


def test_a_start_whose_message_was_lost_is_sent_again_by_the_tick(storage: StorageBackend, celery_app: Any) -> None:
    from pyworkflow.engine import create_run
    from pyworkflow.registry import definition_of

    # recorded as start() records it (with its start-guard timer), but the process "died"
    # before sending its activation: the tick claims the timer once it is due
    run, _ = PROCESS_LOOP.run(create_run(storage, definition_of(add_three), (20,), {}, start_guard=0.3))
    assert PROCESS_LOOP.run(storage.get_timer(run.run_id)) is not None
    with Ticker(celery_app, 0.1):
        assert wait_for_result(run.run_id, timeout=20) == 23
    assert PROCESS_LOOP.run(storage.get_timer(run.run_id)) is None
    types = [e.type for e in events_of(storage, run.run_id)]
    assert types.count("workflow.completed") == 1


def test_an_activation_that_meets_a_storage_outage_is_retried_by_its_task(tmp_path: Path) -> None:
    # No tick runs here: only the task's own retry (1 s, then 2 s) can bring the run on.
    from pyworkflow import config
    from pyworkflow.errors import StorageUnavailableError
    from pyworkflow.storage.sqlite import SQLiteStorageBackend

    class Outage(SQLiteStorageBackend):
        failures = 2

        async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise StorageUnavailableError(f"run {run_id!r}: storage unavailable: connection refused")
            return await super().begin_activation(run_id, owner, ttl, now=now)

    storage = Outage(str(tmp_path / "outage.db"))
    config.configure(storage=storage)
    try:
        run_id = start(add_three, 5)
        assert wait_for_result(run_id, timeout=30) == 8
        assert storage.failures == 0
        types = [e.type for e in events_of(storage, run_id)]
        assert types.count("step.completed") == 3 and types.count("workflow.completed") == 1
    finally:
        PROCESS_LOOP.run(storage.close())
        config.reset()


def test_started_runs_and_dispatched_steps_carry_readable_shadow_names(celery_app: Any, monkeypatch: Any) -> None:
    # Flower and `celery inspect` show a task's shadow name: the workflow, or the step.
    from pyworkflow.dispatch import Dispatch

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, **kw: sent.append({"name": name, **kw}))
    runtime = celery_app.pyworkflow
    runtime.send_activation("r1", new=True, workflow="celery.add_three")
    runtime.send_dispatch(Dispatch("r1", 2, "remote_square", "pyworkflow.steps"))
    assert [(m["name"], m["shadow"]) for m in sent] == [
        ("pyworkflow.activate", "celery.add_three"),
        ("pyworkflow.run_step", "remote_square"),
    ]


def test_wake_ups_carry_their_workflow_s_name(storage: StorageBackend, celery_app: Any) -> None:
    # A countdown hint (the worker knows the run it just suspended) and a tick's wake-up
    # (the claim reads the run's workflow) show in Flower as the workflow, too.
    runtime = celery_app.pyworkflow
    try:
        with activations_sent(runtime) as sent:
            hinted = start(sleeper, "hinted", 0.3)
            assert wait_for_result(hinted, timeout=20) == "hinted"
            runtime.settings.countdown_hint = 0.0
            ticked = start(sleeper, "ticked", 0.5)
            wait_until(lambda: (r := get_run(ticked)) is not None and r.status == "suspended", 20, "suspended")
            with Ticker(celery_app, 0.2):
                assert wait_for_result(ticked, timeout=20) == "ticked"
    finally:
        runtime.settings.countdown_hint = 10.0
    hints = [name for run_id, countdown, name in sent if run_id == hinted and countdown]
    assert hints == ["celery.sleeper"], sent
    wakes = [name for run_id, _, name in sent if run_id == ticked]
    assert wakes and set(wakes) == {"celery.sleeper"}, sent


def test_every_activation_of_a_run_s_life_is_named_after_its_workflow(storage: StorageBackend, celery_app: Any) -> None:
    # Besides a start and a wake-up: a dispatched step's end, a signal, a child started,
    # a parent told of its child's end. Flower then never shows a bare pyworkflow.activate.
    with activations_sent(celery_app.pyworkflow) as sent:
        squares = start(fanout, 3)
        assert wait_for_result(squares, timeout=30) == [0, 1, 4]
        parent = start(fan_out_children, 2)
        assert wait_for_result(parent, timeout=30) == [3, 4]
        waiting = start(approval, "o-1")
        wait_until(lambda: (r := get_run(waiting)) is not None and r.status == "suspended", 20, "waiting")
        send_signal(waiting, "decision", {"ship": True})
        assert wait_for_result(waiting, timeout=30)["shipped"] == 9
    children = {run.run_id for run in PROCESS_LOOP.run(storage.list_children(parent)).runs}
    assert len(children) == 2
    expected = {squares: "celery.fanout", parent: "celery.fan_out_children", waiting: "celery.approval"}
    expected.update(dict.fromkeys(children, "celery.add_three"))
    names = {(run_id, name) for run_id, _, name in sent if run_id in expected}
    assert names == set(expected.items()), sent
    # each kind was sent at all: several messages to the parent (its start, its children's
    # ends) and to the signalled run (its start, the signal, its step's end)
    assert sum(run_id == parent for run_id, _, _ in sent) >= 2
    assert sum(run_id == waiting for run_id, _, _ in sent) >= 3
    assert sum(run_id == squares for run_id, _, _ in sent) >= 2
