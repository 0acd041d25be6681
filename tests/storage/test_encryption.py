"""Encryption at rest (``PYWORKFLOW_ENCRYPTION_KEY``), proved on every backend.

A run through :class:`EncryptedStorage` completes and replays like a plaintext one; the
raw store holds none of its secrets (event logs, records, inbox, and the bytes on disk or
in the server); keys rotate; a wrong or missing key gives an error naming the run and
the remedy, never garbage; a store written before encryption still reads; a malformed
key is refused naming the variable and the key's position, never the key. The whole
storage contract also runs over the wrapper (``encrypted-*`` ids in conftest.py).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pyworkflow import sleep, step, workflow
from pyworkflow.clock import VirtualClock
from pyworkflow.dispatch import run_dispatched_step
from pyworkflow.engine import activate
from pyworkflow.errors import ConfigurationError, CorruptedStorageError, EncryptionError
from pyworkflow.local import LocalRuntime
from pyworkflow.storage import storage_from_url
from pyworkflow.storage.base import RunStatus, StorageBackend
from pyworkflow.storage.encrypted import (
    ENCRYPTED_FIELDS,
    EncryptedStorage,
    Encryptor,
    is_envelope,
    parse_keys,
)
from tests import services

cryptography = pytest.importorskip("cryptography")
from cryptography.fernet import Fernet, InvalidToken  # noqa: E402

Factory = Callable[[], StorageBackend]
UTC = timezone.utc
MARK = "pwTOPSECRETmark"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()


@step(name="enc.stamp")
async def stamp(text: str) -> str:
    return f"{text}|{MARK}-stepresult"


@step(name="enc.remote", queue="remote")
async def remote(text: str) -> str:
    return f"{text}|{MARK}-remoteresult"


@workflow(name="enc.flow")
async def flow(secret: str) -> dict[str, str]:
    stamped = await stamp(f"{MARK}-steparg")
    await sleep("1h")
    return {"stamped": stamped, "result": f"{secret}|{MARK}-wfresult"}


@workflow(name="enc.dispatching")
async def dispatching(secret: str) -> str:
    return await remote(f"{secret}|{MARK}-remotearg")


@workflow(name="enc.plain_then_encrypted")
async def plain_then_encrypted(secret: str) -> str:
    first = await stamp(secret)
    await sleep("1h")
    return await stamp(first)


# -- the raw store ------------------------------------------------------------------------


async def raw_store(backend_name: str, inner: StorageBackend, run_ids: list[str]) -> str:
    """Everything the store holds for these runs, as the backend wrote it: the bytes on
    disk (file, SQLite), the server's raw values (Redis, PostgreSQL), or the stored
    models (memory)."""
    if backend_name == "memory":
        parts = []
        for run_id in run_ids:
            run = await inner.get_run(run_id)
            assert run is not None
            parts.append(run.model_dump_json())
            parts += [e.model_dump_json() for e in await inner.get_events(run_id)]
            parts += [m.model_dump_json() for m in await inner.get_messages(run_id, pending_only=False)]
        return "\n".join(parts)
    if backend_name == "file":
        root = Path(inner.root)  # type: ignore[attr-defined]
        return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())
    if backend_name == "sqlite":
        path = Path(inner.path)  # type: ignore[attr-defined]
        files = [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")]
        raw = "\n".join(f.read_bytes().decode("latin-1") for f in files if f.exists())
        with sqlite3.connect(path) as db:
            dump = "\n".join(db.iterdump())
        db.close()
        assert run_ids[0] in dump  # the dump holds the runs we look for
        return raw + "\n" + dump
    if backend_name == "redis":
        import redis

        client = redis.Redis.from_url(services.REDIS_URL)
        parts = []
        try:
            for key in client.scan_iter(match=f"{inner.prefix}:*", count=1000):  # type: ignore[attr-defined]
                kind = client.type(key).decode()
                if kind == "string":
                    parts.append(repr(client.get(key)))
                elif kind == "hash":
                    parts.append(repr(client.hgetall(key)))
                elif kind == "list":
                    parts.append(repr(client.lrange(key, 0, -1)))
                elif kind == "zset":
                    parts.append(repr(client.zrange(key, 0, -1, withscores=True)))
                elif kind == "set":
                    parts.append(repr(client.smembers(key)))
                else:
                    parts.append(repr(client.dump(key)))
        finally:
            client.close()
        raw = "\n".join(parts)
        assert run_ids[0] in raw
        return raw
    if backend_name == "postgres":
        import psycopg

        schema = inner.schema  # type: ignore[attr-defined]
        with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
            rows = []
            for table in ("runs", "events", "messages"):
                rows += [r[0] for r in conn.execute(f'SELECT t::text FROM "{schema}".{table} t').fetchall()]
        raw = "\n".join(rows)
        assert run_ids[0] in raw
        return raw
    raise AssertionError(backend_name)


async def assert_envelopes(inner: StorageBackend, run_id: str) -> None:
    """Through the inner backend: every encrypted field is an envelope, every readable
    one is not."""
    run = await inner.get_run(run_id)
    assert run is not None
    assert is_envelope(run.input)
    assert run.result is None or is_envelope(run.result)
    assert run.workflow_name and MARK not in run.workflow_name
    sealed = 0
    for event in await inner.get_events(run_id):
        for name in ENCRYPTED_FIELDS.get(event.type, ()):
            value = event.data.get(name)
            assert value is None or is_envelope(value), (event.seq, event.type, name, value)
            sealed += value is not None
        assert isinstance(event.seq, int) and isinstance(event.timestamp, datetime)
    assert sealed >= 3
    for message in await inner.get_messages(run_id, pending_only=False):
        assert message.payload is None or is_envelope(message.payload)


# -- a run, end to end --------------------------------------------------------------------


async def test_a_run_completes_and_replays_with_the_plaintext_result_and_no_plaintext_stored(
    make_backend: Factory, backend_name: str
) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    from pyworkflow.storage.memory import InMemoryStorageBackend

    reference = LocalRuntime(InMemoryStorageBackend(), clock=VirtualClock())  # the same run, in plaintext
    plain_id = await reference.start(flow, f"{MARK}-input")
    await reference.storage.post_message(plain_id, "note", {"text": f"{MARK}-message"})
    expected = (await reference.run_until_complete(plain_id)).result
    plain_types = [e.type for e in await reference.storage.get_events(plain_id)]

    inner = make_backend()
    try:
        storage = EncryptedStorage(make_backend(), KEY_A)
        runtime = LocalRuntime(storage, clock=VirtualClock())
        run_id = await runtime.start(flow, f"{MARK}-input")
        suspended = await storage.get_run(run_id)
        assert suspended is not None and suspended.status == RunStatus.SUSPENDED
        assert suspended.input == {"args": [f"{MARK}-input"], "kwargs": {}}
        # a message posted while it sleeps: stored in the inbox, then moved into the log
        await storage.post_message(run_id, "note", {"text": f"{MARK}-message"})
        [pending] = await storage.get_messages(run_id)
        assert pending.payload == {"text": f"{MARK}-message"}
        done = await runtime.run_until_complete(run_id)  # replays the step, wakes, completes
        assert done.status == RunStatus.COMPLETED and done.result == expected
        assert done.result == {
            "stamped": f"{MARK}-steparg|{MARK}-stepresult",
            "result": f"{MARK}-input|{MARK}-wfresult",
        }
        events = await storage.get_events(run_id)
        received = [e for e in events if e.type == "message.received"]
        assert [e.data["payload"] for e in received] == [{"text": f"{MARK}-message"}]
        assert [e.type for e in events] == plain_types

        # the raw store: envelopes where payloads were, and none of the secrets
        await assert_envelopes(inner, run_id)
        raw = await raw_store(backend_name, inner, [run_id])
        assert MARK not in raw
        # ... while a plaintext run written next to it shows what the check would find
        plain_run = await LocalRuntime(inner, clock=VirtualClock()).start(flow, f"{MARK}-input")
        assert MARK in await raw_store(backend_name, inner, [plain_run])
        # types, seqs, times and ids stay readable without a key
        readable = await inner.get_events(run_id)
        assert [e.type for e in readable] == [e.type for e in events]
        assert [e.seq for e in readable] == list(range(1, len(events) + 1))
    finally:
        await inner.close()


async def test_a_dispatched_step_and_its_outcome_message_are_encrypted(
    make_backend: Factory, backend_name: str
) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    inner = make_backend()
    storage = EncryptedStorage(inner, KEY_A)
    try:
        guard = timedelta(hours=1)
        runtime = LocalRuntime(storage)
        run_id = await runtime.start(dispatching, f"{MARK}-input")  # no guard: run inline once
        assert (await storage.get_run(run_id)).result == f"{MARK}-input|{MARK}-remotearg|{MARK}-remoteresult"  # type: ignore[union-attr]

        from pyworkflow.engine import create_run
        from pyworkflow.registry import definition_of

        run, _ = await create_run(storage, definition_of(dispatching), (f"{MARK}-input",), {})
        first = await activate(storage, run.run_id, dispatch_guard=guard)
        assert first.status == "suspended" and [d.step for d in first.dispatches] == ["enc.remote"]
        assert await run_dispatched_step(storage, run.run_id, 1, "enc.remote") == "completed"
        outcome = [m.payload for m in await storage.get_messages(run.run_id)]
        assert [p["type"] for p in outcome] == ["step.started", "step.completed"]
        raw_messages = await inner.get_messages(run.run_id)
        assert all(is_envelope(m.payload) for m in raw_messages) and len(raw_messages) == 2
        assert (await activate(storage, run.run_id, dispatch_guard=guard)).status == "completed"
        done = await storage.get_run(run.run_id)
        assert done is not None and done.result == f"{MARK}-input|{MARK}-remotearg|{MARK}-remoteresult"
        types = [e.type for e in await inner.get_events(run.run_id)]
        assert "step.dispatched" in types and "step.completed" in types
        await assert_envelopes(inner, run.run_id)
        assert MARK not in await raw_store(backend_name, inner, [run_id, run.run_id])
    finally:
        await storage.close()


@workflow(name="enc.signalled")
async def signalled() -> dict[str, Any]:
    from pyworkflow.signals import set_state, wait_for_signal
    from pyworkflow.webhooks import create_webhook

    hook = await create_webhook("approve", secret=f"{MARK}-hooksecret")
    set_state("progress", {"note": f"{MARK}-state"})
    got = await wait_for_signal("go")
    return {"got": got, "token": hook.token}


async def test_signals_published_state_and_webhooks_are_encrypted(
    make_backend: Factory, backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    from pyworkflow.signals import get_state_async, send_signal_async
    from pyworkflow.webhooks import find_webhook

    monkeypatch.setenv("PYWORKFLOW_WEBHOOK_BASE_URL", "https://hooks.example.com/in")
    inner = make_backend()
    storage = EncryptedStorage(inner, KEY_A)
    try:
        runtime = LocalRuntime(storage, clock=VirtualClock())
        run_id = await runtime.start(signalled)
        assert await get_state_async(run_id, "progress", storage=storage) == {"note": f"{MARK}-state"}
        await send_signal_async(run_id, "go", {"p": f"{MARK}-signal"}, storage=storage)
        done = await runtime.run_until_complete(run_id)
        assert done.result["got"] == {"p": f"{MARK}-signal"}
        token = done.result["token"]
        target = await find_webhook(storage, token)  # the webhooks app reads the token through the wrapper
        assert target is not None and target.run_id == run_id and target.secret == f"{MARK}-hooksecret"
        types = {e.type for e in await inner.get_events(run_id)}
        assert {"webhook.created", "state.set", "signal.received"} <= types
        await assert_envelopes(inner, run_id)
        raw = await raw_store(backend_name, inner, [run_id])
        assert MARK not in raw
        assert token.split(".", 1)[1] not in raw  # neither the token nor the URL that ends with it
    finally:
        await storage.close()


# -- keys ---------------------------------------------------------------------------------


async def test_keys_rotate_newest_first(make_backend: Factory, backend_name: str) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    inner = make_backend()
    try:
        with_a = EncryptedStorage(make_backend(), KEY_A)
        old = LocalRuntime(with_a, clock=VirtualClock())
        asleep = await old.start(flow, f"{MARK}-old")  # written with A, asleep
        finished = await old.start(flow, f"{MARK}-old-done")
        await old.run_until_complete(finished)

        # rotation: the new key first, the old one after it
        rotated = EncryptedStorage(make_backend(), f"{KEY_B}, {KEY_A}")
        new = LocalRuntime(rotated, clock=VirtualClock())
        fresh = await new.start(flow, f"{MARK}-new")
        await new.run_until_complete(asleep)  # an old run resumes under the new keys
        await new.run_until_complete(fresh)
        for run_id, secret in ((asleep, "old"), (finished, "old-done"), (fresh, "new")):
            run = await rotated.get_run(run_id)
            assert run is not None and run.status == RunStatus.COMPLETED
            assert run.result["result"] == f"{MARK}-{secret}|{MARK}-wfresult"
            assert run.input == {"args": [f"{MARK}-{secret}"], "kwargs": {}}
            assert [e.type for e in await rotated.get_events(run_id)][-1] == "workflow.completed"

        # new writes use B only: A alone cannot read them, B alone can
        raw_new = await inner.get_run(fresh)
        assert raw_new is not None
        token = raw_new.input["v"].encode()
        assert json.loads(Fernet(KEY_B.encode()).decrypt(token)) == {"args": [f"{MARK}-new"], "kwargs": {}}
        with pytest.raises(InvalidToken):
            Fernet(KEY_A.encode()).decrypt(token)
        with pytest.raises(EncryptionError):
            await with_a.get_run(fresh)
        # the old run's record was rewritten with B when it completed; its first events keep A
        old_events = await inner.get_events(asleep)
        started = old_events[0].data["input"]["v"].encode()
        Fernet(KEY_A.encode()).decrypt(started)
        completed = old_events[-1].data["result"]["v"].encode()
        Fernet(KEY_B.encode()).decrypt(completed)
        # once every run written with A is gone (or rewritten), A may be dropped
        only_b = EncryptedStorage(make_backend(), KEY_B)
        assert (await only_b.get_run(fresh)) is not None
        with pytest.raises(EncryptionError):
            await only_b.get_events(asleep)
        assert MARK not in await raw_store(backend_name, inner, [asleep, finished, fresh])
    finally:
        await inner.close()


async def test_a_wrong_key_names_the_run_and_the_remedy_never_garbage(
    make_backend: Factory, backend_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    inner = make_backend()
    try:
        writer = LocalRuntime(EncryptedStorage(make_backend(), KEY_A), clock=VirtualClock())
        run_id = await writer.start(flow, f"{MARK}-input")
        await writer.storage.post_message(run_id, "note", {"text": MARK})
        wrong = EncryptedStorage(make_backend(), f"{KEY_C},{KEY_B}")

        for call, what in (
            (wrong.get_run(run_id), "run input"),
            (wrong.get_events(run_id), "event seq 1 (workflow.started) field 'input'"),
            (wrong.get_messages(run_id), "message 1 payload"),
        ):
            with pytest.raises(EncryptionError) as info:
                await call
            message = str(info.value)
            assert run_id in message and what in message, message
            assert "none of the 2 configured keys decrypts it" in message
            assert "set PYWORKFLOW_ENCRYPTION_KEY to the key the run was written with" in message
            assert KEY_A not in message and KEY_B not in message and KEY_C not in message
            assert info.value.run_id == run_id  # type: ignore[attr-defined]
            assert isinstance(info.value, CorruptedStorageError)  # unreadable: retrying cannot fix it

        # an activation refuses before running anything, and gives the lease back
        before = await inner.get_events(run_id)
        with pytest.raises(EncryptionError, match=run_id):
            await LocalRuntime(wrong, clock=VirtualClock(datetime.now(UTC) + timedelta(days=1))).resume(run_id)
        assert await inner.get_events(run_id) == before
        lease = await inner.acquire_lease(run_id, "someone", 10)
        assert lease is not None, "the lease must be released after the refusal"
        await inner.release_lease(lease)

        # listings skip it (and say so); list_unreadable_runs names it
        other = await LocalRuntime(wrong, clock=VirtualClock()).start(flow, "readable with the wrong key's writer")
        with caplog.at_level(logging.WARNING):
            listed = [r.run_id for r in (await wrong.list_runs(limit=100)).runs]
        assert other in listed and run_id not in listed
        assert await wrong.list_unreadable_runs() == [run_id]
        assert await EncryptedStorage(inner, f"{KEY_A},{KEY_C}").list_unreadable_runs() == []

        # the right key reads everything again: nothing was damaged
        right = EncryptedStorage(make_backend(), KEY_A)
        done = await LocalRuntime(right, clock=VirtualClock()).run_until_complete(run_id)
        assert done.result["result"] == f"{MARK}-input|{MARK}-wfresult"
    finally:
        await inner.close()


async def test_a_missing_key_on_an_encrypted_store_is_a_clear_error(make_backend: Factory, backend_name: str) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    inner = make_backend()
    try:
        run_id = await LocalRuntime(EncryptedStorage(make_backend(), KEY_A), clock=VirtualClock()).start(flow, "x")
        reader = EncryptedStorage(inner)  # no key: writes plaintext, refuses envelopes
        with pytest.raises(EncryptionError) as info:
            await reader.get_run(run_id)
        message = str(info.value)
        assert run_id in message and "run input" in message
        assert "no key is configured (PYWORKFLOW_ENCRYPTION_KEY is not set)" in message
        assert "set PYWORKFLOW_ENCRYPTION_KEY to the key the run was written with" in message
        with pytest.raises(EncryptionError, match=r"event seq 3 \(step.completed\) field 'result'"):
            await reader.get_events(run_id, after_seq=2)
        assert [e.seq for e in await reader.get_events(run_id, after_seq=3)] == [4, 5]  # no payloads there
    finally:
        await inner.close()


async def test_a_store_written_before_encryption_reads_and_continues(make_backend: Factory, backend_name: str) -> None:
    if backend_name.startswith("encrypted-"):
        pytest.skip("wraps the backend itself")
    inner = make_backend()
    try:
        before = LocalRuntime(inner, clock=VirtualClock())
        done = await before.start(flow, "plain-done")
        await before.run_until_complete(done)
        asleep = await before.start(plain_then_encrypted, "plain")
        plain_run = await inner.get_run(done)

        storage = EncryptedStorage(make_backend(), KEY_A)  # encryption turned on: no migration
        assert await storage.get_run(done) == plain_run
        assert await storage.get_events(done) == await inner.get_events(done)
        finished = await LocalRuntime(storage, clock=VirtualClock()).run_until_complete(asleep)
        assert finished.result == f"plain|{MARK}-stepresult|{MARK}-stepresult"
        log = await inner.get_events(asleep)
        first, second = [e for e in log if e.type == "step.completed"]
        assert not is_envelope(first.data["result"]) and is_envelope(second.data["result"])
        assert [e.data.get("result") for e in await storage.get_events(asleep) if e.type == "step.completed"] == [
            f"plain|{MARK}-stepresult",
            f"plain|{MARK}-stepresult|{MARK}-stepresult",
        ]
    finally:
        await inner.close()


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not-a-key", "PYWORKFLOW_ENCRYPTION_KEY: key 1 of 1 is not a Fernet key"),
        (f"{KEY_A},{KEY_B[:-4]}", "PYWORKFLOW_ENCRYPTION_KEY: key 2 of 2 is not a Fernet key"),
        (f"{KEY_A},,{KEY_B}", "PYWORKFLOW_ENCRYPTION_KEY: key 2 of 3 is empty"),
        (f"{KEY_A},", "PYWORKFLOW_ENCRYPTION_KEY: key 2 of 2 is empty"),
        ("", "PYWORKFLOW_ENCRYPTION_KEY is set but empty"),
        (" , ", "PYWORKFLOW_ENCRYPTION_KEY is set but empty"),
        (f"{KEY_A}x", "key 1 of 1 is not a Fernet key"),
    ],
)
def test_a_malformed_key_is_refused_naming_the_variable_and_position_never_the_key(
    value: str, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyworkflow.storage.memory import InMemoryStorageBackend

    with pytest.raises(ConfigurationError, match=words) as info:
        parse_keys(value)
    secret_parts = [p.strip() for p in value.split(",") if len(p.strip()) > 8]
    assert not any(part in str(info.value) for part in secret_parts)
    monkeypatch.setenv("PYWORKFLOW_ENCRYPTION_KEY", value)
    with pytest.raises(ConfigurationError, match=words):
        storage_from_url("memory://")
    with pytest.raises(ConfigurationError, match=words):
        EncryptedStorage(InMemoryStorageBackend(), value)

    from pyworkflow.celery.settings import Settings

    with pytest.raises(ConfigurationError, match=words):
        Settings(broker_url="memory://").check()
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "memory://")
    with pytest.raises(ConfigurationError, match=words):
        Settings.from_env()


def test_good_keys_pass_the_settings_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.celery.settings import Settings

    monkeypatch.setenv("PYWORKFLOW_ENCRYPTION_KEY", f" {KEY_B} ,{KEY_A}")
    Settings(broker_url="memory://").check()
    assert len(parse_keys(f" {KEY_B} ,{KEY_A}")) == 2
    monkeypatch.delenv("PYWORKFLOW_ENCRYPTION_KEY")
    Settings(broker_url="memory://").check()


def test_storage_from_url_wraps_only_when_a_key_is_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pyworkflow.storage.memory import InMemoryStorageBackend
    from pyworkflow.storage.sqlite import SQLiteStorageBackend

    monkeypatch.delenv("PYWORKFLOW_ENCRYPTION_KEY", raising=False)
    assert type(storage_from_url("memory://")) is InMemoryStorageBackend  # no layer on the plaintext path
    monkeypatch.setenv("PYWORKFLOW_ENCRYPTION_KEY", f"{KEY_B},{KEY_A}")
    wrapped = storage_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(wrapped, EncryptedStorage) and isinstance(wrapped.inner, SQLiteStorageBackend)
    assert wrapped.url == wrapped.inner.url
    assert wrapped.encryptor.key_count == 2
    assert KEY_A not in repr(wrapped) and KEY_B not in repr(wrapped) and "2 keys" in repr(wrapped)
    explicit = storage_from_url("memory://", encryption_key=KEY_C)
    assert isinstance(explicit, EncryptedStorage) and explicit.encryptor.key_count == 1
    with pytest.raises(ConfigurationError, match="encrypted already"):
        EncryptedStorage(explicit, KEY_C)
    with pytest.raises(ConfigurationError, match=r"storage_from_url\(encryption_key=...\): key 1 of 1"):
        storage_from_url("memory://", encryption_key="nope")


async def test_values_the_policy_refuses_are_refused_before_encryption() -> None:
    from pyworkflow.errors import SerializationError
    from pyworkflow.storage.memory import InMemoryStorageBackend

    storage = EncryptedStorage(InMemoryStorageBackend(), KEY_A)
    run_id = await LocalRuntime(storage, clock=VirtualClock()).start(flow, "x")
    with pytest.raises(SerializationError, match="payload of message 'note'.*not finite"):
        await storage.post_message(run_id, "note", {"x": float("nan")})
    with pytest.raises(SerializationError, match="run field 'result'.*NUL"):
        await storage.update_run(run_id, result="a\x00b")
    assert await storage.get_messages(run_id) == []


def test_encryption_errors_cross_processes_and_keys_never_print() -> None:
    error = EncryptionError("run 'r': the stored run input is encrypted ...", run_id="r", what="run input")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is EncryptionError and again.run_id == "r" and again.what == "run input"  # type: ignore[attr-defined]
    encryptor = Encryptor(parse_keys(f"{KEY_A},{KEY_B}"))
    assert repr(encryptor) == "Encryptor(2 keys)"
    envelope = encryptor.seal({"a": MARK}, "test")
    assert is_envelope(envelope) and MARK not in json.dumps(envelope)
    assert encryptor.open(envelope, "r", "test") == {"a": MARK}
    assert encryptor.open({"$enc": "other", "v": "x"}, "r", "test") == {"$enc": "other", "v": "x"}  # not ours: as is
    assert Encryptor().seal(MARK, "test") == MARK  # no key: nothing to seal


def test_import_pyworkflow_does_not_load_cryptography() -> None:
    code = (
        "import sys, pyworkflow, pyworkflow.testing, pyworkflow.storage, pyworkflow.storage.encrypted\n"
        "pyworkflow.storage.storage_from_url('memory://')\n"
        "print('cryptography' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYWORKFLOW_ENCRYPTION_KEY"}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
