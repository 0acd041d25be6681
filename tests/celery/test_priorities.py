"""Ticks and wake-ups go ahead of new runs on both brokers: Redis (0 is consumed first)
and RabbitMQ (the higher number first, from a queue declared with x-max-priority)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue

import pyworkflow.celery.factory as factory
from pyworkflow.celery import Settings, create_app
from pyworkflow.celery.settings import (
    AMQP_MAX_PRIORITY,
    WORKFLOW_QUEUE,
    broker_kind,
    priority_for,
    workflow_queue_arguments,
)
from pyworkflow.errors import ConfigurationError
from tests.celery import prerun_log
from tests.celery.conftest import Broker, RabbitVhost, Subprocess, wait_until

BURST = 20


def test_one_mapping_orders_tick_wake_new_on_each_broker() -> None:
    url: object
    for url in ("redis://h:6379/0", "rediss://h/0", "redis+socket:///tmp/r.sock", "sentinel://h:26379"):
        tick, wake, new = (priority_for(url, kind) for kind in ("tick", "wake", "new"))
        assert tick is not None and wake is not None and new is not None
        assert tick < wake < new, url  # Redis: 0 first
        assert workflow_queue_arguments(url) is None
    for url in ("amqp://guest:guest@h:5672/vh", "amqps://h//", "pyamqp://h", ["amqp://a//", "amqp://b//"]):
        tick, wake, new = (priority_for(url, kind) for kind in ("tick", "wake", "new"))
        assert tick is not None and wake is not None and new is not None
        assert tick > wake > new >= 0 and tick <= AMQP_MAX_PRIORITY, url  # AMQP: highest first
        assert workflow_queue_arguments(url) == {"x-max-priority": AMQP_MAX_PRIORITY}
    assert broker_kind("amqp://a//;amqp://b//") == "amqp"
    for url in ("filesystem://", "memory://", "sqs://", "", None):
        assert priority_for(url, "wake") is None and workflow_queue_arguments(url) is None


@pytest.fixture
def app(own_broker: Broker) -> Iterator[Any]:
    previous = factory._installed
    app = create_app("pyworkflow-priorities", settings=Settings(broker_url=own_broker.url))
    yield app
    factory._installed = previous


def queued(app: Any) -> int:
    """Messages waiting in ``pyworkflow.workflows`` (declared as the app declares it)."""
    with app.connection_for_read() as conn:
        return int(app.amqp.queues[WORKFLOW_QUEUE].bind(conn.default_channel).queue_declare(passive=True).message_count)


def send_burst_then_wake_up(app: Any) -> None:
    """A burst of new runs queued first, then one wake-up, then a tick."""
    runtime = app.pyworkflow
    for i in range(BURST):
        runtime.send_activation(f"new-{i}", new=True)
    runtime.send_activation("woken")
    app.send_task("pyworkflow.tick", **app.conf.beat_schedule["pyworkflow.tick"]["options"])
    # publishers do not wait for the broker: see every message queued before consuming
    wait_until(lambda: queued(app) == BURST + 2, 10, "all messages queued")


def test_the_broker_hands_out_ticks_and_wake_ups_before_new_runs(app: Any) -> None:
    send_burst_then_wake_up(app)
    order = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.amqp.queues[WORKFLOW_QUEUE])
        for _ in range(BURST + 2):
            message = queue.get(timeout=5)
            order.append(message.headers["task"] + ":" + ",".join(message.payload[0]))
            message.ack()
        queue.close()
    assert order[0] == "pyworkflow.tick:"
    assert order[1] == "pyworkflow.activate:woken"
    assert order[2:] == [f"pyworkflow.activate:new-{i}" for i in range(BURST)]


def test_a_worker_runs_the_wake_up_before_a_backlog_of_new_runs(
    app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    """A real worker (one process, prefetch 1, late acks) started on a backlog. It runs as
    a subprocess: a second worker in this process would share Celery's stop flag with the
    session's in-process worker, and stopping one would stop both."""
    ran = tmp_path / "ran.log"
    send_burst_then_wake_up(app)
    worker = spawn(
        "worker",
        "--pool=solo",
        PYWORKFLOW_IMPORTS=f"tests.celery_workflows,{prerun_log.IMPORTS}",
        **{prerun_log.LOG_ENV: str(ran)},
    )

    def lines() -> list[str]:
        return ran.read_text().splitlines() if ran.exists() else []

    wait_until(lambda: len(lines()) >= BURST + 2 or worker.proc.poll() is not None, 60, "the backlog consumed")
    order, log = lines(), worker.log.read_text(errors="replace")[-3000:]
    assert order[:2] == ["pyworkflow.tick:", "pyworkflow.activate:woken"], log
    assert order[2:] == [f"pyworkflow.activate:new-{i}" for i in range(BURST)]


@pytest.mark.parametrize("own_broker", ["amqp"], indirect=True, ids=["amqp_broker"])
def test_a_queue_left_without_priorities_is_explained(
    own_broker: RabbitVhost, crash_app: Any, spawn: Callable[..., Subprocess], tmp_path: Path
) -> None:
    """An older PyWorkflow declared pyworkflow.workflows without x-max-priority: RabbitMQ
    refuses our declaration (406); clients and workers say what to do instead."""
    with Connection(own_broker.url) as conn:
        Queue(WORKFLOW_QUEUE, durable=True)(conn.default_channel).declare()
    with pytest.raises(
        ConfigurationError, match=f"x-max-priority.*delete_queue -p {own_broker.vhost} pyworkflow.workflows"
    ):
        crash_app.pyworkflow.send_activation("some-run", new=True)

    worker = spawn("worker")
    wait_until(lambda: worker.proc.poll() is not None, 60, "the worker exits")
    log = worker.log.read_text(errors="replace")
    assert f"delete_queue -p {own_broker.vhost} pyworkflow.workflows" in log, log[-3000:]
