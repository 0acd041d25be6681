"""Signals, published state and webhooks on every backend, in-process (LocalRuntime):
delivery before and during a wait, FIFO per name, timeouts decided by the log's order,
idempotent sends from many processes, and replay giving every wait the same outcome."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import timedelta
from typing import Any

import pytest

import pyworkflow
from pyworkflow import (
    RunFinishedError,
    RunNotFoundError,
    SerializationError,
    SignalTimeoutError,
    create_webhook,
    get_state_async,
    send_signal_async,
    set_state,
    sleep,
    step,
    wait_for_signal,
    workflow,
)
from pyworkflow.engine import activate, create_run
from pyworkflow.history import CallKind, CallState, fold
from pyworkflow.registry import definition_of
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock
from tests.storage.conftest import Spec, open_spec

# -- workflows -----------------------------------------------------------------------------

ran: list[str] = []


@step(name="sig.record")
async def record(what: str) -> str:
    ran.append(what)
    return what


@workflow(name="sig.one")
async def one() -> Any:
    return await wait_for_signal("go")


@workflow(name="sig.two_in_a_row")
async def two_in_a_row() -> list[Any]:
    first = await wait_for_signal("go")
    await record(f"after {first}")
    second = await wait_for_signal("go")
    return [first, second]


@workflow(name="sig.timeout_default")
async def timeout_default() -> Any:
    return await wait_for_signal("go", timeout="1h", default="timed out")


@workflow(name="sig.timeout_caught")
async def timeout_caught() -> str:
    try:
        await wait_for_signal("go", timeout=60)
    except SignalTimeoutError as exc:
        assert isinstance(exc, TimeoutError)
        return await record("cleanup after timeout")
    return "signalled"


@workflow(name="sig.timeout_uncaught")
async def timeout_uncaught() -> Any:
    return await wait_for_signal("go", timeout="10m")


@workflow(name="sig.both")
async def both() -> list[Any]:
    return list(await asyncio.gather(wait_for_signal("a"), wait_for_signal("b")))


@workflow(name="sig.step_then_wait")
async def step_then_wait() -> list[Any]:
    async def branch() -> Any:
        await record("branch step")
        return await wait_for_signal("b")

    return list(await asyncio.gather(wait_for_signal("a"), branch()))


@workflow(name="sig.race")
async def race(timeout: float) -> Any:
    return await wait_for_signal("go", timeout=timeout, default="timeout")


@workflow(name="sig.state")
async def publishes() -> str:
    set_state("stage", "started")
    set_state("progress", {"done": 0})
    await sleep("1h")
    set_state("progress", {"done": 1})
    decision = await wait_for_signal("approve")
    set_state("stage", "approved" if decision else "rejected")
    return "done"


@workflow(name="sig.webhook")
async def with_webhook() -> dict[str, Any]:
    hook = await create_webhook("paid", secret="s3cret")
    set_state("token", hook.token)
    body = await wait_for_signal("paid")
    again = await create_webhook("other")
    return {"token": hook.token, "body": body, "other": again.token != hook.token}


@workflow(name="sig.many")
async def many(n: int) -> list[Any]:
    return [await wait_for_signal("tick") for _ in range(n)]


# -- helpers -------------------------------------------------------------------------------


def runtime(storage: StorageBackend) -> LocalRuntime:
    return LocalRuntime(storage, clock=VirtualClock())


async def status(storage: StorageBackend, run_id: str) -> str:
    run = await storage.get_run(run_id)
    assert run is not None
    return str(run.status)


async def types(storage: StorageBackend, run_id: str) -> list[str]:
    return [e.type for e in await storage.get_events(run_id)]


async def replays_the_same(storage: StorageBackend, run_id: str) -> None:
    """Fold the stored log twice: every signal wait has one outcome, the same each time,
    and a completed wait's payload is a signal the run received."""
    events = await storage.get_events(run_id)
    first, second = fold(run_id, events), fold(run_id, events)
    waits = {c: r for c, r in first.calls.items() if r.kind == CallKind.SIGNAL}
    for call_id, rec in waits.items():
        again = second.calls[call_id]
        assert (rec.state, rec.result) == (again.state, again.result)
    outcomes = [e for e in events if e.type in ("signal.timed_out",)]
    for event in outcomes:
        assert waits[event.data["call_id"]].state == CallState.TIMED_OUT


# -- delivery ------------------------------------------------------------------------------


async def test_a_signal_sent_before_the_first_activation_is_delivered(storage: StorageBackend) -> None:
    run, _ = await create_run(storage, definition_of(one), (), {})
    await send_signal_async(run.run_id, "go", {"n": 1}, storage=storage)
    await activate(storage, run.run_id)
    record_ = await storage.get_run(run.run_id)
    assert record_ is not None and record_.status == "completed" and record_.result == {"n": 1}
    assert (await types(storage, run.run_id)).count("signal.received") == 1


async def test_a_signal_during_the_suspension_resumes_the_run(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(one)
    assert await status(storage, run_id) == "suspended"
    suspended = await storage.get_run(run_id)
    assert suspended is not None and suspended.wake_at is None  # waits for a message only
    assert (await rt.resume(run_id)).status == "not_due"  # nothing to do: no event written
    assert (await types(storage, run_id))[-1] == "workflow.suspended"
    await send_signal_async(run_id, "go", [1, "two"], storage=storage)
    outcomes = await rt.tick()
    assert [o.status for o in outcomes] == ["completed"]
    assert (await storage.get_run(run_id)).result == [1, "two"]  # type: ignore[union-attr]


async def test_two_signals_one_wait_the_second_waits_for_the_next(storage: StorageBackend) -> None:
    ran.clear()
    rt = runtime(storage)
    run_id = await rt.start(two_in_a_row)
    await send_signal_async(run_id, "go", "first", storage=storage)
    await send_signal_async(run_id, "go", "second", storage=storage)
    await send_signal_async(run_id, "other", "ignored", storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == ["first", "second"]
    assert ran == ["after first"]
    await replays_the_same(storage, run_id)


async def test_a_payload_that_is_absent_arrives_as_none(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(one)
    await send_signal_async(run_id, "go", storage=storage)
    await rt.tick()
    assert (await storage.get_run(run_id)).result is None  # type: ignore[union-attr]


async def test_waits_for_two_names_in_gather(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(both)
    await send_signal_async(run_id, "b", "B", storage=storage)
    await rt.tick()
    assert await status(storage, run_id) == "suspended"
    await send_signal_async(run_id, "a", "A", storage=storage)
    await rt.tick()
    assert (await storage.get_run(run_id)).result == ["A", "B"]  # type: ignore[union-attr]


async def test_a_wait_after_a_step_in_a_gather_branch_is_recorded_in_the_same_activation(
    storage: StorageBackend,
) -> None:
    # The branch's wait comes after its sibling closed the activation: it is recorded all
    # the same, so signal "b" resumes that branch without waiting for "a".
    rt = runtime(storage)
    run_id = await rt.start(step_then_wait)
    waiting = [e.data["name"] for e in await storage.get_events(run_id) if e.type == "signal.waiting"]
    assert sorted(waiting) == ["a", "b"]
    await send_signal_async(run_id, "a", 1, storage=storage)
    await send_signal_async(run_id, "b", 2, storage=storage)
    await rt.tick()
    assert (await storage.get_run(run_id)).result == [1, 2]  # type: ignore[union-attr]


# -- timeouts ------------------------------------------------------------------------------


async def test_a_timeout_returns_the_default_on_the_virtual_clock(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(timeout_default)
    suspended = await storage.get_run(run_id)
    assert suspended is not None and suspended.wake_at is not None
    run = await rt.run_until_complete(run_id)
    assert run.status == "completed" and run.result == "timed out"
    assert (await types(storage, run_id)).count("signal.timed_out") == 1
    # a signal after the timeout finds the run finished
    with pytest.raises(RunFinishedError):
        await send_signal_async(run_id, "go", 1, storage=storage)


async def test_a_timeout_raises_signal_timeout_error_which_the_workflow_may_catch(storage: StorageBackend) -> None:
    ran.clear()
    rt = runtime(storage)
    caught = await rt.run_until_complete(await rt.start(timeout_caught))
    assert caught.status == "completed" and caught.result == "cleanup after timeout"
    assert ran == ["cleanup after timeout"]
    failed = await rt.run_until_complete(await rt.start(timeout_uncaught))
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["type"] == "pyworkflow.errors.SignalTimeoutError" and "'go'" in failed.error["message"]


async def test_a_signal_before_the_timeout_wins(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(timeout_default)
    await send_signal_async(run_id, "go", "yes", storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.result == "yes" and "signal.timed_out" not in await types(storage, run_id)


async def test_signal_at_the_timeout_instant_one_outcome_each_replayed_the_same(storage: StorageBackend) -> None:
    # 100 trials (20 on the slower backends): a signal sent while the timeout falls due,
    # racing the activation that would record the timeout. Each run records exactly one
    # outcome for its wait, returns it, and the log folds to the same outcome again.
    trials = 100 if type(storage).__name__ in ("InMemoryStorageBackend", "SQLiteStorageBackend") else 20
    rt = LocalRuntime(storage)  # real clock
    outcomes = []

    async def send(run_id: str) -> None:
        await asyncio.sleep(0.02)
        try:
            await send_signal_async(run_id, "go", "signal", storage=storage)
        except RunFinishedError:
            pass  # the timeout was recorded first and the run finished

    for _ in range(trials):
        run_id = await rt.start(race, 0.02)
        await asyncio.gather(send(run_id), _activate_when_due(rt, run_id))
        run = await rt.run_until_complete(run_id)
        assert run.status == "completed"
        events = await storage.get_events(run_id)
        received = [e for e in events if e.type == "signal.received"]
        timed_out = [e for e in events if e.type == "signal.timed_out"]
        if run.result == "signal":
            assert not timed_out and len(received) == 1
        else:
            assert run.result == "timeout" and len(timed_out) == 1
            assert not received  # a late signal found the run finished
        await replays_the_same(storage, run_id)
        outcomes.append(run.result)
    assert set(outcomes) <= {"signal", "timeout"}


async def _activate_when_due(rt: LocalRuntime, run_id: str) -> None:
    for _ in range(200):
        outcome = await rt.resume(run_id)
        if outcome.status in ("completed", "failed"):
            return
        await asyncio.sleep(0.002)


# -- sending: errors, idempotency ------------------------------------------------------------


async def test_send_signal_refuses_unknown_and_finished_runs_and_bad_payloads(storage: StorageBackend) -> None:
    with pytest.raises(RunNotFoundError):
        await send_signal_async("no-such-run", "go", storage=storage)
    rt = runtime(storage)
    run_id = await rt.start(one)
    before = await storage.get_messages(run_id, pending_only=False)
    for bad in (float("nan"), {"x": object()}, "nul\x00", {"k": float("inf")}):
        with pytest.raises(SerializationError) as info:
            await send_signal_async(run_id, "go", bad, storage=storage)
        assert "send_signal('go'): payload" in str(info.value)
        assert isinstance(info.value, TypeError)
    with pytest.raises(ValueError, match="send_signal"):
        await send_signal_async(run_id, " go", storage=storage)
    with pytest.raises(TypeError, match="send_signal"):
        await send_signal_async(run_id, 42, storage=storage)  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="idempotency_key"):
        await send_signal_async(run_id, "go", idempotency_key="k" * 300, storage=storage)
    assert await storage.get_messages(run_id, pending_only=False) == before  # nothing recorded
    await send_signal_async(run_id, "go", "ok", storage=storage)
    await rt.tick()
    with pytest.raises(RunFinishedError) as finished:
        await send_signal_async(run_id, "go", "late", storage=storage)
    assert run_id in str(finished.value)


async def test_the_same_idempotency_key_is_one_signal(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(two_in_a_row)
    first = await send_signal_async(run_id, "go", "once", idempotency_key="evt-1", storage=storage)
    again = await send_signal_async(run_id, "go", "twice", idempotency_key="evt-1", storage=storage)
    assert first == again
    await send_signal_async(run_id, "go", "other", idempotency_key="evt-2", storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.result == ["once", "other"]


def _send_with_key(spec: Spec, run_id: str, sender: int) -> str:
    async def main() -> str:
        backend = open_spec(spec)
        try:
            return await send_signal_async(run_id, "go", {"from": sender}, idempotency_key="the-one", storage=backend)
        finally:
            await backend.close()

    return asyncio.run(main())


@pytest.fixture
def spec(make_backend: Any) -> Spec:
    value: Spec = make_backend.spec
    if value is None:
        pytest.skip("the memory backend lives in one process")
    return value


async def test_one_key_from_twenty_processes_is_one_signal(storage: StorageBackend, spec: Spec) -> None:
    rt = runtime(storage)
    run_id = await rt.start(two_in_a_row)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(20) as pool:
        ids = await asyncio.to_thread(pool.starmap, _send_with_key, [(spec, run_id, i) for i in range(20)])
    assert len(set(ids)) == 1
    messages = await storage.get_messages(run_id, pending_only=False)
    assert len(messages) == 1 and messages[0].kind == "signal"
    await rt.tick()
    assert (await types(storage, run_id)).count("signal.received") == 1


# -- published state -------------------------------------------------------------------------


async def test_state_is_published_once_and_read_without_replay(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(publishes)
    assert await get_state_async(run_id, "stage", storage=storage) == "started"
    assert await get_state_async(run_id, "progress", storage=storage) == {"done": 0}
    assert await get_state_async(run_id, "never", storage=storage) is None
    await rt.run_until_complete(run_id)  # past the sleep, waiting for "approve"
    assert await get_state_async(run_id, "progress", storage=storage) == {"done": 1}
    await send_signal_async(run_id, "approve", True, storage=storage)
    await rt.tick()
    assert await get_state_async(run_id, "stage", storage=storage) == "approved"
    sets = [e.data for e in await storage.get_events(run_id) if e.type == "state.set"]
    # three activations replayed the first calls, none published them again
    assert [(d["key"], d["value"]) for d in sets] == [
        ("stage", "started"),
        ("progress", {"done": 0}),
        ("progress", {"done": 1}),
        ("stage", "approved"),
    ]


async def test_get_state_with_a_timeout_waits_for_the_first_publication(storage: StorageBackend) -> None:
    rt = LocalRuntime(storage)
    run, _ = await create_run(storage, definition_of(publishes), (), {})

    async def later() -> None:
        await asyncio.sleep(0.05)
        await rt.resume(run.run_id)

    value, _ = await asyncio.gather(get_state_async(run.run_id, "stage", timeout=10, storage=storage), later())
    assert value == "started"
    with pytest.raises(TimeoutError, match="'nope'"):
        await get_state_async(run.run_id, "nope", timeout=0.05, storage=storage)
    with pytest.raises(RunNotFoundError):
        await get_state_async("no-such-run", "stage", storage=storage)
    with pytest.raises(ValueError, match="timeout"):
        await get_state_async(run.run_id, "stage", timeout=-1, storage=storage)


async def test_get_state_of_a_run_that_finished_without_it_fails_at_once(storage: StorageBackend) -> None:
    rt = runtime(storage)
    run_id = await rt.start(one)
    await send_signal_async(run_id, "go", storage=storage)
    await rt.tick()
    with pytest.raises(TimeoutError, match="finished"):
        await get_state_async(run_id, "stage", timeout=30, storage=storage)


# -- webhooks --------------------------------------------------------------------------------


async def test_a_webhook_token_is_recorded_once_and_finds_its_run(storage: StorageBackend) -> None:
    from pyworkflow.webhooks import find_webhook

    rt = runtime(storage)
    run_id = await rt.start(with_webhook)
    token = await get_state_async(run_id, "token", storage=storage)
    assert token.startswith(f"{run_id}.") and len(token.split(".", 1)[1]) >= 22  # ≥ 128 random bits
    target = await find_webhook(storage, token)
    assert target is not None and (target.run_id, target.name, target.secret) == (run_id, "paid", "s3cret")
    assert await find_webhook(storage, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert await find_webhook(storage, "not a token") is None
    await send_signal_async(run_id, "paid", {"amount": 5}, storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.result == {"token": token, "body": {"amount": 5}, "other": True}
    created = [e for e in await storage.get_events(run_id) if e.type == "webhook.created"]
    assert len(created) == 2  # replays returned the recorded token


# -- misuse ----------------------------------------------------------------------------------


async def test_workflow_only_calls_refuse_other_places() -> None:
    with pytest.raises(RuntimeError, match="workflow code"):
        await wait_for_signal("go")
    with pytest.raises(RuntimeError, match="workflow code"):
        set_state("k", 1)
    with pytest.raises(RuntimeError, match="workflow code"):
        await create_webhook("x")
    with pytest.raises(ValueError, match="wait_for_signal"):
        await wait_for_signal("")
    with pytest.raises(ValueError, match="set_state"):
        set_state("x" * 300, 1)


async def test_run_local_returns_on_a_wait_without_timeout_and_skips_time_with_one(storage: StorageBackend) -> None:
    from pyworkflow.testing import run_local

    waiting = await run_local(one, storage=storage)
    assert await status(storage, waiting) == "suspended"
    timed = await run_local(timeout_default, storage=storage)
    assert (await storage.get_run(timed)).result == "timed out"  # type: ignore[union-attr]


async def test_a_thousand_signals_in_order(storage: StorageBackend) -> None:
    rt = runtime(storage)
    n = 300 if type(storage).__name__ != "InMemoryStorageBackend" else 1000
    run_id = await rt.start(many, n)
    for i in range(n):
        await send_signal_async(run_id, "tick", i, storage=storage)
    run = await rt.run_until_complete(run_id)
    assert run.result == list(range(n))


def test_exports() -> None:
    for name in ("wait_for_signal", "send_signal", "send_signal_async", "get_state", "get_state_async", "set_state"):
        assert callable(getattr(pyworkflow, name))
    assert issubclass(pyworkflow.SignalTimeoutError, TimeoutError)
    assert timedelta  # the timeout accepts what sleep accepts (checked above with "1h", 60, "10m")
