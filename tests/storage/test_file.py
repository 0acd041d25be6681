"""FileStorageBackend beyond the shared contract: corruption, crashes, real processes."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import pyworkflow.storage.file_io as file_io
import pyworkflow.storage.file_runs as file_runs
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    LeaseLostError,
    RunNotFoundError,
    SequenceConflictError,
)
from pyworkflow.storage.base import to_us
from pyworkflow.storage.file import FileStorageBackend
from tests.storage.test_contract import ev, make_run, new_run, wait_for

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
async def store(tmp_path: Path) -> FileStorageBackend:  # type: ignore[misc]
    backend = FileStorageBackend(tmp_path / "store")
    yield backend
    await backend.close()


def run_file(backend: FileStorageBackend, run_id: str) -> Path:
    return Path(backend.root) / "runs" / f"{run_id}.jsonl"


async def run_with_events(backend: FileStorageBackend, n: int) -> str:
    """A run whose file holds its record (line 1) and events 1…n (lines 2…n+1)."""
    run = await new_run(backend)
    for seq in range(2, n + 1):  # one by one: a batch of several would begin with its own line
        await backend.append_events(run.run_id, [ev(seq)])
    return run.run_id


# -- construction ------------------------------------------------------------------------


async def test_default_path_is_dot_pyworkflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = FileStorageBackend()
    try:
        assert backend.url == "file://./.pyworkflow"
        run = await new_run(backend)
    finally:
        await backend.close()
    assert (tmp_path / ".pyworkflow" / "runs" / f"{run.run_id}.jsonl").is_file()


async def test_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = FileStorageBackend.from_url(f"file://{tmp_path}/abs")
    assert absolute.root == str(tmp_path / "abs") and absolute.url == f"file://{tmp_path}/abs"
    await absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = FileStorageBackend.from_url("file://./rel")
    assert relative.root == str(tmp_path / "rel") and relative.url == "file://./rel"
    await relative.close()
    for bad in ("file://", "sqlite:///x.db", "/plain/path"):
        with pytest.raises(ConfigurationError):
            FileStorageBackend.from_url(bad)


async def test_fsync_mode_flushes_and_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync, real_fdatasync = os.fsync, file_io.fdatasync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    def counting_fdatasync(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(file_io, "fdatasync", counting_fdatasync)
    backend = FileStorageBackend(tmp_path / "store", fsync=True)
    try:
        run, created = await backend.create_run(make_run(key="durable"), [ev(1, "workflow.started")])
        assert created and synced
        before = len(synced)
        lease = await backend.acquire_lease(run.run_id, "w", 30)
        assert lease is not None
        await backend.append_events(run.run_id, [ev(2)], lease_token=lease.token, run_changes={"status": "running"})
        await backend.update_run(run.run_id, wake_at=datetime(2030, 1, 1, tzinfo=UTC))
        await backend.release_lease(lease)
        assert len(synced) > before
    finally:
        await backend.close()
    reader = FileStorageBackend(tmp_path / "store")
    try:
        got = await reader.get_run(run.run_id)
        assert got is not None and got.status == "running"
        assert [e.seq for e in await reader.get_events(run.run_id)] == [1, 2]
        assert await reader.claim_due_timers(datetime(2030, 1, 1, tzinfo=UTC)) != []
        assert await reader.delete_run(run.run_id)
    finally:
        await reader.close()


async def test_unsafe_run_ids_are_refused(store: FileStorageBackend) -> None:
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            await store.create_run(make_run().model_copy(update={"run_id": bad}), [])
        with pytest.raises(ValueError):
            await store.get_run(bad)


# -- corruption is an error, never a reset ----------------------------------------------------


async def assert_refused_and_untouched(backend: FileStorageBackend, run_id: str, line: int) -> None:
    """Reading and writing all fail, naming the run, file and line; the file is unchanged."""
    path = run_file(backend, run_id)
    before = path.read_bytes()
    with pytest.raises(CorruptedStorageError) as info:
        await backend.get_events(run_id)
    assert info.value.run_id == run_id and info.value.path == str(path) and info.value.line == line
    assert run_id in str(info.value) and str(path) in str(info.value) and f"line {line}" in str(info.value)
    for fresh in (False, True):
        # Both the instance that saw the log before, and a new one that reads it cold.
        appender = FileStorageBackend(backend.root) if fresh else backend
        try:
            for seq in range(1, 8):
                with pytest.raises(CorruptedStorageError) as info:
                    await appender.append_events(run_id, [ev(seq)], run_changes={"status": "running"})
                assert info.value.run_id == run_id
            for call in (appender.get_run(run_id), appender.acquire_lease(run_id, "w", 30)):
                with pytest.raises(CorruptedStorageError):
                    await call
        finally:
            if fresh:
                await appender.close()
    assert path.read_bytes() == before


async def test_truncated_last_line_is_an_error(store: FileStorageBackend) -> None:
    victim, bystander = await run_with_events(store, 3), await run_with_events(store, 3)
    path = run_file(store, victim)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])  # a write that stopped halfway
    await assert_refused_and_untouched(store, victim, 4)
    await store.append_events(bystander, [ev(4)])
    assert [e.seq for e in await store.get_events(bystander)] == [1, 2, 3, 4]


async def test_missing_final_newline_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 2)
    path = run_file(store, victim)
    path.write_bytes(path.read_bytes()[:-1])
    await assert_refused_and_untouched(store, victim, 3)


async def test_garbage_line_is_an_error(store: FileStorageBackend) -> None:
    victim, bystander = await run_with_events(store, 4), await run_with_events(store, 2)
    path = run_file(store, victim)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"seq": 2, "type": "step.started", oops'
    path.write_bytes(b"\n".join(lines))
    await assert_refused_and_untouched(store, victim, 3)
    assert [e.seq for e in await store.get_events(victim, after_seq=2)] == [3, 4]  # the intact part reads
    assert [e.seq for e in await store.get_events(bystander)] == [1, 2]


async def test_valid_json_that_is_not_an_event_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 3)
    with run_file(store, victim).open("ab") as f:
        f.write(b'{"seq": 4, "type": 7}\n')
    await assert_refused_and_untouched(store, victim, 5)


async def test_seq_gap_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 5)
    path = run_file(store, victim)
    lines = path.read_bytes().split(b"\n")
    del lines[3]  # seq 3 lost: line 4 now holds seq 4
    path.write_bytes(b"\n".join(lines))
    await assert_refused_and_untouched(store, victim, 4)


async def test_a_file_that_shrinks_under_a_live_instance_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 3)
    path = run_file(store, victim)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n")  # whole lines gone: only a known size can tell
    with pytest.raises(CorruptedStorageError, match="shrank"):
        await store.append_events(victim, [ev(3)])
    assert path.read_bytes() == b"\n".join(lines[:3]) + b"\n"


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        pytest.param(lambda raw: raw[:40], 1, id="record-cut-short"),
        pytest.param(lambda raw: b"\x00\x00garbage\n" + raw, 1, id="garbage-first"),
        pytest.param(lambda raw: raw.replace(b'"status":"pending"', b'"status":"sleepy"'), 1, id="invalid-record"),
        pytest.param(lambda raw: raw + b'{"set":{"status":"sleepy"}}\n', 4, id="invalid-change"),
        pytest.param(lambda raw: raw + b'{"set":{"workflow_name":"x"}}\n', 4, id="immutable-change"),
    ],
)
async def test_corrupt_run_record_is_an_error(store: FileStorageBackend, damage: Any, line: int) -> None:
    victim, bystander = await run_with_events(store, 2), await run_with_events(store, 2)
    path = run_file(store, victim)
    path.write_bytes(damage(path.read_bytes()))
    damaged = path.read_bytes()
    fresh = FileStorageBackend(store.root)
    try:
        with pytest.raises(CorruptedStorageError) as info:
            await fresh.get_run(victim)
        assert info.value.run_id == victim and info.value.path == str(path) and info.value.line == line
        assert victim in str(info.value) and str(path) in str(info.value) and f"line {line}" in str(info.value)
        for backend in (fresh, store):
            with pytest.raises(CorruptedStorageError):
                await backend.append_events(victim, [ev(3)], run_changes={"status": "running"})
            with pytest.raises(CorruptedStorageError):
                await backend.update_run(victim, status="running")
            with pytest.raises(CorruptedStorageError):
                await backend.acquire_lease(victim, "w", 30)
            # skipped by list_runs (reported), named by list_unreadable_runs
            assert [r.run_id for r in (await backend.list_runs()).runs] == [bystander]
            assert await backend.list_unreadable_runs() == [victim]
    finally:
        await fresh.close()
    assert path.read_bytes() == damaged
    await store.append_events(bystander, [ev(3)], run_changes={"status": "running"})
    got = await store.get_run(bystander)
    assert got is not None and got.status == "running"
    # An unreadable run can still be deleted on purpose.
    assert await store.delete_run(victim)
    assert [r.run_id for r in (await store.list_runs()).runs] == [bystander]


async def test_corrupt_lease_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 2)
    with run_file(store, victim).open("ab") as f:
        f.write(b'{"lease":{"owner":"w"}}\n')
    fresh = FileStorageBackend(store.root)
    try:
        for backend in (fresh, store):
            with pytest.raises(CorruptedStorageError, match="line 4: .*lease"):
                await backend.acquire_lease(victim, "w", 30)
            with pytest.raises(CorruptedStorageError):
                await backend.append_events(victim, [ev(3)])
    finally:
        await fresh.close()


# -- crash windows -------------------------------------------------------------------------


async def test_a_write_that_falls_short_is_undone(store: FileStorageBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    run = await new_run(store)
    path = run_file(store, run.run_id)
    before = path.read_bytes()
    real_write = os.write

    def half_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data)[: len(data) // 2])  # as when the disk fills up

    monkeypatch.setattr(os, "write", half_write)
    with pytest.raises(OSError, match="short write"):
        await store.append_events(run.run_id, [ev(2), ev(3)], run_changes={"status": "completed"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    for backend in (store, FileStorageBackend(store.root)):
        got = await backend.get_run(run.run_id)
        assert got is not None and got.status == "pending"
        assert [e.seq for e in await backend.get_events(run.run_id)] == [1]
    await store.append_events(run.run_id, [ev(2)], run_changes={"status": "running"})
    got = await store.get_run(run.run_id)
    assert got is not None and got.status == "running"


async def test_batch_and_record_change_are_one_write(
    store: FileStorageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await new_run(store)
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    await store.append_events(run.run_id, [ev(2), ev(3)], run_changes={"status": "completed", "result": [1]})
    monkeypatch.undo()
    assert len(writes) == 1 and writes[0].count(b"\n") == 3 and b'"set":' in writes[0]
    fresh = FileStorageBackend(store.root)
    try:
        got = await fresh.get_run(run.run_id)
        assert got is not None and got.status == "completed" and got.result == [1]
    finally:
        await fresh.close()


async def test_run_whose_creator_crashed_is_invisible_and_pruned_later(store: FileStorageBackend) -> None:
    done = await new_run(store)
    await store.update_run(done.run_id, status="completed")
    ghost = run_file(store, "ghost-run")
    ghost.write_bytes(b"")  # its creator died between creating the file and writing it
    assert await store.get_run("ghost-run") is None
    assert await store.get_events("ghost-run") == []
    with pytest.raises(RunNotFoundError):
        await store.append_events("ghost-run", [ev(1)])
    stray = await store.acquire_lease("ghost-run", "w", 30)
    assert stray is not None and await store.renew_lease(stray, 30) is None
    assert [r.run_id for r in (await store.list_runs()).runs] == [done.run_id]
    with pytest.raises(ValueError, match="already exists"):
        await store.create_run(make_run().model_copy(update={"run_id": "ghost-run"}), [])

    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await store.prune_runs(older_than=later) == 1
    assert ghost.exists(), "a young empty file may be a creation in progress"
    old = time.time() - 2 * file_runs._LEFTOVER_AGE
    os.utime(ghost, (old, old))
    assert await store.prune_runs(older_than=later) == 0
    assert not ghost.exists()


async def test_key_left_by_a_crashed_creator_is_taken_over(store: FileStorageBackend) -> None:
    keys = Path(store.root) / "keys"
    (keys / hashlib.sha256(b"ghost-key").hexdigest()).write_bytes(b"0000ghost\n")  # run never published
    (keys / hashlib.sha256(b"empty-key").hexdigest()).write_bytes(b"")  # crashed right after O_CREAT
    for key in ("ghost-key", "empty-key"):
        run, created = await store.create_run(make_run(key=key), [ev(1, "workflow.started")])
        assert created
        again, created = await store.create_run(make_run(key=key), [])
        assert not created and again.run_id == run.run_id


async def test_stale_timer_index_entries_are_ignored(store: FileStorageBackend) -> None:
    run = await new_run(store)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    await store.update_run(run.run_id, wake_at=now)
    stale = Path(store._timers.entry(to_us(now - timedelta(hours=3)), run.run_id))
    stale.parent.mkdir(exist_ok=True)
    stale.touch()  # left by a crash mid-reschedule
    claimed = await store.claim_due_timers(now)
    assert [(t.run_id, t.wake_at) for t in claimed] == [(run.run_id, now)]
    index = Path(store.root) / "timers" / "index"
    assert [p.name for p in index.rglob("*.*")] == [f"{to_us(now + timedelta(seconds=30))}.{run.run_id}"]


async def test_lease_on_a_run_not_yet_created_holds_nothing(store: FileStorageBackend) -> None:
    run = make_run()
    early = await store.acquire_lease(run.run_id, "activator", 30)  # as an activation woken by a guard timer
    assert early is not None
    assert await store.get_run(run.run_id) is None
    with pytest.raises(RunNotFoundError):
        await store.append_events(run.run_id, [ev(1)], lease_token=early.token)
    await store.release_lease(early)
    await store.create_run(run, [ev(1, "workflow.started")])
    with pytest.raises(LeaseLostError):
        await store.append_events(run.run_id, [ev(2)], lease_token=early.token)
    assert await store.renew_lease(early, 30) is None
    real = await store.acquire_lease(run.run_id, "activator", 30)
    assert real is not None
    await store.append_events(run.run_id, [ev(2)], lease_token=real.token)


async def consuming_append(backend: FileStorageBackend) -> tuple[str, bytes, bytes]:
    """A run with two messages and the file before and after the append that consumes them."""
    run = await new_run(backend)
    await backend.post_message(run.run_id, "signal", 1, idempotency_key="one")
    await backend.post_message(run.run_id, "signal", 2)
    got = await backend.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))
    assert got.status == "leased" and got.lease is not None
    path = run_file(backend, run.run_id)
    before = path.read_bytes()
    await backend.append_events(
        run.run_id,
        [ev(2, "message.received", message=1), ev(3, "message.received", message=2)],
        lease_token=got.lease.token,
        run_changes={"status": "suspended", "wake_at": None},
        consume=[1, 2],
        release_lease=True,
    )
    return run.run_id, before, path.read_bytes()


async def test_consumption_is_one_write_with_its_events(
    store: FileStorageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    run_id, before, after = await consuming_append(store)
    assert after.startswith(before)
    monkeypatch.setattr(os, "write", recording_write)
    await store.post_message(run_id, "signal", 3)
    monkeypatch.undo()
    assert len(writes) == 1 and writes[0].count(b"\n") == 1  # a message is one line
    fresh = FileStorageBackend(store.root)
    try:
        every = await fresh.get_messages(run_id, pending_only=False)
        assert [(m.seq, m.payload, m.consumed) for m in every] == [(1, 1, True), (2, 2, True), (3, 3, False)]
        assert [m.seq for m in await fresh.get_messages(run_id)] == [3]
        # keys are read back with the file: a repeat after a restart stores nothing
        assert await fresh.post_message(run_id, "signal", 9, idempotency_key="one") == f"{run_id}:1"
        got = await fresh.begin_activation(run_id, "w", 30, now=datetime.now(UTC))
        assert got.status == "leased" and [e.seq for e in got.events] == [1, 2, 3]
    finally:
        await fresh.close()


@pytest.mark.parametrize("kept", [1, 2], ids=["group-line-only", "one-event-of-two"])
async def test_a_write_cut_by_a_crash_never_consumes_without_its_events(store: FileStorageBackend, kept: int) -> None:
    run_id, before, after = await consuming_append(store)
    written = after[len(before) :].split(b"\n")
    assert len(written) == 4 and b'"consume":[1,2]' in written[0]  # group line, 2 events, ""
    path = run_file(store, run_id)
    path.write_bytes(before + b"".join(line + b"\n" for line in written[:kept]))  # what a crash can leave
    group_line = before.count(b"\n") + 1
    fresh = FileStorageBackend(store.root)  # as after a restart: store saw the whole write
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: fresh.get_messages(run_id),
        lambda: fresh.get_messages(run_id, pending_only=False),
        lambda: fresh.get_events(run_id),
        lambda: fresh.begin_activation(run_id, "w", 30, now=datetime.now(UTC)),
        lambda: fresh.post_message(run_id, "signal", 3),
    ]
    try:
        for call in calls:
            with pytest.raises(CorruptedStorageError, match="did not finish") as info:
                await call()
            assert info.value.line == group_line
        # list_runs skips (and reports) the unreadable run; list_unreadable_runs names it
        assert run_id not in [r.run_id for r in (await fresh.list_runs()).runs]
        assert await fresh.list_unreadable_runs() == [run_id]
    finally:
        await fresh.close()
    assert path.read_bytes() == before + b"".join(line + b"\n" for line in written[:kept])


async def test_corrupt_message_line_is_an_error(store: FileStorageBackend) -> None:
    victim = await run_with_events(store, 2)
    await store.post_message(victim, "signal", 1)
    path = run_file(store, victim)
    path.write_bytes(path.read_bytes().replace(b'"seq":1', b'"seq":7'))
    fresh = FileStorageBackend(store.root)
    try:
        with pytest.raises(CorruptedStorageError, match="line 4: .*message 1") as info:
            await fresh.get_messages(victim)
        assert info.value.run_id == victim and info.value.line == 4
    finally:
        await fresh.close()


async def test_claims_read_only_due_timers(store: FileStorageBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    due = await new_run(store)
    await store.update_run(due.run_id, wake_at=now - timedelta(seconds=1))
    for days in range(1, 21):  # asleep far ahead: 20 other buckets
        run = await new_run(store)
        await store.update_run(run.run_id, status="suspended", wake_at=now + timedelta(days=days))
    listed: list[str] = []
    real_listdir = os.listdir

    def recording_listdir(path: Any) -> list[str]:
        listed.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", recording_listdir)
    claimed = await store.claim_due_timers(now)
    monkeypatch.undo()
    assert [t.run_id for t in claimed] == [due.run_id]
    index = str(Path(store.root) / "timers" / "index")
    assert listed == [index, f"{index}/{to_us(now - timedelta(seconds=1)) >> 32}"]


async def test_not_due_puts_an_early_timer_back_at_wake_at(store: FileStorageBackend) -> None:
    run = await new_run(store)
    later = datetime.now(UTC) + timedelta(hours=1)
    await store.update_run(run.run_id, status="suspended", wake_at=later)
    await store.recover_expired_leases()
    store._set_timer(run.run_id, datetime.now(UTC))  # as a crash between timer and record can leave it
    assert [t.run_id for t in await store.claim_due_timers(datetime.now(UTC))] == [run.run_id]
    assert (await store.begin_activation(run.run_id, "w", 30, now=datetime.now(UTC))).status == "not_due"
    timer = await store.get_timer(run.run_id)
    assert timer is not None and timer.wake_at == later


async def test_lease_log_is_compacted_by_recovery(store: FileStorageBackend) -> None:
    runs = [await new_run(store) for _ in range(4)]
    for run in runs:
        for _ in range(3):
            lease = await store.acquire_lease(run.run_id, "w", 30)
            assert lease is not None
            await store.release_lease(lease)
    assert await store.acquire_lease(runs[0].run_id, "alive", 60) is not None
    assert await store.acquire_lease(runs[1].run_id, "crashed", 0.1) is not None
    assert await store.acquire_lease(runs[2].run_id, "crashed", 0.1) is not None
    lease_log = Path(store.root) / "leases.log"
    assert len(lease_log.read_bytes().splitlines()) == 15

    other = FileStorageBackend(store.root)  # recovery from another instance sees the same log
    recovered: list[str] = []
    try:

        async def both_recovered() -> bool:
            recovered.extend(await other.recover_expired_leases(limit=1))
            return len(recovered) == 2

        await wait_for(both_recovered)
    finally:
        await other.close()
    assert sorted(recovered) == sorted([runs[1].run_id, runs[2].run_id])
    assert lease_log.read_text().split() == [runs[0].run_id]
    claimed = await store.claim_due_timers(datetime.now(UTC) + timedelta(seconds=1))
    assert sorted(t.run_id for t in claimed) == sorted(recovered)


# -- instances sharing one directory ----------------------------------------------------------------


async def test_deleted_run_is_noticed_by_an_instance_holding_it_open(store: FileStorageBackend) -> None:
    run = await new_run(store)
    await store.append_events(run.run_id, [ev(2)])  # store now has the log open and cached
    other = FileStorageBackend(store.root)
    try:
        assert await other.delete_run(run.run_id)
        with pytest.raises(RunNotFoundError):
            await store.append_events(run.run_id, [ev(3)])
        stray = await store.acquire_lease(run.run_id, "w", 30)  # a lease on no run holds nothing
        assert stray is not None and await store.renew_lease(stray, 30) is None
        _, created = await other.create_run(run, [ev(1, "workflow.started")])  # same id, new run
        assert created
        await store.append_events(run.run_id, [ev(2)])
        assert [e.seq for e in await other.get_events(run.run_id)] == [1, 2]
    finally:
        await other.close()


async def test_appends_from_another_instance_are_picked_up(store: FileStorageBackend) -> None:
    run = await new_run(store)
    other = FileStorageBackend(store.root)
    try:
        await store.append_events(run.run_id, [ev(2)])
        await other.append_events(run.run_id, [ev(3), ev(4)])
        with pytest.raises(SequenceConflictError) as info:
            await store.append_events(run.run_id, [ev(3)])
        assert info.value.actual == 4
        await store.append_events(run.run_id, [ev(5)], run_changes={"status": "running"})
        got = await other.get_run(run.run_id)
        assert got is not None and got.status == "running"
    finally:
        await other.close()


async def test_open_logs_are_bounded(store: FileStorageBackend) -> None:
    for _ in range(file_runs._HANDLE_CACHE_SIZE + 40):
        await new_run(store)
    assert len(store._files._handles) == file_runs._HANDLE_CACHE_SIZE


# -- real processes ----------------------------------------------------------------------------


def _create_in_process(root: str, barrier: Any, results: Any) -> None:
    async def main() -> tuple[str, bool]:
        backend = FileStorageBackend(root)
        try:
            barrier.wait(timeout=90)
            run, created = await backend.create_run(make_run(key="one-key"), [ev(1, "workflow.started")])
            return run.run_id, created
        finally:
            await backend.close()

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(repr(exc))


def _append_in_process(root: str, run_id: str, writer: int, barrier: Any, results: Any) -> None:
    async def main() -> bool:
        backend = FileStorageBackend(root)
        try:
            barrier.wait(timeout=90)
            try:
                await backend.append_events(run_id, [ev(3, writer=writer), ev(4, writer=writer)])
                return True
            except SequenceConflictError:
                return False
        finally:
            await backend.close()

    try:
        results.put((writer, asyncio.run(main())))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put(repr(exc))


def run_processes(target: Any, args: list[tuple[Any, ...]], timeout: float = 100.0) -> list[Any]:
    """Start one spawned process per args tuple, all released together; collect one result each."""
    barrier, results = SPAWN.Barrier(len(args)), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    collected: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < len(procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(collected)} of {len(procs)} processes reported in time")
            collected.append(results.get(timeout=remaining))
    finally:
        for p in procs:
            p.join(timeout=max(deadline - time.monotonic(), 1.0))
            if p.is_alive():
                p.kill()
                p.join()
    results.close()
    return collected


def test_processes_creating_with_one_key_make_one_run(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    FileStorageBackend(root)  # the directories exist before the race
    results = run_processes(_create_in_process, [(root,)] * 20)
    assert all(isinstance(r, tuple) for r in results), results
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1

    async def check() -> None:
        backend = FileStorageBackend(root)
        try:
            runs = (await backend.list_runs()).runs
            assert [r.run_id for r in runs] == [results[0][0]]
            assert [e.seq for e in await backend.get_events(runs[0].run_id)] == [1]
        finally:
            await backend.close()

    asyncio.run(check())
    assert not [n for n in os.listdir(Path(root) / "runs") if n.startswith(".")], "no staging left behind"


def test_processes_racing_on_one_seq_have_one_winner(tmp_path: Path) -> None:
    root = str(tmp_path / "store")

    async def setup() -> str:
        backend = FileStorageBackend(root)
        try:
            run = await new_run(backend)
            await backend.append_events(run.run_id, [ev(2)])
            return run.run_id
        finally:
            await backend.close()

    run_id = asyncio.run(setup())
    results = run_processes(_append_in_process, [(root, run_id, i) for i in range(12)])
    assert all(isinstance(r, tuple) for r in results), results
    winners = [writer for writer, won in results if won]
    assert len(winners) == 1

    async def check() -> None:
        backend = FileStorageBackend(root)
        try:
            events = await backend.get_events(run_id)
        finally:
            await backend.close()
        assert [e.seq for e in events] == [1, 2, 3, 4]
        assert events[2].data == events[3].data == {"writer": winners[0]}

    asyncio.run(check())
