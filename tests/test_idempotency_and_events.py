import asyncio
import threading

import pytest

from pyworkflow import get_logger, sleep, step, workflow
from pyworkflow.errors import IdempotencyConflictError
from pyworkflow.events import Event, EventType
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import run_local, start_local

log = get_logger()


@step
async def noop(x: int) -> int:
    return x


@workflow(name="idem.order")
async def order(order_id: str) -> str:
    await noop(1)
    return order_id


@workflow(name="idem.other")
async def other_workflow(order_id: str) -> str:
    return order_id


async def test_same_key_same_run(memory: InMemoryStorageBackend) -> None:
    first = await start_local(order, "ORD-1", storage=memory, idempotency_key="order-ORD-1")
    second = await start_local(order, "ORD-1", storage=memory, idempotency_key="order-ORD-1")
    assert first == second
    assert len((await memory.list_runs()).runs) == 1
    assert sum(e.type == "step.started" for e in await memory.get_events(first)) == 1
    with pytest.raises(IdempotencyConflictError, match="idem.order"):
        await start_local(other_workflow, "x", storage=memory, idempotency_key="order-ORD-1")


async def test_twenty_concurrent_starts_make_one_run(memory: InMemoryStorageBackend) -> None:
    ids = await asyncio.gather(*(start_local(order, "ORD-2", storage=memory, idempotency_key="k-2") for _ in range(20)))
    results: list[str] = []
    barrier = threading.Barrier(20)

    def in_thread() -> None:
        barrier.wait()
        results.append(asyncio.run(start_local(order, "ORD-3", storage=memory, idempotency_key="k-3")))

    threads = [threading.Thread(target=in_thread) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(set(results)) == 1 and len(results) == 20
    assert len((await memory.list_runs()).runs) == 2
    for run_id in (ids[0], results[0]):
        run = await memory.get_run(run_id)
        assert run is not None and run.status == "completed"
        assert sum(e.type == "step.started" for e in await memory.get_events(run_id)) == 1


@step(max_retries=1, retry_delay="1s")
async def flaky_once(tag: str) -> str:
    seen = _flaky.setdefault(tag, 0)
    _flaky[tag] = seen + 1
    if seen == 0:
        raise RuntimeError("first try fails")
    return tag


_flaky: dict[str, int] = {}


@step(max_retries=0)
async def doomed() -> None:
    raise ValueError("doomed")


@workflow(name="events.everything")
async def everything() -> str:
    log.debug("d")
    log.info("i", n=1)
    log.warning("w")
    log.error("e")
    await flaky_once("ev")
    await sleep("1m")
    try:
        await doomed()
    except ValueError:
        pass
    raise RuntimeError("the end")


async def test_the_sixteen_event_types(memory: InMemoryStorageBackend) -> None:
    readme_types = {
        "workflow.started",
        "workflow.completed",
        "workflow.failed",
        "workflow.suspended",
        "workflow.resumed",
        "workflow.interrupted",
        "step.started",
        "step.completed",
        "step.failed",
        "step.retrying",
        "sleep.created",
        "sleep.completed",
        "log.info",
        "log.warning",
        "log.error",
        "log.debug",
    }
    assert len(readme_types) == 16
    # the Celery runtime's, recorded now()/uuid4()/random(), and inbox messages of other kinds
    later = {"step.dispatched", "value.recorded", "message.received"}
    # signals, published state and webhooks; cancellation
    later |= {"signal.received", "signal.waiting", "signal.timed_out", "state.set", "webhook.created"}
    later |= {"cancel.requested", "call.cancelled", "workflow.cancelled"}
    later |= {"pause.requested", "pause.lifted", "workflow.paused", "patch.marked"}
    later |= {"workflow.blocked", "workflow.retried", "child.started", "child.completed"}
    later |= {"workflow.continued", "messages.inherited"}
    assert {t.value for t in EventType} == readme_types | later
    run_id = await run_local(everything, storage=memory)
    ok = await run_local(order, "x", storage=memory)
    events = await memory.get_events(run_id) + await memory.get_events(ok)
    seen = {e.type for e in events}
    expected = readme_types - {"workflow.interrupted"}  # proved by the crash tests
    assert expected <= seen
    mine = await memory.get_events(run_id)
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    assert all(e.timestamp.tzinfo is not None and isinstance(e.data, dict) and e.v == 1 for e in mine)


def test_events_are_versioned_and_tolerate_unknown_types() -> None:
    raw = '{"seq": 3, "type": "signal.received", "timestamp": "2030-01-01T00:00:00Z", "data": {"x": 1}, "v": 2}'
    event = Event.from_json(raw)
    assert event.type == "signal.received" and event.v == 2
    old = Event.from_json('{"seq": 1, "type": "workflow.started", "timestamp": "2030-01-01T00:00:00Z"}')
    assert old.v == 1 and old.data == {}
    assert Event.from_json(event.to_json()) == event


def test_trusted_construction_matches_validation() -> None:
    from datetime import datetime, timezone

    from pyworkflow.events import trusted
    from pyworkflow.storage.base import Lease, RunStatus, WorkflowRun

    now = datetime.now(timezone.utc)
    assert Event.new(3, "x", now, {"a": [1]}) == Event(seq=3, type="x", timestamp=now, data={"a": [1]})
    values = {
        "run_id": "r",
        "workflow_name": "w",
        "status": RunStatus.PENDING,
        "input": {"args": []},
        "result": None,
        "error": None,
        "idempotency_key": None,
        "created_at": now,
        "updated_at": now,
        "completed_at": None,
        "deadline": None,
        "wake_at": None,
        "parent_run_id": None,
    }
    built = trusted(WorkflowRun, dict(values))
    assert built == WorkflowRun(**values)
    assert built.model_dump_json() == WorkflowRun(**values).model_dump_json()
    assert set(values) == set(WorkflowRun.model_fields), "trusted() needs every field"
    lease = {"run_id": "r", "owner": "o", "token": "t", "expires_at": 1.0}
    assert trusted(Lease, dict(lease)) == Lease(**lease)


def test_trusted_models_copy_like_validated_ones() -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    event = Event.new(1, "x", now, {})
    assert event.model_copy(update={"seq": 2}).seq == 2 and event.seq == 1


def test_trusted_models_share_a_fields_set_that_nothing_changes() -> None:
    from datetime import datetime, timezone

    from pyworkflow.events import trusted
    from pyworkflow.storage.base import Lease

    now = datetime.now(timezone.utc)
    first, second = Event.new(1, "x", now, {}), Event.new(2, "y", now, {"a": 1})
    shared = set(first.model_fields_set)
    assert shared == set(Event.model_fields) and first.model_fields_set is second.model_fields_set
    copied = first.model_copy(update={"seq": 3})
    assert copied.seq == 3 and copied.model_fields_set is not first.model_fields_set
    lease = trusted(Lease, {"run_id": "r", "owner": "o", "token": "t", "expires_at": 1.0})
    lease.expires_at = 2.0  # a mutable model's assignment adds a name it already has
    assert first.model_fields_set == shared and lease.model_fields_set == set(Lease.model_fields)
    assert lease == Lease(run_id="r", owner="o", token="t", expires_at=2.0)
