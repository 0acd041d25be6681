"""The storage contract, part 2: the run inbox, earliest-wins timers, one-call activation
and the shared validation rules, proved against every backend (several processes where
the backend is shared between processes)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pyworkflow.errors import LeaseLostError, RunFinishedError, RunNotFoundError, SequenceConflictError
from pyworkflow.storage.base import StorageBackend
from tests.storage.conftest import Spec, open_spec
from tests.storage.test_contract import ev, new_run

UTC = timezone.utc
LATER = datetime(2099, 1, 1, tzinfo=UTC)


async def suspend(storage: StorageBackend, run_id: str, wake_at: datetime) -> None:
    await storage.update_run(run_id, status="suspended", wake_at=wake_at)


async def activate(storage: StorageBackend, run_id: str, owner: str = "w", ttl: float = 30) -> Any:
    return await storage.begin_activation(run_id, owner, ttl, now=datetime.now(UTC))


# -- posting ---------------------------------------------------------------------------


async def test_post_stores_in_order_and_makes_due_now(storage: StorageBackend) -> None:
    run = await new_run(storage)
    await suspend(storage, run.run_id, LATER)
    before = datetime.now(UTC)
    first = await storage.post_message(run.run_id, "signal", {"name": "go", "value": [1, "é", None]})
    second = await storage.post_message(run.run_id, "cancel")
    assert first == f"{run.run_id}:1" and second == f"{run.run_id}:2"
    pending = await storage.get_messages(run.run_id)
    assert [(m.seq, m.kind, m.payload) for m in pending] == [
        (1, "signal", {"name": "go", "value": [1, "é", None]}),
        (2, "cancel", None),
    ]
    assert all(not m.consumed and m.posted_at >= before - timedelta(seconds=1) for m in pending)
    after = datetime.now(UTC)
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and timer.wake_at <= after
    record = await storage.get_run(run.run_id)
    assert record is not None and record.wake_at is not None and record.wake_at <= after


async def test_a_run_suspended_without_a_wake_time_waits_for_a_message(storage: StorageBackend) -> None:
    # A signal wait without a timeout: nothing is due, nothing wakes it but a message.
    run = await new_run(storage)
    await storage.update_run(run.run_id, status="suspended", wake_at=None)
    assert (await activate(storage, run.run_id)).status == "not_due"
    assert await storage.claim_due_timers(datetime.now(UTC) + timedelta(days=365)) == []
    before = datetime.now(UTC)
    await storage.post_message(run.run_id, "signal", {"name": "go", "payload": 1})
    record = await storage.get_run(run.run_id)
    assert record is not None and record.wake_at is not None and before - timedelta(seconds=1) <= record.wake_at
    assert [t.run_id for t in await storage.claim_due_timers(datetime.now(UTC))] == [run.run_id]
    begun = await activate(storage, run.run_id)
    assert begun.status == "leased" and [m.kind for m in begun.messages] == ["signal"]


async def test_a_new_run_with_a_wake_time_has_a_start_guard_timer(storage: StorageBackend) -> None:
    # start() records a run with wake_at = now + start guard: if no activation ever runs
    # it (its first message was lost), the tick claims that timer once and sends one; the
    # first activation's append clears it.
    guard = datetime.now(UTC) + timedelta(seconds=30)
    run = await new_run(storage, wake_at=guard)
    other = await new_run(storage)  # no wake time, no timer
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and abs((timer.wake_at - guard).total_seconds()) < 0.001
    assert await storage.get_timer(other.run_id) is None
    assert await storage.claim_due_timers(datetime.now(UTC)) == []
    claimed = await storage.claim_due_timers(guard + timedelta(seconds=1))
    assert [t.run_id for t in claimed] == [run.run_id]
    begun = await activate(storage, run.run_id)
    assert begun.status == "leased"
    await storage.append_events(
        run.run_id,
        [ev(2, "workflow.completed")],
        lease_token=begun.lease.token,
        run_changes={"status": "completed", "wake_at": None},
        release_lease=True,
    )
    assert await storage.get_timer(run.run_id) is None


async def test_begin_activation_says_when_it_took_an_expired_lease_over(storage: StorageBackend) -> None:
    # A holder that let its lease expire without releasing it died: the activation that
    # takes the lease over is told, so it counts the dead attempt (as the tick's recovery
    # does). A released lease, or none, is no takeover.
    fresh = await new_run(storage)
    begun = await activate(storage, fresh.run_id)
    assert begun.status == "leased" and begun.took_over is False
    await storage.release_lease(begun.lease)
    again = await activate(storage, fresh.run_id)
    assert again.status == "leased" and again.took_over is False

    dead = await new_run(storage)
    assert await storage.acquire_lease(dead.run_id, "dead-worker", 0.05) is not None
    assert (await activate(storage, dead.run_id)).status == "busy"
    deadline = time.monotonic() + 5
    while (begun := await activate(storage, dead.run_id)).status == "busy":  # the lease runs out
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert begun.status == "leased" and begun.took_over is True


async def test_post_with_a_used_key_is_a_no_op(storage: StorageBackend) -> None:
    run = await new_run(storage)
    first = await storage.post_message(run.run_id, "step", {"n": 1}, idempotency_key="step:3:1")
    again = await storage.post_message(run.run_id, "step", {"n": 2}, idempotency_key="step:3:1")
    other = await storage.post_message(run.run_id, "step", {"n": 3}, idempotency_key="step:3:2")
    assert again == first != other
    assert [m.payload for m in await storage.get_messages(run.run_id)] == [{"n": 1}, {"n": 3}]
    # keys are per run
    run2 = await new_run(storage)
    assert await storage.post_message(run2.run_id, "step", {}, idempotency_key="step:3:1") == f"{run2.run_id}:1"


async def test_post_to_unknown_or_finished_run_is_refused(storage: StorageBackend) -> None:
    with pytest.raises(RunNotFoundError):
        await storage.post_message("no-such-run", "signal", {})
    run = await new_run(storage)
    key = await storage.post_message(run.run_id, "signal", 1, idempotency_key="k")
    await storage.update_run(run.run_id, status="completed")
    with pytest.raises(RunFinishedError) as info:
        await storage.post_message(run.run_id, "signal", 2)
    assert "completed" in str(info.value)
    # a repeat of a message that made it in is still answered with its id
    assert await storage.post_message(run.run_id, "signal", 1, idempotency_key="k") == key
    assert len(await storage.get_messages(run.run_id, pending_only=False)) == 1


@pytest.mark.parametrize(
    ("kind", "payload", "key", "words"),
    [
        ("", None, None, "kind"),
        (7, None, None, "kind"),
        ("x" * 201, None, None, "kind"),
        ("signal", {"bad": object()}, None, "JSON"),
        ("signal", float("nan"), None, "JSON"),
        ("signal", None, "", "idempotency_key"),
        ("signal", None, 5, "idempotency_key"),
    ],
)
async def test_post_bad_message_is_refused_and_nothing_stored(
    storage: StorageBackend, kind: Any, payload: Any, key: Any, words: str
) -> None:
    run = await new_run(storage)
    with pytest.raises(ValueError, match=words):
        await storage.post_message(run.run_id, kind, payload, idempotency_key=key)
    assert await storage.get_messages(run.run_id, pending_only=False) == []


# -- earliest wins -----------------------------------------------------------------------


async def test_message_during_suspend_leaves_the_run_due_now(storage: StorageBackend) -> None:
    run = await new_run(storage)
    got = await activate(storage, run.run_id)
    assert got.status == "leased"
    await storage.post_message(run.run_id, "signal", "arrived while the run recorded a sleep")
    await storage.append_events(
        run.run_id,
        [ev(2, "workflow.suspended")],
        lease_token=got.lease.token,
        run_changes={"status": "suspended", "wake_at": datetime.now(UTC) + timedelta(days=1)},
        release_lease=True,
    )
    record = await storage.get_run(run.run_id)
    timer = await storage.get_timer(run.run_id)
    assert record is not None and record.wake_at is not None and record.wake_at <= datetime.now(UTC)
    assert timer is not None and timer.wake_at <= datetime.now(UTC)
    again = await activate(storage, run.run_id)
    assert again.status == "leased" and [m.seq for m in again.messages] == [1]


async def test_consumed_messages_do_not_keep_the_run_due(storage: StorageBackend) -> None:
    run = await new_run(storage)
    await storage.post_message(run.run_id, "signal", 1)
    await storage.post_message(run.run_id, "signal", 2)
    got = await activate(storage, run.run_id)
    assert [m.payload for m in got.messages] == [1, 2]
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    await storage.append_events(
        run.run_id,
        [ev(2, "message.received", message=1), ev(3, "message.received", message=2), ev(4, "workflow.suspended")],
        lease_token=got.lease.token,
        run_changes={"status": "suspended", "wake_at": tomorrow},
        consume=[1, 2],
        release_lease=True,
    )
    assert await storage.get_messages(run.run_id) == []
    assert [m.consumed for m in await storage.get_messages(run.run_id, pending_only=False)] == [True, True]
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and timer.wake_at == tomorrow
    assert (await activate(storage, run.run_id)).status == "not_due"
    # the lease was released by the append: another owner may take the run at once
    await storage.post_message(run.run_id, "signal", 3)
    assert (await activate(storage, run.run_id, owner="other")).status == "leased"


async def test_two_posts_and_a_tick_claim(storage: StorageBackend) -> None:
    run = await new_run(storage)
    await suspend(storage, run.run_id, LATER)
    await storage.post_message(run.run_id, "a")
    claimed = await storage.claim_due_timers(datetime.now(UTC), redeliver_after=60)
    assert [t.run_id for t in claimed] == [run.run_id]
    # the claim pushed the timer ahead; a second post brings it back to now
    await storage.post_message(run.run_id, "b")
    timer = await storage.get_timer(run.run_id)
    assert timer is not None and timer.wake_at <= datetime.now(UTC)
    assert [t.run_id for t in await storage.claim_due_timers(datetime.now(UTC))] == [run.run_id]
    # an earlier wake time is never postponed by a post
    early = datetime(2001, 1, 1, tzinfo=UTC)
    await storage.update_run(run.run_id, wake_at=early)
    await storage.post_message(run.run_id, "c")
    assert (await storage.get_timer(run.run_id)).wake_at == early  # type: ignore[union-attr]


# -- beginning an activation -------------------------------------------------------------


async def test_begin_activation_outcomes(storage: StorageBackend) -> None:
    assert (await activate(storage, "no-such-run")).status == "missing"
    run = await new_run(storage)
    await storage.append_events(run.run_id, [ev(2, "step.started", call_id=1)])
    got = await activate(storage, run.run_id, owner="a")
    assert got.status == "leased" and got.lease.owner == "a" and got.run.run_id == run.run_id
    assert [e.seq for e in got.events] == [1, 2] and got.messages == []
    assert (await activate(storage, run.run_id, owner="b")).status == "busy"
    await storage.release_lease(got.lease)
    await suspend(storage, run.run_id, LATER)
    assert (await activate(storage, run.run_id)).status == "not_due"
    await storage.update_run(run.run_id, status="failed")
    finished = await activate(storage, run.run_id)
    assert finished.status == "finished" and finished.lease is None
    assert await storage.get_timer(run.run_id) is None


async def test_expired_lease_lets_the_next_activation_in(storage: StorageBackend) -> None:
    run = await new_run(storage)
    old = await activate(storage, run.run_id, owner="crashed", ttl=0.2)
    assert old.status == "leased"
    deadline = time.monotonic() + 5
    while (new := await activate(storage, run.run_id, owner="next")).status == "busy":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert new.status == "leased"
    with pytest.raises(LeaseLostError):
        await storage.append_events(run.run_id, [ev(2)], lease_token=old.lease.token, consume=[])


async def test_release_without_token_and_bad_consume_are_refused(storage: StorageBackend) -> None:
    run = await new_run(storage)
    with pytest.raises(ValueError, match="release_lease"):
        await storage.append_events(run.run_id, [ev(2)], release_lease=True)
    with pytest.raises(ValueError, match="consume"):
        await storage.append_events(run.run_id, [ev(2)], consume=[0])
    assert len(await storage.get_events(run.run_id)) == 1


# -- one validation rule for every backend ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"status": "sleeping"}, "status"),
        ({"wake_at": "tomorrow"}, "wake_at"),
        ({"completed_at": 5}, "completed_at"),
        ({"error": "boom"}, "error"),
        ({"result": {"x": object()}}, "result"),
        ({"result": float("inf")}, "result"),
        ({"workflow_name": "other"}, "workflow_name"),
    ],
)
async def test_invalid_run_changes_are_refused_alike(
    storage: StorageBackend, changes: dict[str, Any], words: str
) -> None:
    run = await new_run(storage)
    with pytest.raises(ValueError, match=words):
        await storage.update_run(run.run_id, **changes)
    with pytest.raises(ValueError, match=words):
        await storage.append_events(run.run_id, [ev(2)], run_changes=changes)
    assert await storage.get_run(run.run_id) == run
    assert len(await storage.get_events(run.run_id)) == 1


# -- several processes --------------------------------------------------------------------


def _poster(spec: Spec, run_id: str, worker: int, count: int) -> list[str]:
    async def main() -> list[str]:
        backend = open_spec(spec)
        try:
            ids = []
            for i in range(count):
                # every message twice under one key: the repeat must store nothing
                key = f"{worker}:{i}"
                ids.append(await backend.post_message(run_id, "signal", {"w": worker, "i": i}, idempotency_key=key))
                assert await backend.post_message(run_id, "signal", {"dup": True}, idempotency_key=key) == ids[-1]
            return ids
        finally:
            await backend.close()

    return asyncio.run(main())


def _consumer(spec: Spec, run_id: str, worker: int, stop: str) -> list[int]:
    """Activate and consume whatever is pending, as an activation does, until the ``stop``
    file exists; return the message seqs this process consumed."""

    async def main() -> list[int]:
        backend = open_spec(spec)
        mine: list[int] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not os.path.exists(stop):
                got = await backend.begin_activation(run_id, f"c{worker}", 30, now=datetime.now(UTC))
                if got.status != "leased":
                    await asyncio.sleep(0.001)
                    continue
                seqs = [m.seq for m in got.messages]
                last = got.events[-1].seq
                events = [ev(last + 1 + i, "message.received", message=s, by=worker) for i, s in enumerate(seqs)]
                events.append(ev(last + 1 + len(seqs), "workflow.suspended", by=worker))
                try:
                    await backend.append_events(
                        run_id,
                        events,
                        lease_token=got.lease.token,
                        run_changes={"status": "suspended", "wake_at": None},
                        consume=seqs,
                        release_lease=True,
                    )
                except (SequenceConflictError, LeaseLostError):
                    continue
                mine += seqs
                if not seqs:
                    await asyncio.sleep(0.002)
            return mine
        finally:
            await backend.close()

    return asyncio.run(main())


@pytest.fixture
def spec(make_backend: Callable[[], StorageBackend]) -> Spec:
    value: Spec = make_backend.spec  # type: ignore[attr-defined]
    if value is None:
        pytest.skip("the memory backend lives in one process")
    return value


async def test_posts_from_several_processes_each_stored_once_in_one_order(storage: StorageBackend, spec: Spec) -> None:
    run = await new_run(storage)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = await asyncio.to_thread(pool.starmap, _poster, [(spec, run.run_id, w, 15) for w in range(4)])
    every = [i for ids in results for i in ids]
    assert len(set(every)) == 60
    stored = await storage.get_messages(run.run_id, pending_only=False)
    assert [m.seq for m in stored] == list(range(1, 61))
    assert not any(m.payload.get("dup") for m in stored)
    for w in range(4):  # each sender's messages in the order it sent them
        assert [m.payload["i"] for m in stored if m.payload["w"] == w] == list(range(15))


async def test_racing_activations_consume_each_message_exactly_once(
    storage: StorageBackend, spec: Spec, tmp_path: Path
) -> None:
    run = await new_run(storage)
    stop = tmp_path / "stop"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(5) as pool:
        posting = pool.starmap_async(_poster, [(spec, run.run_id, w, 10) for w in range(2)])
        consuming = pool.starmap_async(_consumer, [(spec, run.run_id, w, str(stop)) for w in range(3)])
        await asyncio.to_thread(posting.get, 120)
        # let the consumers drain, then make them stop
        deadline = time.monotonic() + 60
        while await storage.get_messages(run.run_id):
            assert time.monotonic() < deadline, "messages left pending"
            await asyncio.sleep(0.05)
        stop.touch()
        consumed = await asyncio.to_thread(consuming.get, 120)
    every = sorted(s for seqs in consumed for s in seqs)
    assert every == list(range(1, 21)), "each message consumed exactly once"
    log = await storage.get_events(run.run_id)
    recorded = [e.data["message"] for e in log if e.type == "message.received"]
    assert sorted(recorded) == list(range(1, 21)) and recorded == sorted(recorded)
