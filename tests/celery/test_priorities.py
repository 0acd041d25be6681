"""On a Redis broker, wake-ups are consumed before a backlog of new runs."""

from __future__ import annotations

from typing import Any

import pyworkflow.celery.factory as factory
from pyworkflow.celery import Settings, create_app
from tests.celery.conftest import RedisServer


def test_wake_ups_and_ticks_go_ahead_of_new_runs(own_broker: RedisServer) -> None:
    previous = factory._installed
    try:
        app = create_app("pyworkflow-priorities", settings=Settings(broker_url=own_broker.url))
        runtime: Any = app.pyworkflow
        for i in range(5):
            runtime.send_activation(f"new-{i}", new=True)
        runtime.send_activation("woken")
        app.send_task("pyworkflow.tick", **app.conf.beat_schedule["pyworkflow.tick"]["options"])
        order = []
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue("pyworkflow.workflows")
            for _ in range(7):
                message = queue.get(timeout=5)
                order.append(message.headers["task"] + ":" + ",".join(message.payload[0]))
                message.ack()
            queue.close()
    finally:
        factory._installed = previous
    assert order[0] == "pyworkflow.tick:"
    assert order[1] == "pyworkflow.activate:woken"
    assert order[2:] == [f"pyworkflow.activate:new-{i}" for i in range(5)]
