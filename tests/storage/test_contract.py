"""The storage contract (pyworkflow/storage/base.py), proved against every backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest

from pyworkflow.errors import LeaseLostError, RunNotFoundError, SequenceConflictError
from pyworkflow.events import Event
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun, new_run_id

T = TypeVar("T")
UTC = timezone.utc


def make_run(
    workflow: str = "wf", key: str | None = None, created_at: datetime | None = None, **extra: Any
) -> WorkflowRun:
    now = created_at or datetime.now(UTC)
    return WorkflowRun(
        run_id=new_run_id(),
        workflow_name=workflow,
        input={"args": [1, "x"], "kwargs": {"k": {"nested": [1.5, None, True]}}},
        idempotency_key=key,
        created_at=now,
        updated_at=now,
        **extra,
    )


def ev(seq: int, type: str = "step.completed", **data: Any) -> Event:
    return Event(seq=seq, type=type, timestamp=datetime.now(UTC), data=data)


async def new_run(storage: StorageBackend, **kw: Any) -> WorkflowRun:
    run, created = await storage.create_run(make_run(**kw), [ev(1, "workflow.started")])
    assert created
    return run


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def in_threads(
    n: int, make_backend: Callable[[], StorageBackend], work: Callable[[StorageBackend, int], Awaitable[T]]
) -> list[T | BaseException]:
    """Run ``work`` in ``n`` threads at once, each with its own event loop and backend."""
    barrier = threading.Barrier(n)
    results: list[T | BaseException] = [RuntimeError("not run")] * n

    def target(i: int) -> None:
        async def main() -> T:
            backend = make_backend()
            try:
                barrier.wait(timeout=30)
                return await work(backend, i)
            finally:
                await backend.close()

        try:
            results[i] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


# -- runs ------------------------------------------------------------------------------


async def test_create_and_get_run(storage: StorageBackend) -> None:
    run = await new_run(storage, key=None)
    got = await storage.get_run(run.run_id)
    assert got is not None
    assert got.run_id == run.run_id
    assert got.workflow_name == "wf"
    assert got.status == RunStatus.PENDING == "pending"
    assert got.input == {"args": [1, "x"], "kwargs": {"k": {"nested": [1.5, None, True]}}}
    assert got.created_at.tzinfo is not None
    assert abs((got.created_at - run.created_at).total_seconds()) < 0.001
    assert await storage.get_run("no-such-run") is None
    events = await storage.get_events(run.run_id)
    assert [(e.seq, e.type) for e in events] == [(1, "workflow.started")]


async def test_idempotency_key_returns_existing_run(storage: StorageBackend) -> None:
    first = await new_run(storage, key="order-1")
    again, created = await storage.create_run(make_run(key="order-1"), [ev(1, "workflow.started")])
    assert not created
    assert again.run_id == first.run_id
    assert len(await storage.get_events(first.run_id)) == 1
    other, created = await storage.create_run(make_run(key="order-2"), [])
    assert created and other.run_id != first.run_id


async def test_duplicate_run_id_is_refused(storage: StorageBackend) -> None:
    run = await new_run(storage)
    with pytest.raises(ValueError):
        await storage.create_run(run, [])


async def test_update_run(storage: StorageBackend) -> None:
    run = await new_run(storage)
    done = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    updated = await storage.update_run(run.run_id, status=RunStatus.COMPLETED, result={"ok": [1, 2]}, completed_at=done)
    assert updated.status == "completed"
    got = await storage.get_run(run.run_id)
    assert got is not None
    assert got.status == RunStatus.COMPLETED
    assert got.result == {"ok": [1, 2]}
    assert got.completed_at == done
    assert got.updated_at >= run.updated_at
    with pytest.raises(ValueError, match="workflow_name"):
        await storage.update_run(run.run_id, workflow_name="other")
    with pytest.raises(RunNotFoundError):
        await storage.update_run("missing", status="failed")


async def test_list_runs_filters_and_paginates(storage: StorageBackend) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    made = []
    for i in range(25):
        wf = "alpha" if i % 2 else "beta"
        run = await new_run(storage, workflow=wf, created_at=base + timedelta(minutes=i))
        if i % 3 == 0:
            await storage.update_run(run.run_id, status="completed")
        made.append(run)

    seen: list[str] = []
    cursor = None
    while True:
        page = await storage.list_runs(limit=7, cursor=cursor)
        seen += [r.run_id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [r.run_id for r in reversed(made)], "newest first, every run exactly once"

    alpha = await storage.list_runs(workflow_name="alpha", limit=100)
    assert {r.run_id for r in alpha.runs} == {r.run_id for i, r in enumerate(made) if i % 2}
    completed = await storage.list_runs(status=RunStatus.COMPLETED, limit=100)
    assert {r.run_id for r in completed.runs} == {r.run_id for i, r in enumerate(made) if i % 3 == 0}
    both = await storage.list_runs(status="completed", workflow_name="beta", limit=100)
    assert {r.run_id for r in both.runs} == {r.run_id for i, r in enumerate(made) if i % 6 == 0}
    window = await storage.list_runs(
        created_after=base + timedelta(minutes=4), created_before=base + timedelta(minutes=9), limit=100
    )
    assert [r.run_id for r in window.runs] == [made[i].run_id for i in range(8, 4, -1)]
    assert (await storage.list_runs(workflow_name="nobody")).runs == []


async def test_delete_run_removes_everything(storage: StorageBackend) -> None:
    run = await new_run(storage, key="k-del")
    await storage.update_run(run.run_id, wake_at=datetime.now(UTC))
    await storage.post_message(run.run_id, "signal", {"x": 1}, idempotency_key="once")
    lease = await storage.acquire_lease(run.run_id, "w", 30)
    assert lease is not None
    assert await storage.delete_run(run.run_id)
    assert await storage.get_messages(run.run_id, pending_only=False) == []
    assert await storage.get_run(run.run_id) is None
    assert await storage.get_events(run.run_id) == []
    assert await storage.get_timer(run.run_id) is None
    assert not await storage.delete_run(run.run_id)
    fresh, created = await storage.create_run(make_run(key="k-del"), [])
    assert created and fresh.run_id != run.run_id


async def test_prune_runs(storage: StorageBackend) -> None:
    old_done = await new_run(storage)
    await storage.update_run(old_done.run_id, status="completed")
    old_running = await new_run(storage)
    await storage.update_run(old_running.run_id, status="running")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    assert await storage.prune_runs(older_than=cutoff) == 1
    assert await storage.get_run(old_done.run_id) is None
    assert await storage.get_run(old_running.run_id) is not None
    assert await storage.prune_runs(older_than=datetime.now(UTC) - timedelta(days=1)) == 0


# -- events ----------------------------------------------------------------------------


async def test_append_and_read_events(storage: StorageBackend) -> None:
    run = await new_run(storage)
    payload = {"text": 'héllo ✓ \n"quoted"', "n": [1, 2.5, None, {"deep": True}]}
    await storage.append_events(run.run_id, [ev(2, "step.started", call_id=1), ev(3, "step.completed", **payload)])
    await storage.append_events(run.run_id, [ev(4, "workflow.completed")])
    events = await storage.get_events(run.run_id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[2].data == payload
    assert events[2].type == "step.completed"
    assert all(e.timestamp.tzinfo is not None for e in events)
    assert [e.seq for e in await storage.get_events(run.run_id, after_seq=2)] == [3, 4]
    assert [e.seq for e in await storage.get_events(run.run_id, after_seq=1, limit=2)] == [2, 3]
    assert await storage.get_events(run.run_id, after_seq=4) == []


async def test_append_conflict_writes_nothing(storage: StorageBackend) -> None:
    run = await new_run(storage)
    await storage.append_events(run.run_id, [ev(2)])
    for stale in ([ev(2), ev(3)], [ev(4)], [ev(1)]):
        with pytest.raises(SequenceConflictError) as info:
            await storage.append_events(run.run_id, stale, run_changes={"status": "failed"})
        assert info.value.actual == 2
    assert [e.seq for e in await storage.get_events(run.run_id)] == [1, 2]
    got = await storage.get_run(run.run_id)
    assert got is not None and got.status == "pending"


async def test_append_bad_batch_is_refused(storage: StorageBackend) -> None:
    run = await new_run(storage)
    with pytest.raises(ValueError):
        await storage.append_events(run.run_id, [ev(2), ev(4)])
    with pytest.raises(ValueError):
        await storage.append_events(run.run_id, [])
    with pytest.raises(ValueError):
        await storage.append_events(run.run_id, [ev(2)], run_changes={"workflow_name": "x"})
    assert len(await storage.get_events(run.run_id)) == 1


async def test_append_to_missing_run(storage: StorageBackend) -> None:
    with pytest.raises(RunNotFoundError):
        await storage.append_events("missing", [ev(1)])


async def test_append_applies_run_changes(storage: StorageBackend) -> None:
    run = await new_run(storage)
    wake = datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    await storage.append_events(
        run.run_id, [ev(2, "workflow.suspended")], run_changes={"status": "suspended", "wake_at": wake}
    )
    got = await storage.get_run(run.run_id)
    assert got is not None and got.status == "suspended" and got.wake_at == wake
    await storage.append_events(
        run.run_id,
        [ev(3, "workflow.failed")],
        run_changes={
            "status": RunStatus.FAILED,
            "wake_at": None,
            "error": {"type": "E", "message": "m", "traceback": "t"},
        },
    )
    got = await storage.get_run(run.run_id)
    assert got is not None and got.status == "failed" and got.wake_at is None
    assert got.error == {"type": "E", "message": "m", "traceback": "t"}


async def test_many_events_read_back_in_order(storage: StorageBackend) -> None:
    run = await new_run(storage)
    seq = 1
    for _ in range(50):
        batch = [ev(seq + 1, "step.started"), ev(seq + 2, "step.completed", result=seq)]
        await storage.append_events(run.run_id, batch)
        seq += 2
    events = await storage.get_events(run.run_id)
    assert [e.seq for e in events] == list(range(1, seq + 1))


# -- timers ----------------------------------------------------------------------------


async def test_timer_follows_wake_at(storage: StorageBackend) -> None:
    run = await new_run(storage)
    t1 = datetime(2030, 1, 1, tzinfo=UTC)
    await storage.update_run(run.run_id, status="suspended", wake_at=t1)
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and timer.wake_at == t1
    t2 = t1 + timedelta(hours=1)
    await storage.append_events(run.run_id, [ev(2, "workflow.suspended")], run_changes={"wake_at": t2})
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and timer.wake_at == t2
    assert (await storage.get_run(run.run_id)).wake_at == t2  # type: ignore[union-attr]
    await storage.update_run(run.run_id, wake_at=None)
    assert await storage.get_timer(run.run_id) is None
    await storage.update_run(run.run_id, wake_at=t1)
    await storage.append_events(run.run_id, [ev(3, "workflow.completed")], run_changes={"status": "completed"})
    assert await storage.get_timer(run.run_id) is None  # a finished run never wakes


async def test_claim_due_timers(storage: StorageBackend) -> None:
    now = datetime(2030, 1, 1, 12, tzinfo=UTC)
    due, future = await new_run(storage), await new_run(storage)
    earlier = await new_run(storage)
    await storage.update_run(due.run_id, wake_at=now - timedelta(seconds=1))
    await storage.update_run(earlier.run_id, wake_at=now - timedelta(minutes=5))
    await storage.update_run(future.run_id, wake_at=now + timedelta(seconds=1))

    claimed = await storage.claim_due_timers(now, redeliver_after=30)
    assert [t.run_id for t in claimed] == [earlier.run_id, due.run_id]
    assert claimed[1].wake_at == now - timedelta(seconds=1)
    assert await storage.claim_due_timers(now) == []
    moved = await storage.get_timer(due.run_id)
    assert moved is not None and moved.wake_at == now + timedelta(seconds=30)
    assert (await storage.get_run(due.run_id)).wake_at == now - timedelta(seconds=1)  # type: ignore[union-attr]
    again = await storage.claim_due_timers(now + timedelta(seconds=31))
    assert {t.run_id for t in again} == {due.run_id, earlier.run_id, future.run_id}

    await storage.update_run(due.run_id, wake_at=now)
    limited = await storage.claim_due_timers(now + timedelta(hours=1), limit=1)
    assert [t.run_id for t in limited] == [due.run_id]


# -- leases ----------------------------------------------------------------------------


async def test_lease_acquire_renew_release(storage: StorageBackend) -> None:
    run = await new_run(storage)
    lease = await storage.acquire_lease(run.run_id, "worker-a", 30)
    assert lease is not None and lease.owner == "worker-a" and not lease.expired
    assert await storage.acquire_lease(run.run_id, "worker-b", 30) is None
    renewed = await storage.renew_lease(lease, 60)
    assert renewed is not None and renewed.token == lease.token and renewed.expires_at > lease.expires_at
    await storage.append_events(run.run_id, [ev(2)], lease_token=lease.token)
    await storage.release_lease(lease)
    assert await storage.renew_lease(lease, 30) is None
    with pytest.raises(LeaseLostError):
        await storage.append_events(run.run_id, [ev(3)], lease_token=lease.token)
    other = await storage.acquire_lease(run.run_id, "worker-b", 30)
    assert other is not None and other.token != lease.token
    await storage.release_lease(lease)  # a stale release must not free another holder's lease
    assert await storage.acquire_lease(run.run_id, "worker-c", 30) is None


async def test_expired_lease_is_taken_over_and_old_holder_fenced(storage: StorageBackend) -> None:
    run = await new_run(storage)
    old = await storage.acquire_lease(run.run_id, "old", 0.2)
    assert old is not None
    new = None

    async def taken() -> bool:
        nonlocal new
        new = await storage.acquire_lease(run.run_id, "new", 30)
        return new is not None

    await wait_for(taken)
    assert new is not None
    with pytest.raises(LeaseLostError):
        await storage.append_events(run.run_id, [ev(2)], lease_token=old.token)
    assert await storage.renew_lease(old, 30) is None
    await storage.append_events(run.run_id, [ev(2)], lease_token=new.token)
    assert [e.seq for e in await storage.get_events(run.run_id)] == [1, 2]


async def test_recover_expired_leases_makes_due_timers(storage: StorageBackend) -> None:
    run, live = await new_run(storage), await new_run(storage)
    old = await storage.acquire_lease(run.run_id, "crashed", 0.2)
    held = await storage.acquire_lease(live.run_id, "alive", 60)
    assert old is not None and held is not None
    recovered: list[str] = []

    async def expired() -> bool:
        recovered.extend(await storage.recover_expired_leases())
        return bool(recovered)

    await wait_for(expired)
    assert recovered == [run.run_id]
    assert await storage.recover_expired_leases() == []
    claimed = await storage.claim_due_timers(datetime.now(UTC) + timedelta(seconds=1))
    assert [t.run_id for t in claimed] == [run.run_id]
    with pytest.raises(LeaseLostError):
        await storage.append_events(run.run_id, [ev(2)], lease_token=old.token)
    assert await storage.acquire_lease(run.run_id, "next", 30) is not None


# -- concurrency: several event loops, each with its own client --------------------------


async def test_concurrent_creates_with_one_key_make_one_run(make_backend: Callable[[], StorageBackend]) -> None:
    async def start(backend: StorageBackend, i: int) -> tuple[str, bool]:
        run, created = await backend.create_run(make_run(key="same-key"), [ev(1, "workflow.started")])
        return run.run_id, created

    results = await asyncio.to_thread(in_threads, 20, make_backend, start)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert len({r[0] for r in results}) == 1  # type: ignore[index]
    assert sum(r[1] for r in results) == 1  # type: ignore[index]
    storage = make_backend()
    try:
        page = await storage.list_runs(limit=100)
        assert len(page.runs) == 1
        assert len(await storage.get_events(page.runs[0].run_id)) == 1
    finally:
        await storage.close()


async def test_racing_appends_on_one_seq_have_one_winner(make_backend: Callable[[], StorageBackend]) -> None:
    storage = make_backend()
    try:
        run = await new_run(storage)
        await storage.append_events(run.run_id, [ev(2), ev(3)])
    finally:
        await storage.close()

    async def append(backend: StorageBackend, i: int) -> bool:
        try:
            await backend.append_events(
                run.run_id, [ev(4, "step.completed", writer=i), ev(5, "step.started", writer=i)]
            )
            return True
        except SequenceConflictError:
            return False

    results = await asyncio.to_thread(in_threads, 50, make_backend, append)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert results.count(True) == 1
    winner = results.index(True)
    storage = make_backend()
    try:
        events = await storage.get_events(run.run_id)
    finally:
        await storage.close()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[3].data == {"writer": winner} and events[4].data == {"writer": winner}


async def test_two_tickers_claim_each_timer_once(make_backend: Callable[[], StorageBackend]) -> None:
    now = datetime.now(UTC)
    storage = make_backend()
    try:
        runs = [await new_run(storage) for _ in range(60)]
        for i, run in enumerate(runs):
            await storage.update_run(run.run_id, wake_at=now - timedelta(seconds=i))
    finally:
        await storage.close()

    async def tick(backend: StorageBackend, i: int) -> list[str]:
        claimed: list[str] = []
        while batch := await backend.claim_due_timers(now, limit=7):
            claimed += [t.run_id for t in batch]
        return claimed

    results = await asyncio.to_thread(in_threads, 4, make_backend, tick)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    every = [run_id for claimed in results for run_id in claimed]  # type: ignore[union-attr]
    assert sorted(every) == sorted(r.run_id for r in runs)


async def test_racing_lease_acquires_have_one_winner(make_backend: Callable[[], StorageBackend]) -> None:
    storage = make_backend()
    try:
        run = await new_run(storage)
    finally:
        await storage.close()

    async def grab(backend: StorageBackend, i: int) -> bool:
        return await backend.acquire_lease(run.run_id, f"w{i}", 30) is not None

    results = await asyncio.to_thread(in_threads, 10, make_backend, grab)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results.count(True) == 1
