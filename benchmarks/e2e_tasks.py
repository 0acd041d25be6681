"""What ``benchmarks/celery_e2e.py`` runs on its worker subprocesses.

* PyWorkflow workflows, imported by the real app ``pyworkflow.celery.app`` through
  ``PYWORKFLOW_IMPORTS=benchmarks.e2e_tasks``: a 3-step inline workflow and a
  sleep-then-one-step workflow.
* ``raw_app``: a plain Celery app for the baseline (``celery -A
  benchmarks.e2e_tasks:raw_app worker``), configured like PyWorkflow's own app (JSON
  only, late acks, reject on worker loss, prefetch multiplier 1, the same transport
  options, its queue declared as ``pyworkflow.workflows`` is on that broker, and no
  result backend) from ``BENCH_*`` variables set by the benchmark. Its tasks report to
  the storage Redis instead of a result backend: ``drain`` counts, ``echo`` replies
  with an RPUSH the benchmark waits for with BLPOP.

The raw app is built with ``set_as_current=False``: a PyWorkflow worker imports this
module too, and must keep its own app as Celery's current one.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery
from kombu import Queue

from pyworkflow import sleep, step, workflow
from pyworkflow.celery.settings import workflow_queue_arguments

# -- PyWorkflow --------------------------------------------------------------------------


@step
async def inc(x: int) -> int:
    return x + 1


@workflow(name="bench.three_steps")
async def three_steps(x: int) -> int:
    return await inc(await inc(await inc(x)))


@step
async def touch(x: int) -> int:
    return x


@workflow(name="bench.sleep_then_step")
async def sleep_then_step(duration: str) -> int:
    await sleep(duration)
    return await touch(1)


# -- raw Celery ----------------------------------------------------------------------------

RAW_QUEUE = "bench.raw"
DRAIN_TASK = "bench.raw.drain"
ECHO_TASK = "bench.raw.echo"

RAW_BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
raw_app = Celery("bench-raw", broker=RAW_BROKER, set_as_current=False)
raw_app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600, "unacked_restore_throttle": 1},
    # no result backend, as PyWorkflow (a Redis backend costs raw Celery about a third)
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=RAW_QUEUE,
    task_queues=[Queue(RAW_QUEUE, queue_arguments=workflow_queue_arguments(RAW_BROKER))],
)

_counter_lock = threading.Lock()
_counter_client: Any = None
_counter_pid = -1


def _counter() -> Any:
    """A sync Redis client on the storage Redis (``BENCH_COUNTER_URL``), one per process."""
    global _counter_client, _counter_pid
    if _counter_pid != os.getpid():
        with _counter_lock:
            if _counter_pid != os.getpid():
                import redis

                _counter_client = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])
                _counter_pid = os.getpid()
    return _counter_client


@raw_app.task(name=DRAIN_TASK, ignore_result=True)
def drain(key: str, total: int) -> None:
    """Empty work, then one INCR of ``key``: the benchmark polls the counter, and the
    first and the last completion stamp their wall time (``key:first``/``key:last``)."""
    client = _counter()
    done = client.incr(key)
    if done == 1:
        client.set(f"{key}:first", repr(time.time()))
    if done == total:
        client.set(f"{key}:last", repr(time.time()))


@raw_app.task(name=ECHO_TASK, ignore_result=True)
def echo(key: str, x: int) -> None:
    """The round trip's reply, without a result backend: RPUSH ``x`` to ``key``."""
    _counter().rpush(key, x)
