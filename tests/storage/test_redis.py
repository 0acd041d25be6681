"""What the contract suite cannot see about the Redis backend.

Corruption, URL handling and password redaction, key prefixes, the lazily made client,
one round trip per operation, and races between real processes. The ``fake`` tests run
the storage-only contract checks on fakeredis (needs ``lupa`` for Lua) in milliseconds;
the rest need the real server (skipped locally without one, failed in CI).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import tests.storage.test_contract as contract
from pyworkflow.errors import ConfigurationError, CorruptedStorageError, SequenceConflictError
from pyworkflow.storage.redis import KEYS, RedisStorageBackend
from tests import services
from tests.storage.test_contract import ev, make_run, new_run

Factory = Callable[[], RedisStorageBackend]


def _delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _keys(prefix: str) -> set[str]:
    import redis

    client = redis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    try:
        return set(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    services.require_redis()
    name = f"pwtest:{uuid.uuid4().hex[:12]}"
    yield name
    _delete_prefix(name)


@pytest.fixture
async def real(prefix: str) -> AsyncIterator[RedisStorageBackend]:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    yield backend
    await backend.close()


@pytest.fixture
async def raw() -> AsyncIterator[Any]:
    """A plain client on the test database, to damage and inspect what the backend wrote."""
    import redis.asyncio

    services.require_redis()
    client = redis.asyncio.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[RedisStorageBackend]:
    fakeredis = pytest.importorskip("fakeredis")
    pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")
    client = fakeredis.FakeAsyncRedis()
    backend = RedisStorageBackend(prefix="unit", client=client)
    yield backend
    await backend.close()
    await client.aclose()


# -- the contract on fakeredis ------------------------------------------------------------

_STORAGE_ONLY = sorted(
    name
    for name, fn in vars(contract).items()
    if name.startswith("test_") and list(inspect.signature(fn).parameters) == ["storage"]
)


@pytest.mark.parametrize("check", _STORAGE_ONLY)
async def test_contract_on_fakeredis(fake: RedisStorageBackend, check: str) -> None:
    await getattr(contract, check)(fake)


async def test_one_round_trip_per_operation(fake: RedisStorageBackend) -> None:
    client = fake._redis().client
    run = await new_run(fake)
    seq = 1

    async def append() -> None:
        nonlocal seq
        seq += 1
        await fake.append_events(run.run_id, [ev(seq)], run_changes={"status": "suspended", "wake_at": None})

    now = datetime.now(UTC)
    ops: dict[str, Callable[[], Awaitable[Any]]] = {
        "create_run": lambda: fake.create_run(make_run(key="same"), [ev(1)]),
        "append_events": append,
        "update_run": lambda: fake.update_run(run.run_id, status="running"),
        "get_run": lambda: fake.get_run(run.run_id),
        "get_events": lambda: fake.get_events(run.run_id),
        "list_runs": lambda: fake.list_runs(status="running", workflow_name="wf", created_after=now, limit=5),
        "delete_run": lambda: fake.delete_run("missing"),
        "claim_due_timers": lambda: fake.claim_due_timers(now),
        "acquire_lease": lambda: fake.acquire_lease(run.run_id, "w", 30),
        "recover_expired_leases": lambda: fake.recover_expired_leases(),
        "post_message": lambda: fake.post_message(run.run_id, "signal", {"n": 1}, idempotency_key="k"),
        "get_messages": lambda: fake.get_messages(run.run_id, pending_only=False),
        "begin_activation": lambda: fake.begin_activation(run.run_id, "w", 30, now=now),
        "get_timer": lambda: fake.get_timer(run.run_id),
    }
    calls: list[str] = []
    real_execute = client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await real_execute(*args, **options)

    client.execute_command = counting
    try:
        for name, op in ops.items():
            await op()  # the first call of a script on a fresh server also loads it
            calls.clear()
            await op()
            assert len(calls) == 1, f"{name} took {calls}"
    finally:
        client.execute_command = real_execute


async def test_runs_created_in_the_same_microsecond_page_in_order(fake: RedisStorageBackend) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    made = [await new_run(fake, created_at=when) for _ in range(5)]
    made.append(await new_run(fake, created_at=when - timedelta(microseconds=1)))
    seen: list[str] = []
    cursor = None
    while True:
        page = await fake.list_runs(limit=2, cursor=cursor, created_after=when - timedelta(seconds=1))
        seen += [r.run_id for r in page.runs]
        if (cursor := page.next_cursor) is None:
            break
    expected = sorted(made, key=lambda r: (r.created_at, r.run_id), reverse=True)
    assert seen == [r.run_id for r in expected]
    exact = await fake.list_runs(created_after=when - timedelta(microseconds=1), created_before=when)
    assert exact.runs == []


async def test_deleting_every_run_leaves_no_keys(fake: RedisStorageBackend) -> None:
    runs = [await new_run(fake, key=f"k{i}", workflow=f"wf{i % 2}") for i in range(4)]
    for run in runs:
        await fake.append_events(run.run_id, [ev(2)], run_changes={"status": "suspended"})
        await fake.update_run(run.run_id, wake_at=datetime.now(UTC))
        await fake.post_message(run.run_id, "signal", {"n": 1}, idempotency_key="once")
        assert await fake.acquire_lease(run.run_id, "w", 30) is not None
    await fake.update_run(runs[0].run_id, status="completed")
    for run in runs:
        assert await fake.delete_run(run.run_id)
    client = fake._redis().client
    assert await client.keys("*") == []


async def test_events_longer_than_one_lua_chunk(fake: RedisStorageBackend) -> None:
    run = await new_run(fake)
    batch = [ev(seq) for seq in range(2, 2502)]
    await fake.append_events(run.run_id, batch)
    events = await fake.get_events(run.run_id, after_seq=1200, limit=5)
    assert [e.seq for e in events] == [1201, 1202, 1203, 1204, 1205]
    assert len(await fake.get_events(run.run_id)) == 2501


async def test_message_payload_is_stored_as_the_text_posted(fake: RedisStorageBackend) -> None:
    run = await new_run(fake)
    payload = {"big": 2**70, "tiny": 1e-7, "empty_list": [], "empty_obj": {}, "text": "é\u2028"}
    await fake.post_message(run.run_id, "signal", payload)
    stored = await fake._redis().client.hget(KEYS["inbox"].format(p=fake.prefix, run_id=run.run_id), "1")
    assert b'"big":1180591620717411303424' in stored and b'"empty_list":[],"empty_obj":{}' in stored
    (message,) = await fake.get_messages(run.run_id)
    assert message.payload == payload and message.seq == 1 and not message.consumed


async def test_consumed_messages_leave_the_pending_set(fake: RedisStorageBackend) -> None:
    run = await new_run(fake)
    for i in range(3):
        await fake.post_message(run.run_id, "signal", i)
    got = await fake.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))
    assert got.lease is not None
    await fake.append_events(run.run_id, [ev(2)], lease_token=got.lease.token, consume=[1, 3, 7])
    pending = KEYS["pending"].format(p=fake.prefix, run_id=run.run_id)
    assert await fake._redis().client.zrange(pending, 0, -1) == [b"2"]
    every = await fake.get_messages(run.run_id, pending_only=False)
    assert [(m.seq, m.consumed) for m in every] == [(1, True), (2, False), (3, True)]


async def test_separator_bytes_in_names_and_data_round_trip() -> None:
    """Scripts take a header joined by US and events joined by RS: strings a caller
    chooses travel apart, and JSON escapes control characters, so neither can split."""
    fakeredis = pytest.importorskip("fakeredis")
    pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")
    client = fakeredis.FakeAsyncRedis()
    odd = "\x1e\x1f:1:x"
    backend = RedisStorageBackend(prefix=f"p{odd}", client=client)
    try:
        run = make_run(workflow=f"wf{odd}", key=f"key{odd}")
        run = run.model_copy(update={"run_id": f"run{odd}"})
        made, created = await backend.create_run(run, [ev(1, "workflow.started", text=f"a{odd}b")])
        assert created and made == run
        again, created = await backend.create_run(make_run(workflow=f"wf{odd}", key=f"key{odd}"), [])
        assert not created and again.run_id == run.run_id
        got = await backend.begin_activation(run.run_id, f"owner{odd}", 30, now=datetime.now(UTC))
        assert got.lease is not None and got.lease.owner == f"owner{odd}"
        assert got.events[0].data == {"text": f"a{odd}b"}
        await backend.post_message(run.run_id, "signal", odd, idempotency_key=f"m{odd}")
        await backend.append_events(
            run.run_id,
            [ev(2, x=odd), ev(3, y=[odd, 2**70])],
            lease_token=got.lease.token,
            run_changes={"status": "suspended", "result": {"r": odd}},
            consume=[1],
            release_lease=True,
        )
        assert [e.data for e in await backend.get_events(run.run_id, after_seq=1)] == [{"x": odd}, {"y": [odd, 2**70]}]
        stored = await backend.get_run(run.run_id)
        assert stored is not None and stored.status == "suspended" and stored.result == {"r": odd}
        assert [r.run_id for r in (await backend.list_runs(workflow_name=f"wf{odd}", status="suspended")).runs] == [
            run.run_id
        ]
        assert [m.consumed for m in await backend.get_messages(run.run_id, pending_only=False)] == [True]
        assert await backend.delete_run(run.run_id)
        assert await client.keys("*") == []
    finally:
        await backend.close()
        await client.aclose()


async def test_an_operation_that_times_out_leaves_the_client_usable(real: RedisStorageBackend) -> None:
    from redis.exceptions import TimeoutError as RedisTimeoutError

    run = await new_run(real)
    scripts = real._redis()
    options = scripts.client.connection_pool.connection_kwargs
    assert options["socket_timeout"] is None and options["socket_connect_timeout"] == 5.0
    assert scripts.timeout == 5.0
    object.__setattr__(scripts, "timeout", 1e-9)
    try:
        with pytest.raises(RedisTimeoutError):
            for _ in range(100):  # the reply may beat the clock: try until it does not
                await real.get_run(run.run_id)
    finally:
        object.__setattr__(scripts, "timeout", 5.0)
    # The cancelled command's connection was dropped: no caller reads another's reply.
    for _ in range(20):
        assert await real.get_run(run.run_id) == run
        assert [e.seq for e in await real.get_events(run.run_id)] == [1]


async def test_a_socket_timeout_in_the_url_keeps_the_clients_own_timeouts(prefix: str) -> None:
    backend = RedisStorageBackend(f"{services.REDIS_URL}?socket_timeout=7", prefix=prefix)
    try:
        scripts = backend._redis()
        assert scripts.timeout is None
        assert scripts.client.connection_pool.connection_kwargs["socket_timeout"] == 7.0
        assert await backend.get_run("missing") is None
    finally:
        await backend.close()


# -- corruption ---------------------------------------------------------------------------


async def test_garbage_in_a_run_record_is_an_error_naming_the_run(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await raw.hset(KEYS["run"].format(p=real.prefix, run_id=run.run_id), "input", "{not json")
    with pytest.raises(CorruptedStorageError, match=run.run_id) as info:
        await real.get_run(run.run_id)
    assert info.value.run_id == run.run_id
    assert (await real.list_runs()).runs == []  # skipped and reported
    assert await real.list_unreadable_runs() == [run.run_id]
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.update_run(run.run_id, status="running")


async def test_a_field_that_smuggles_in_other_fields_is_an_error(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    # Valid JSON once spliced into the record, but not one value: it must not pass.
    await raw.hset(KEYS["run"].format(p=real.prefix, run_id=run.run_id), "error", 'null,"status":"completed"')
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.get_run(run.run_id)


async def test_a_record_that_misses_fields_is_an_error(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await raw.hdel(KEYS["run"].format(p=real.prefix, run_id=run.run_id), "workflow_name")
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.get_run(run.run_id)


async def test_garbage_in_the_event_log_is_an_error_naming_the_run(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await real.append_events(run.run_id, [ev(2), ev(3)])
    await raw.lset(KEYS["events"].format(p=real.prefix, run_id=run.run_id), 1, '{"seq": 2, "type"')
    with pytest.raises(CorruptedStorageError, match=run.run_id) as info:
        await real.get_events(run.run_id)
    assert info.value.run_id == run.run_id
    assert [e.seq for e in await real.get_events(run.run_id, after_seq=2)] == [3]


async def test_an_event_log_out_of_sequence_is_an_error(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await raw.rpush(KEYS["events"].format(p=real.prefix, run_id=run.run_id), ev(7).to_json())
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.get_events(run.run_id)
    with pytest.raises(CorruptedStorageError, match="log holds 2 events"):
        await real.append_events(run.run_id, [ev(2)])


async def test_a_log_without_a_record_is_not_reused(real: RedisStorageBackend, raw: Any) -> None:
    run = contract.make_run()
    await raw.rpush(KEYS["events"].format(p=real.prefix, run_id=run.run_id), ev(1).to_json())
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.create_run(run, [ev(1)])
    assert await real.get_run(run.run_id) is None


async def test_a_key_of_the_wrong_type_is_corruption(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    events_key = KEYS["events"].format(p=real.prefix, run_id=run.run_id)
    await raw.delete(events_key)
    await raw.set(events_key, "a string, not a list")
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.get_events(run.run_id)
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.append_events(run.run_id, [ev(2)], run_changes={"status": "running"})
    got = await real.get_run(run.run_id)
    assert got is not None and got.status == "pending", "a failed append must write nothing"


async def test_a_damaged_last_seq_refuses_appends(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await raw.hset(KEYS["run"].format(p=real.prefix, run_id=run.run_id), "@seq", "many")
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.append_events(run.run_id, [ev(2)])
    assert len(await raw.lrange(KEYS["events"].format(p=real.prefix, run_id=run.run_id), 0, -1)) == 1


async def test_garbage_in_a_message_is_an_error_naming_the_run(real: RedisStorageBackend, raw: Any) -> None:
    run = await new_run(real)
    await real.post_message(run.run_id, "signal", {"x": 1})
    await raw.hset(KEYS["inbox"].format(p=real.prefix, run_id=run.run_id), "1", "{not json")
    with pytest.raises(CorruptedStorageError, match=f"{run.run_id}.*message 1") as info:
        await real.get_messages(run.run_id)
    assert info.value.run_id == run.run_id
    with pytest.raises(CorruptedStorageError, match=run.run_id):
        await real.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))


# -- URLs, prefixes, the client -------------------------------------------------------------


def test_password_never_shows() -> None:
    for url in (
        "redis://:s3cret@127.0.0.1:6379/15",
        "redis://user:s3cret@127.0.0.1:6379/15",
        "rediss://user:s3cret@example.com:6380/0?ssl_cert_reqs=none",
        "redis://127.0.0.1:6379/15?password=s3cret",
    ):
        backend = RedisStorageBackend(url)
        assert "s3cret" not in backend.url and "s3cret" not in repr(backend), backend.url
        assert "***" in backend.url
    assert RedisStorageBackend("redis://:s3cret@127.0.0.1:6379/15").url == "redis://:***@127.0.0.1:6379/15"
    with pytest.raises(ConfigurationError) as info:
        RedisStorageBackend("http://:s3cret@127.0.0.1/")
    assert "s3cret" not in str(info.value)


def test_from_url_reads_the_prefix() -> None:
    backend = RedisStorageBackend.from_url("redis://:pw@127.0.0.1:6379/15?prefix=orders")
    assert backend.prefix == "orders"
    assert backend.url == "redis://:***@127.0.0.1:6379/15?prefix=orders"
    assert RedisStorageBackend.from_url(backend.url).prefix == "orders"
    assert RedisStorageBackend.from_url("rediss://127.0.0.1:6380/0").prefix == "pyworkflow"
    assert RedisStorageBackend("redis://127.0.0.1/0?prefix=orders", prefix="orders").prefix == "orders"
    with pytest.raises(ConfigurationError, match="two key prefixes"):
        RedisStorageBackend("redis://127.0.0.1/0?prefix=orders", prefix="billing")
    with pytest.raises(ConfigurationError):
        RedisStorageBackend.from_url("postgresql://127.0.0.1/db")


async def test_from_url_prefix_names_every_key(prefix: str) -> None:
    backend = RedisStorageBackend.from_url(f"{services.REDIS_URL}?prefix={prefix}")
    try:
        run = await new_run(backend, key="k")
        await backend.update_run(run.run_id, wake_at=datetime.now(UTC))
        assert await backend.acquire_lease(run.run_id, "w", 30) is not None
    finally:
        await backend.close()
    written = _keys(prefix)
    assert KEYS["run"].format(p=prefix, run_id=run.run_id) in written
    assert len(written) >= 9


async def test_two_prefixes_do_not_see_each_other(prefix: str) -> None:
    other_prefix = f"{prefix}-other"
    first = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    second = RedisStorageBackend(services.REDIS_URL, prefix=other_prefix)
    try:
        mine = await new_run(first, key="shared-key")
        theirs, created = await second.create_run(make_run(key="shared-key"), [])
        assert created and theirs.run_id != mine.run_id
        assert [r.run_id for r in (await first.list_runs()).runs] == [mine.run_id]
        assert [r.run_id for r in (await second.list_runs()).runs] == [theirs.run_id]
        assert await second.get_run(mine.run_id) is None
        await first.update_run(mine.run_id, wake_at=datetime.now(UTC) - timedelta(seconds=1))
        assert await second.claim_due_timers(datetime.now(UTC)) == []
    finally:
        await first.close()
        await second.close()
        _delete_prefix(other_prefix)


def _pool_connections(backend: RedisStorageBackend) -> list[Any]:
    """Every connection of every client the backend holds."""
    pools = [c.scripts.client.connection_pool for c in backend._clients._clients.values()]
    return [conn for pool in pools for conn in (*pool._available_connections, *pool._in_use_connections)]


def test_client_is_made_lazily_in_each_running_loop(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)  # no loop runs here
    assert len(backend._clients) == 0
    RedisStorageBackend("redis://127.0.0.1:1/0")  # nothing connects at construction

    async def use() -> str:
        return (await new_run(backend)).run_id

    first_loop, second_loop = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        run_id = first_loop.run_until_complete(use())
        assert second_loop.run_until_complete(backend.get_run(run_id)) is not None
        assert first_loop.run_until_complete(backend.get_run(run_id)) is not None
        assert len(backend._clients) == 2
        # closes its own loop's client here and the idle second loop's by running it briefly
        first_loop.run_until_complete(backend.close())
        assert len(backend._clients) == 0
    finally:
        first_loop.close()
        second_loop.close()
    gc.collect()  # an unclosed connection would warn here (warnings are errors in tests)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(backend.get_run(run_id))


def test_one_instance_serves_successive_asyncio_runs(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)

    async def make() -> str:
        return (await new_run(backend)).run_id

    first = asyncio.run(make())
    assert len(backend._clients) == 0, "asyncio.run's shutdown closes and drops the loop's client"
    second = asyncio.run(make())
    assert asyncio.run(backend.get_run(first)) is not None
    asyncio.run(backend.close())
    gc.collect()
    assert first != second


def test_one_instance_serves_two_threads_at_once(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    run_id = asyncio.run(new_run(backend)).run_id
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        async def main() -> None:
            barrier.wait(timeout=30)
            for i in range(20):
                await backend.post_message(run_id, "signal", {"w": worker, "i": i})
                await backend.get_messages(run_id)

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    messages = asyncio.run(backend.get_messages(run_id))
    assert [m.seq for m in messages] == list(range(1, 41))
    asyncio.run(backend.close())
    gc.collect()


def test_close_reaches_a_loop_running_on_another_thread(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        run = asyncio.run_coroutine_threadsafe(new_run(backend), loop).result(30)
        connections = _pool_connections(backend)
        assert connections and all(c.is_connected for c in connections)
        asyncio.run(backend.close())  # from this thread's own loop
        assert not any(c.is_connected for c in connections)
        with pytest.raises(RuntimeError, match="closed"):
            asyncio.run_coroutine_threadsafe(backend.get_run(run.run_id), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
    gc.collect()


def test_a_loop_closed_without_shutdown_leaves_nothing_to_warn(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    for _ in range(2):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(new_run(backend))
        loop.close()  # no shutdown_asyncgens: the client's connection is still open
    # a new loop drops the clients of closed loops; close() handles what is left
    assert asyncio.run(backend.list_runs()).runs
    loop = asyncio.new_event_loop()
    loop.run_until_complete(new_run(backend))
    loop.close()
    asyncio.run(backend.close())
    gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_makes_its_own_client(prefix: str) -> None:
    backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    loop = asyncio.new_event_loop()
    try:
        run_id = loop.run_until_complete(new_run(backend)).run_id
        parent_client = id(loop.run_until_complete(_current_client(backend)))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, never return into pytest
            code = 1
            try:
                mine = id(loop.run_until_complete(_current_client(backend)))
                found = loop.run_until_complete(backend.get_run(run_id)) is not None
                posted = asyncio.run(backend.post_message(run_id, "from-child"))
                os.write(write, f"{mine != parent_client} {found} {posted}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        report = os.read(read, 1000).decode()
        os.close(read)
        assert status == 0 and report == f"True True {run_id}:1"
        # the parent's connection was neither used nor closed by the child
        assert loop.run_until_complete(backend.get_run(run_id)) is not None
        assert id(loop.run_until_complete(_current_client(backend))) == parent_client
        loop.run_until_complete(backend.close())
    finally:
        loop.close()


async def _current_client(backend: RedisStorageBackend) -> Any:
    return backend._redis().client


def test_missing_redis_package_is_a_configuration_error() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from pyworkflow.errors import ConfigurationError\n"
        "try:\n"
        "    import pyworkflow.storage.redis\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'pyworkflow-celery[redis]'" in out.stdout


# -- real processes -------------------------------------------------------------------------

PROCESSES = 20
#: Starting 20 interpreters takes seconds on an idle machine and far longer on a loaded
#: CI box; the race itself is milliseconds. Generous, so only a hang fails.
RACE_DEADLINE = 240.0


def _in_process(prefix: str, job: str, arg: str, barrier: Any, results: Any) -> None:
    """One spawned process: its own interpreter, loop and backend."""

    async def main() -> Any:
        backend = RedisStorageBackend(services.REDIS_URL, prefix=prefix)
        try:
            await backend.get_run("warm-up")  # connect before the race, not during it
            barrier.wait(timeout=RACE_DEADLINE)
            if job == "create":
                run, created = await backend.create_run(make_run(key="one-key"), [ev(1, "workflow.started")])
                return [run.run_id, created]
            try:
                await backend.append_events(arg, [ev(2, "step.completed", writer=str(uuid.uuid4()))])
                return True
            except SequenceConflictError:
                return False
        finally:
            await backend.close()

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        results.put(f"error: {exc!r}")


def _race(prefix: str, job: str, arg: str = "") -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_in_process, args=(prefix, job, arg, barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    out: list[Any] = []
    deadline = time.monotonic() + RACE_DEADLINE
    try:
        while len(out) < PROCESSES:
            try:
                out.append(results.get(timeout=0.5))
            except queue.Empty:
                # A process that died before reporting would otherwise hold us to the deadline.
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise AssertionError(f"{len(out)} of {PROCESSES} processes reported; exit codes {dead}") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return out


@pytest.mark.timeout(RACE_DEADLINE + 60)
async def test_processes_creating_with_one_key_make_one_run(prefix: str, real: RedisStorageBackend) -> None:
    results = await asyncio.to_thread(_race, prefix, "create")
    assert [r for r in results if isinstance(r, str)] == []
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    page = await real.list_runs()
    assert [r.run_id for r in page.runs] == [results[0][0]]
    assert len(await real.get_events(results[0][0])) == 1


@pytest.mark.timeout(RACE_DEADLINE + 60)
async def test_processes_racing_appends_have_one_winner(prefix: str, real: RedisStorageBackend) -> None:
    run = await new_run(real)
    results = await asyncio.to_thread(_race, prefix, "append", run.run_id)
    assert [r for r in results if isinstance(r, str)] == []
    assert results.count(True) == 1
    assert [e.seq for e in await real.get_events(run.run_id)] == [1, 2]
