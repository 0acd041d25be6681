"""The engine on the run inbox: dispatched step outcomes never wait on the lease, messages
enter the log once and in order, an unreadable log fails the run once, and storage
hiccups are retried instead of read as a lost lease."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from pyworkflow import sleep, step, workflow
from pyworkflow.dispatch import run_dispatched_step
from pyworkflow.engine import activate
from pyworkflow.errors import StorageError, StorageUnavailableError
from pyworkflow.events import Event
from pyworkflow.storage.base import Lease
from pyworkflow.storage.memory import InMemoryStorageBackend

GUARD = timedelta(hours=1)
ran: Counter[str] = Counter()


@step(name="inbox.remote", queue="remote")
async def remote(x: int) -> int:
    ran["remote"] += 1
    return x * 10


@workflow(name="inbox.dispatching")
async def dispatching(x: int) -> int:
    return await remote(x) + 1


@workflow(name="inbox.sleeper")
async def sleeper() -> str:
    await sleep("1d")
    return "woke"


async def types(storage: InMemoryStorageBackend, run_id: str) -> list[str]:
    return [e.type for e in await storage.get_events(run_id)]


async def test_a_dispatched_outcome_never_waits_on_a_long_lease(memory: InMemoryStorageBackend) -> None:
    run, _ = await _create(memory, dispatching, 4)
    first = await activate(memory, run, dispatch_guard=GUARD, lease_ttl=120)
    assert first.status == "suspended" and [d.step for d in first.dispatches] == ["inbox.remote"]
    # Another activation holds the run's lease for two minutes (longer than any old wait).
    held = await memory.acquire_lease(run, "long-activation", 120)
    assert held is not None
    began = time.monotonic()
    assert await run_dispatched_step(memory, run, 1, "inbox.remote") == "completed"
    assert time.monotonic() - began < 2, "the step worker must not wait for the lease"
    assert [m.payload["type"] for m in await memory.get_messages(run)] == ["step.started", "step.completed"]
    assert (await memory.get_timer(run)).wake_at <= (await memory.get_run(run)).updated_at  # type: ignore[union-attr]
    assert (await activate(memory, run, dispatch_guard=GUARD)).status == "busy"
    await memory.release_lease(held)
    assert (await activate(memory, run, dispatch_guard=GUARD)).status == "completed"
    record = await memory.get_run(run)
    assert record is not None and record.result == 41
    assert await memory.get_messages(run) == []
    log = await types(memory, run)
    assert log.count("step.started") == 1 and log.count("step.completed") == 1


async def test_a_duplicate_delivery_records_nothing_twice(memory: InMemoryStorageBackend) -> None:
    ran.clear()
    run, _ = await _create(memory, dispatching, 1)
    await activate(memory, run, dispatch_guard=GUARD)
    # the broker delivered the step twice before the run recorded anything
    assert await run_dispatched_step(memory, run, 1, "inbox.remote") == "completed"
    assert await run_dispatched_step(memory, run, 1, "inbox.remote") == "completed"
    assert ran["remote"] == 2  # at-least-once: the second delivery ran, its posts were no-ops
    assert len(await memory.get_messages(run)) == 2
    assert (await activate(memory, run, dispatch_guard=GUARD)).status == "completed"
    # a late third delivery finds the call settled and does nothing
    assert await run_dispatched_step(memory, run, 1, "inbox.remote") == "skipped"
    assert ran["remote"] == 2
    log = await types(memory, run)
    assert log.count("step.completed") == 1


async def test_a_stale_outcome_is_consumed_without_an_event(memory: InMemoryStorageBackend) -> None:
    run, _ = await _create(memory, dispatching, 2)
    await activate(memory, run, dispatch_guard=GUARD)
    await run_dispatched_step(memory, run, 1, "inbox.remote")
    # an outcome for an attempt that never started (a confused or replayed sender)
    await memory.post_message(
        run, "step", {"type": "step.completed", "data": {"call_id": 1, "step": "inbox.remote", "attempt": 7}}
    )
    assert (await activate(memory, run, dispatch_guard=GUARD)).status == "completed"
    assert (await memory.get_run(run)).result == 21  # type: ignore[union-attr]
    assert await memory.get_messages(run) == []
    assert (await types(memory, run)).count("step.completed") == 1


async def test_a_message_during_the_suspend_leaves_the_run_due(memory: InMemoryStorageBackend) -> None:
    class PostsWhileSuspending(InMemoryStorageBackend):
        async def append_events(self, run_id: str, events: Any, **kw: Any) -> None:
            if any(e.type == "workflow.suspended" for e in events) and not self._inbox.get(run_id):
                await self.post_message(run_id, "note", {"n": 1})
            await super().append_events(run_id, events, **kw)

    storage = PostsWhileSuspending()
    run, _ = await _create(storage, sleeper)
    assert (await activate(storage, run)).status == "suspended"
    record = await storage.get_run(run)
    assert record is not None and record.wake_at is not None
    assert record.wake_at <= record.updated_at, "the message keeps it due now, not in a day"
    again = await activate(storage, run)
    assert again.status == "suspended" and again.wake_at is not None
    assert again.wake_at - record.created_at > timedelta(hours=23)
    log = await storage.get_events(run)
    received = [e for e in log if e.type == "message.received"]
    assert [(e.data["kind"], e.data["payload"]) for e in received] == [("note", {"n": 1})]
    assert await storage.get_messages(run) == []
    # consumed: the run is asleep until its wake time again
    assert (await activate(storage, run)).status == "not_due"


async def test_an_unreadable_log_fails_the_run_once_naming_run_and_seq(memory: InMemoryStorageBackend) -> None:
    run, _ = await _create(memory, sleeper)
    await activate(memory, run)
    log = await memory.get_events(run)
    broken = Event(seq=len(log) + 1, type="step.completed", timestamp=log[-1].timestamp, data={"step": "x"})
    await memory.append_events(run, [broken])
    await memory.update_run(run, wake_at=log[-1].timestamp)
    assert (await activate(memory, run)).status == "failed"
    record = await memory.get_run(run)
    assert record is not None and record.status == "failed" and record.error is not None
    assert record.error["type"] == "pyworkflow.errors.CorruptedHistoryError"
    assert run in record.error["message"] and f"seq {broken.seq}" in record.error["message"]
    assert "call_id" in record.error["message"]
    assert (await activate(memory, run)).status == "finished"
    assert await memory.get_timer(run) is None


async def test_a_transient_write_error_is_retried_not_read_as_a_lost_lease() -> None:
    class Flaky(InMemoryStorageBackend):
        failures = 2

        async def append_events(self, run_id: str, events: Any, **kw: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise StorageError("connection reset by peer")
            await super().append_events(run_id, events, **kw)

    storage = Flaky()
    run, _ = await _create(storage, dispatching, 3)
    storage.failures = 2
    outcome = await activate(storage, run)
    assert outcome.status == "completed" and storage.failures == 0
    assert (await storage.get_run(run)).result == 31  # type: ignore[union-attr]
    assert await storage.acquire_lease(run, "next", 10) is not None  # released by the last append


async def test_a_driver_connection_error_is_retried_like_a_storage_error() -> None:
    # Redis and psycopg raise their own errors when a connection is cut: the engine retries
    # the ones a backend declares as "unavailable" instead of handing them to user code.
    class Cut(InMemoryStorageBackend):
        unavailable_errors = (ConnectionResetError,)
        failures = 0

        async def append_events(self, run_id: str, events: Any, **kw: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionResetError("connection reset by peer")
            await super().append_events(run_id, events, **kw)

    storage = Cut()
    run, _ = await _create(storage, dispatching, 4)
    storage.failures = 3
    assert (await activate(storage, run)).status == "completed"
    assert (await storage.get_run(run)).result == 41  # type: ignore[union-attr]


async def test_a_persistent_write_error_fails_the_activation_loudly_and_lets_go_of_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Storage down for longer than the write budget (half the lease): the activation is not
    # "lost" (that means another writer took over) but raises the storage error, after
    # making the run due again and releasing its lease, so a retried task takes over at
    # once; the step whose completion was never recorded runs again, counted as an attempt.
    class Down(InMemoryStorageBackend):
        unavailable_errors = (ConnectionRefusedError,)
        down = False

        async def append_events(self, run_id: str, events: Any, **kw: Any) -> None:
            if self.down:
                raise ConnectionRefusedError("connection refused")
            await super().append_events(run_id, events, **kw)

    calls: list[int] = []

    @step(name="inbox.outage_step")
    async def outage_step(x: int) -> int:
        calls.append(x)
        storage.down = len(calls) == 1  # the outage starts while the first attempt runs
        return x + 1

    @workflow(name="inbox.outage")
    async def outage(x: int) -> int:
        return await outage_step(x)

    storage = Down()
    run, _ = await _create(storage, outage, 1)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        await activate(storage, run, lease_ttl=0.8)  # write budget 0.4 s
    assert time.monotonic() - started < 2.0
    assert run in str(caught.value) and "ConnectionRefusedError" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert "activation_storage_failed" in caplog.text
    # let go: the run is due now and its lease is free
    assert (await storage.get_run(run)).status == "pending"  # type: ignore[union-attr]
    assert [m.kind for m in await storage.get_messages(run)] == ["interrupted"]
    assert await storage.get_timer(run) is not None
    storage.down = False
    assert (await activate(storage, run)).status == "completed"
    assert (await storage.get_run(run)).result == 2  # type: ignore[union-attr]
    events = await storage.get_events(run)
    types = [e.type for e in events]
    assert types.count("step.completed") == 1 and "workflow.interrupted" in types
    started_attempts = [e.data["attempt"] for e in events if e.type == "step.started"]
    assert started_attempts == [2]  # the unrecorded first attempt is counted


async def test_a_storage_error_outlasting_the_budget_while_the_lease_is_held_elsewhere_is_lost() -> None:
    # "lost" still means what it says: another writer took the run over mid-way.
    class TakenOver(InMemoryStorageBackend):
        async def append_events(self, run_id: str, events: Any, **kw: Any) -> None:
            from pyworkflow.errors import LeaseLostError

            raise LeaseLostError(run_id)

    storage = TakenOver()
    run, _ = await _create(storage, dispatching, 1)
    assert (await activate(storage, run)).status == "lost"


async def test_a_failed_renewal_is_tried_again_until_the_lease_is_really_gone() -> None:
    class FlakyRenew(InMemoryStorageBackend):
        renew_failures = 1
        renewed = 0

        async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
            if self.renew_failures:
                self.renew_failures -= 1
                raise StorageError("timeout")
            self.renewed += 1
            return await super().renew_lease(lease, ttl)

    @step(name="inbox.slow")
    async def slow() -> str:
        await asyncio.sleep(0.8)
        return "done"

    @workflow(name="inbox.slow_wf")
    async def slow_wf() -> str:
        return await slow()

    storage = FlakyRenew()
    run, _ = await _create(storage, slow_wf)
    outcome = await activate(storage, run, lease_ttl=0.6)  # renewals every 0.2 s
    assert outcome.status == "completed"
    assert storage.renew_failures == 0 and storage.renewed >= 2


async def _create(storage: Any, wf: Any, *args: Any) -> tuple[str, bool]:
    from pyworkflow.engine import create_run
    from pyworkflow.registry import definition_of

    run, created = await create_run(storage, definition_of(wf), args, {})
    return run.run_id, created


async def test_concurrent_activations_on_one_loop_each_keep_their_lease_renewed() -> None:
    # One timer serves every activation of a loop; each lease is still renewed on its own
    # schedule (a third of its ttl) while its step runs, and nothing is left behind.
    from pyworkflow.engine import _RENEWALS

    class Counting(InMemoryStorageBackend):
        def __init__(self) -> None:
            super().__init__()
            self.renewed: Counter[str] = Counter()

        async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
            self.renewed[lease.run_id] += 1
            return await super().renew_lease(lease, ttl)

    @step(name="inbox.pause")
    async def pause(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @workflow(name="inbox.pausing")
    async def pausing(seconds: float) -> float:
        return await pause(seconds)

    storage = Counting()
    plans = [(1.0, 0.6), (1.2, 0.9), (0.05, 0.3)]  # (step seconds, lease ttl)
    runs = [(await _create(storage, pausing, seconds))[0] for seconds, _ in plans]
    ttls = [ttl for _, ttl in plans]
    outcomes = await asyncio.gather(*(activate(storage, r, lease_ttl=t) for r, t in zip(runs, ttls, strict=True)))
    assert [o.status for o in outcomes] == ["completed"] * 3
    assert storage.renewed[runs[0]] >= 3 and storage.renewed[runs[1]] >= 2  # due 4 and 3 times
    assert not _RENEWALS[asyncio.get_running_loop()].active


async def test_a_completion_not_followed_by_a_write_is_flushed_on_the_next_loop_turn() -> None:
    @step(name="inbox.quick")
    async def quick() -> str:
        return "done"

    @workflow(name="inbox.then_waits")
    async def then_waits() -> str:
        result = await quick()
        await asyncio.sleep(0.2)  # not durable: nothing else carries the completion
        return result

    storage = InMemoryStorageBackend()
    runs = [(await _create(storage, then_waits))[0] for _ in range(3)]
    activations = [asyncio.ensure_future(activate(storage, run)) for run in runs]
    await asyncio.sleep(0.1)
    for run in runs:
        assert (await types(storage, run))[-1] == "step.completed"
    assert [o.status for o in await asyncio.gather(*activations)] == ["completed"] * 3


class Counting(InMemoryStorageBackend):
    """Counts the storage calls an activation makes (what would be round trips)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in {"create_run", "begin_activation", "append_events", "get_run", "get_events", "post_message"}:
            calls = super().__getattribute__("calls")

            async def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return await attr(*args, **kwargs)

            return counted
        return attr


@step(name="inbox.inc")
async def inc(x: int) -> int:
    return x + 1


@workflow(name="inbox.three_steps")
async def three_steps(x: int) -> int:
    return await inc(await inc(await inc(x)))


@workflow(name="inbox.sleep_then_step")
async def sleep_then_step() -> int:
    await sleep("1h")
    return await inc(1)


async def test_a_three_step_run_costs_five_storage_calls() -> None:
    storage = Counting()
    run, _ = await _create(storage, three_steps, 1)
    assert (await activate(storage, run)).status == "completed"
    assert sum(storage.calls.values()) == 5, storage.calls  # create, begin, 3 appends
    assert storage.calls["begin_activation"] == 1 and storage.calls["append_events"] == 3
    log = await types(storage, run)
    assert log.count("step.started") == 3 and log.count("step.completed") == 3
    # the first step's start was written with its completion, in order
    assert log[1:4] == ["step.started", "step.completed", "step.started"]


async def test_a_wake_up_costs_two_storage_calls() -> None:
    from pyworkflow.clock import VirtualClock

    storage, clock = Counting(), VirtualClock()
    run, _ = await _create(storage, sleep_then_step)
    assert (await activate(storage, run, clock=clock)).status == "suspended"
    storage.calls.clear()
    clock.advance(timedelta(hours=1, seconds=1))
    assert (await activate(storage, run, clock=clock)).status == "completed"
    assert dict(storage.calls) == {"begin_activation": 1, "append_events": 1}
    log = await types(storage, run)
    assert log[-5:] == ["workflow.resumed", "sleep.completed", "step.started", "step.completed", "workflow.completed"]


crashes: Counter[str] = Counter()


@step(name="inbox.dies", max_retries=1)
async def dies() -> None:
    crashes["dies"] += 1
    task = asyncio.current_task()
    assert task is not None
    task.cancel()  # stands for SIGKILL: nothing after it runs, nothing is written
    await asyncio.sleep(0)


_WorkerDied = asyncio.CancelledError


@workflow(name="inbox.dies_wf")
async def dies_wf() -> None:
    await dies()


async def test_a_crash_in_an_unwritten_first_step_is_still_counted() -> None:
    from pyworkflow.local import LocalRuntime

    storage = InMemoryStorageBackend()
    runtime = LocalRuntime(storage, lease_ttl=0.05)
    run, _ = await _create(storage, dies_wf)
    with pytest.raises(_WorkerDied):
        await runtime.resume(run)
    assert crashes["dies"] == 1
    assert await types(storage, run) == ["workflow.started"]  # the dead activation wrote nothing
    await asyncio.sleep(0.1)  # its lease expires
    with pytest.raises(_WorkerDied):  # recovery tells the run and activates it: it dies again
        await runtime.tick()
    assert crashes["dies"] == 2
    log = await storage.get_events(run)
    assert [e.type for e in log] == ["workflow.started", "workflow.interrupted", "step.started"]
    assert log[-1].data["attempt"] == 2, "the unwritten first attempt is counted"
    await asyncio.sleep(0.1)
    await runtime.tick()
    record = await storage.get_run(run)
    assert record is not None and record.status == "failed", record
    assert record.error is not None and record.error["type"] == "pyworkflow.errors.StepCrashedError"
    assert crashes["dies"] == 2, "max_retries=1: two attempts, then StepCrashedError"


async def test_a_malformed_step_message_is_dropped_not_a_poison(memory: InMemoryStorageBackend) -> None:
    run, _ = await _create(memory, dispatching, 5)
    await activate(memory, run, dispatch_guard=GUARD)
    started = {"type": "step.started", "data": {"call_id": 1, "step": "inbox.remote", "attempt": 1, "args": None}}
    await memory.post_message(run, "step", {"type": "step.retrying", "data": {"call_id": 1, "step": "inbox.remote"}})
    await memory.post_message(run, "step", started)
    await memory.post_message(
        run, "step", {"type": "step.retrying", "data": {"call_id": 1, "step": "inbox.remote", "attempt": 1}}
    )  # no resume_at: cannot be replayed
    outcome = await activate(memory, run, dispatch_guard=GUARD)
    assert outcome.status == "suspended"
    assert await memory.get_messages(run) == []
    log = await types(memory, run)
    assert log.count("step.started") == 1 and "step.retrying" not in log
    assert await run_dispatched_step(memory, run, 1, "inbox.remote") == "completed"
    assert (await activate(memory, run, dispatch_guard=GUARD)).status == "completed"


async def test_a_step_whose_lease_is_lost_is_stopped_and_nothing_more_is_written() -> None:
    # Another worker took the run over (its renewal says the lease is gone): the step
    # running here is cancelled at its next await instead of going on in two places,
    # and the activation ends "lost" without writing.
    class TakenOver(InMemoryStorageBackend):
        async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
            return None

    finished: list[str] = []

    @step(name="inbox.long")
    async def long() -> str:
        await asyncio.sleep(30)
        finished.append("long")
        return "done"

    @workflow(name="inbox.long_wf")
    async def long_wf() -> str:
        return await long()

    storage = TakenOver()
    run, _ = await _create(storage, long_wf)
    started = time.monotonic()
    outcome = await asyncio.wait_for(activate(storage, run, lease_ttl=0.6), 10)
    assert outcome.status == "lost" and time.monotonic() - started < 5
    assert finished == []
    assert [e.type for e in await storage.get_events(run)] == ["workflow.started"]
