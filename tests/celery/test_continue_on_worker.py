"""Continue-as-new through a real Celery worker, on each real broker: a chain of 20 runs,
each started by the activation message its predecessor's end sends, with signals sent to
the chain's first run while it moves (they follow the chain, or move with it), none lost,
none duplicated, in order; no tick running."""

from __future__ import annotations

import time
from typing import Any

import pytest

import pyworkflow.celery.factory as factory
from pyworkflow import (
    RunStatus,
    continue_as_new,
    get_run,
    send_signal,
    start,
    wait_for_result,
    wait_for_signal,
    workflow,
)
from pyworkflow.continuation import continued_run_id
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend

LINKS = 20


@workflow(name="celery.chain_counter")
async def chain_counter(total: int, expected: int = 0) -> int:
    while expected < total:
        value = await wait_for_signal("n")
        if value != expected:
            raise ValueError(f"expected signal {expected}, got {value}")
        expected += 1
        if expected < total:
            await continue_as_new(total, expected)
    return expected


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


def _wait_for_link(first: str, index: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        run = get_run(first)
        assert run is not None
        chain = PROCESS_LOOP.run(_chain_index(run.run_id))
        if chain >= index:
            return
        assert time.monotonic() < deadline, f"the chain did not reach link {index} within {timeout}s (at {chain})"
        time.sleep(0.01)


async def _chain_index(run_id: str) -> int:
    from pyworkflow import config

    events = await config.get_storage().get_events(run_id, limit=1)
    continued = events[0].data.get("continued") if events else None
    return int(continued["index"]) if continued else 0


def test_a_chain_of_twenty_runs_with_signals_arriving_throughout(storage: StorageBackend) -> None:
    first = start(chain_counter, LINKS)
    for i in range(LINKS):
        send_signal(first, "n", i)  # to the first run: it follows the chain to its current run
        if i % 5 == 4:
            _wait_for_link(first, i - 1)  # let the chain catch up part of the way, then send more
    assert wait_for_result(first, timeout=60) == LINKS
    last = get_run(first)
    assert last is not None and last.status == RunStatus.COMPLETED
    run_id = first
    payloads: set[int] = set()
    for index in range(LINKS):
        record = PROCESS_LOOP.run(storage.get_run(run_id))
        assert record is not None
        assert record.status == (RunStatus.CONTINUED if index < LINKS - 1 else RunStatus.COMPLETED)
        for event in PROCESS_LOOP.run(storage.get_events(run_id)):
            if event.type == "signal.received":
                payloads.add(event.data["payload"])
        run_id = continued_run_id(run_id)
    assert payloads == set(range(LINKS))
    assert last.run_id == continued_run_id_n(first, LINKS - 1)


def continued_run_id_n(first: str, n: int) -> str:
    run_id = first
    for _ in range(n):
        run_id = continued_run_id(run_id)
    return run_id
