"""The bad-input catalogue at the storage boundary: one run's stored data damaged behind
its backend's back, in the ways each backend that keeps data can be damaged (file,
SQLite, Redis, PostgreSQL; the memory backend holds validated objects only).

The damage is refused by the public reads, never read as something else: ``get_run``,
``get_events``, ``get_messages`` and ``activate`` (``begin_activation``) raise
:class:`~pyworkflow.errors.CorruptedStorageError` naming the run and what is wrong (the
record or its field, the event's seq, the message, the file's line) for the parts the
damage touches, and return exactly what they returned before for the others; a valid
event the replay cannot use fails the run once, with
:class:`~pyworkflow.errors.CorruptedHistoryError` naming the seq. ``list_runs`` skips a
run whose record cannot be read and ``list_unreadable_runs`` names it (as
``tests/storage/test_poison.py`` shows). Every other run's stored bytes stay as they
were. A schema version the code cannot use stops every call with ConfigurationError and
changes nothing. Damage a database refuses to store is listed too (the refusal is the
protection). Known gaps are strict xfails naming the backend's fault.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pyworkflow import sleep, step, workflow
from pyworkflow.engine import activate
from pyworkflow.errors import ConfigurationError, CorruptedStorageError
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock
from tests.storage import corrupt
from tests.storage.conftest import Factory, make_backend  # noqa: F401 - the fixture, over a backend_name given here

READS = ("get_run", "get_events", "get_messages", "activate")
RECORD = frozenset({"get_run", "activate"})  # the run record: the log and inbox read on
LOG = frozenset({"get_events", "activate"})
INBOX = frozenset({"get_messages", "activate"})
#: a run file is read whole (get_events reads the event lines only)
FILE_RECORD = frozenset({"get_run", "get_messages", "activate"})
FILE_WHOLE = frozenset(READS)


@step(name="bad_records.one")
async def one() -> int:
    return 1


@workflow(name="bad_records.paused")
async def paused() -> int:
    """Events: 1 workflow.started, 2 step.started, 3 step.completed (call 1), 4
    sleep.created (call 2), 5 workflow.suspended."""
    value = await one()
    await sleep("1h")
    return value


@workflow(name="bad_records.done")
async def done() -> str:
    return "done"


Damage = Callable[[StorageBackend, str], None]


@dataclass(frozen=True)
class Case:
    id: str
    backend: str
    damage: Damage
    #: the reads that must raise; the others return what they returned before
    raises: frozenset[str]
    #: what the error must name besides the run id
    named: tuple[str, ...]
    #: whether list_runs still reads the run's record (else it skips the run, and
    #: list_unreadable_runs names it)
    listed: bool = True
    #: the replay's damage: the first activation fails the run with CorruptedHistoryError
    history: bool = False
    #: keys deleted by hand: no record (get_run None, activate "missing"), yet indexed
    gone: bool = False
    #: the database refuses to store this damage (with this exception's name)
    refused_by: str | None = None
    xfail: str | None = None


# -- file: runs/<run_id>.jsonl ----------------------------------------------------------------


def file_line(marker: bytes, edit: Callable[[bytes], bytes | None]) -> Damage:
    """Edit the first line of the run file that holds ``marker`` (``None`` drops it)."""

    def damage(storage: StorageBackend, run_id: str) -> None:
        def lines(old: list[bytes]) -> list[bytes]:
            at = next(i for i, line in enumerate(old) if marker.replace(b"RUN", run_id.encode()) in line)
            new = edit(old[at])
            return old[:at] + ([] if new is None else [new]) + old[at + 1 :]

        corrupt.edit_run_file(storage, run_id, lines)

    return damage


def replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def edit(line: bytes) -> bytes:
        assert old in line, (old, line)
        return line.replace(old, new)

    return edit


def file_gap(storage: StorageBackend, run_id: str) -> None:
    """Event 3 gone, and its batch's count lowered to match: only the seqs tell."""
    file_line(b'"seq":3,"type"', lambda line: None)(storage, run_id)
    file_line(b'{"n":3', replace(b'{"n":3', b'{"n":2'))(storage, run_id)


def file_truncated(storage: StorageBackend, run_id: str) -> None:
    with open(corrupt.run_file(storage, run_id), "rb") as handle:
        data = handle.read()
    corrupt.write_run_file(storage, run_id, data[:-20])


FILE_CASES = [
    Case(
        "file-record-not-json",
        "file",
        file_line(b'{"n":1,"run":', lambda line: b'{"n":1,"run":{not json}}'),
        FILE_RECORD,
        ("line 1", "run record", "Invalid JSON"),
        listed=False,
    ),
    Case(
        "file-record-missing-field",
        "file",
        file_line(b'{"n":1,"run":', replace(b'"workflow_name":"bad_records.paused",', b"")),
        FILE_RECORD,
        ("line 1", "run record", "workflow_name", "Field required"),
        listed=False,
    ),
    Case(
        "file-record-wrong-type",
        "file",
        file_line(b'{"n":1,"run":', replace(b'"input":{"args":[],"kwargs":{}}', b'"input":[1,2]')),
        FILE_RECORD,
        ("line 1", "run record", "input", "Input should be an object"),
        listed=False,
    ),
    Case(
        "file-record-of-another-run",
        "file",
        lambda storage, run_id: file_line(b'{"n":1,"run":', replace(run_id.encode(), b"0" * 32))(storage, run_id),
        FILE_RECORD,
        ("line 1", "run record", "it belongs to run '" + "0" * 32 + "'"),
        listed=False,
    ),
    Case(
        "file-record-change-wrong-value",
        "file",
        file_line(b'"status":"suspended"', replace(b'"status":"suspended"', b'"status":"dozing"')),
        FILE_RECORD,
        ("line 8", "record change", "status"),
        listed=False,
    ),
    Case(
        "file-truncated-last-line",
        "file",
        file_truncated,
        FILE_WHOLE,
        ("line 10", "the last line is truncated"),
        listed=False,
    ),
    Case(
        "file-batch-missing-an-event",
        "file",
        file_line(b'"seq":3,"type"', lambda line: None),
        FILE_WHOLE,
        ("line 4", "1 of the events written with this line are missing"),
        listed=False,
    ),
    Case(
        "file-event-not-json",
        "file",
        file_line(b'"seq":3,"type"', lambda line: b'{"seq":3,"type":'),
        FILE_WHOLE,
        ("line 6", "event seq 3", "Invalid JSON"),
    ),
    Case(
        "file-event-data-wrong-type",
        "file",
        file_line(b'"seq":3,"type"', lambda line: json.dumps({**json.loads(line), "data": [1]}).encode()),
        FILE_WHOLE,
        ("line 6", "event seq 3", "data", "Input should be an object"),
    ),
    Case("file-event-gap", "file", file_gap, FILE_WHOLE, ("line 6", "event seq 3", "found seq 4 in its place")),
    Case(
        "file-message-not-json",
        "file",
        file_line(b'{"msg":', replace(b'"payload":{', b'"payload":{{')),
        FILE_RECORD,
        ("line 10", "the stored line cannot be read back"),
        listed=False,
    ),
    Case(
        "file-message-missing-field",
        "file",
        file_line(b'{"msg":', replace(b'"kind":"signal",', b"")),
        FILE_RECORD,
        ("line 10", "message 1", "kind", "Field required"),
        listed=False,
    ),
    Case(
        "file-lease-of-another-run",
        "file",
        file_line(b'{"lease":{"run_id":"RUN"', replace(b'"run_id":"', b'"run_id":"someone-else-')),
        FILE_RECORD,
        ("line 3", "lease", "it belongs to run 'someone-else-"),
        listed=False,
    ),
    Case(
        "file-history-call-id-not-an-int",
        "file",
        file_line(b'"seq":3,"type"', replace(b'"call_id":1', b'"call_id":"one"')),
        frozenset(),
        ("event seq 3", "call_id"),
        history=True,
    ),
    Case(
        "file-history-wake-time-not-a-time",
        "file",
        file_line(b'"seq":4,"type"', replace(b'"wake_at":"', b'"wake_at":"x')),
        frozenset(),
        ("event seq 4", "isoformat"),
        history=True,
    ),
]


# -- SQLite: rows of runs, events, messages ---------------------------------------------------


def sql(statement: str) -> Damage:
    """An UPDATE or DELETE of the run's rows (its one parameter is the run id)."""

    def damage(storage: StorageBackend, run_id: str) -> None:
        corrupt.sqlite_execute(storage, statement, (run_id,))

    return damage


SQLITE_CASES = [
    Case(
        "sqlite-record-not-json",
        "sqlite",
        sql("UPDATE runs SET record = '{not json' WHERE run_id = ?"),
        RECORD,
        ("run record", "Invalid JSON"),
        listed=False,
    ),
    Case(
        "sqlite-record-not-an-object",
        "sqlite",
        sql("UPDATE runs SET record = '[1, 2]' WHERE run_id = ?"),
        RECORD,
        ("run record", "WorkflowRun"),
        listed=False,
    ),
    Case(
        "sqlite-record-missing-field",
        "sqlite",
        sql("UPDATE runs SET record = json_remove(record, '$.workflow_name') WHERE run_id = ?"),
        RECORD,
        ("run record", "workflow_name", "Field required"),
        listed=False,
    ),
    Case(
        "sqlite-record-wrong-type",
        "sqlite",
        sql("UPDATE runs SET record = json_set(record, '$.input', json('[1,2]')) WHERE run_id = ?"),
        RECORD,
        ("run record", "input", "Input should be an object"),
        listed=False,
    ),
    Case(
        "sqlite-record-of-another-run",
        "sqlite",
        sql("UPDATE runs SET record = json_set(record, '$.run_id', 'someone-else') WHERE run_id = ?"),
        RECORD,
        ("run record", "it belongs to run 'someone-else'"),
        listed=False,
    ),
    Case(
        "sqlite-event-not-json",
        "sqlite",
        sql("""UPDATE events SET body = '{"seq":3,' WHERE seq = 3 AND run_id = ?"""),
        LOG,
        ("event seq 3", "Invalid JSON"),
    ),
    Case(
        "sqlite-event-data-wrong-type",
        "sqlite",
        sql("UPDATE events SET body = json_set(body, '$.data', json('[1]')) WHERE seq = 3 AND run_id = ?"),
        LOG,
        ("event seq 3", "data", "Input should be an object"),
    ),
    Case(
        "sqlite-event-gap",
        "sqlite",
        sql("DELETE FROM events WHERE seq = 3 AND run_id = ?"),
        LOG,
        ("event seq 3", "found seq 4 in its place"),
    ),
    Case(
        "sqlite-event-not-utf8",
        "sqlite",
        sql("UPDATE events SET body = CAST(X'FF22' AS TEXT) WHERE seq = 3 AND run_id = ?"),
        LOG,
        ("event", "UTF-8"),
    ),
    Case(
        "sqlite-message-not-json",
        "sqlite",
        sql("UPDATE messages SET payload = '{not json' WHERE run_id = ?"),
        INBOX,
        ("message 1", "Expecting property name"),
    ),
    Case(
        "sqlite-message-seq-zero",
        "sqlite",
        sql("UPDATE messages SET seq = 0 WHERE run_id = ?"),
        INBOX,
        ("message 0", "seq", "greater than or equal to 1"),
    ),
    Case(
        "sqlite-message-time-not-a-number",
        "sqlite",
        sql("UPDATE messages SET posted_at = 'yesterday' WHERE run_id = ?"),
        INBOX,
        ("message 1", "posted_at"),
    ),
    Case(
        "sqlite-history-call-id-not-an-int",
        "sqlite",
        sql("UPDATE events SET body = json_set(body, '$.data.call_id', 'one') WHERE seq = 3 AND run_id = ?"),
        frozenset(),
        ("event seq 3", "call_id"),
        history=True,
    ),
    Case(
        "sqlite-history-wake-time-not-a-time",
        "sqlite",
        sql("UPDATE events SET body = json_set(body, '$.data.wake_at', 'tomorrow') WHERE seq = 4 AND run_id = ?"),
        frozenset(),
        ("event seq 4", "isoformat"),
        history=True,
    ),
]


# -- Redis: the run hash, the events list, the inbox hash ---------------------------------------


def redis(kind: str, edit: Callable[[Any, str], Any]) -> Damage:
    """``edit(client, key)`` on the run's ``kind`` key (see corrupt.redis_key)."""

    def damage(storage: StorageBackend, run_id: str) -> None:
        with corrupt.redis_client() as client:
            edit(client, corrupt.redis_key(storage, kind, run_id))

    return damage


def redis_event(seq: int, edit: Callable[[bytes], bytes]) -> Damage:
    return redis("events", lambda client, key: client.lset(key, seq - 1, edit(client.lindex(key, seq - 1))))


REDIS_CASES = [
    Case(
        "redis-record-field-not-json",
        "redis",
        redis("run", lambda client, key: client.hset(key, "status", "dozing")),
        RECORD,
        ("run record field 'status'", "Expecting value"),
        listed=False,
    ),
    Case(
        "redis-record-field-smuggles-a-value",
        "redis",
        redis("run", lambda client, key: client.hset(key, "result", 'null,"status":"completed"')),
        RECORD,
        ("run record field 'result'", "Extra data"),
        listed=False,
    ),
    Case(
        "redis-record-missing-field",
        "redis",
        redis("run", lambda client, key: client.hdel(key, "workflow_name")),
        RECORD,
        ("run record", "workflow_name", "Field required"),
        listed=False,
    ),
    Case(
        "redis-record-wrong-type",
        "redis",
        redis("run", lambda client, key: client.hset(key, "input", "[1,2]")),
        RECORD,
        ("run record", "input", "Input should be a valid dictionary"),
        listed=False,
    ),
    Case(
        "redis-record-without-seq",
        "redis",
        redis("run", lambda client, key: client.hdel(key, "@seq")),
        RECORD,
        ("run record", "it has no @seq field"),
        listed=False,
    ),
    Case(
        "redis-record-control-character",
        "redis",
        redis("run", lambda client, key: client.hset(key, "result", '"a\x1eb"')),
        RECORD,
        ("run record", "a field holds a control character"),
        listed=False,
    ),
    Case(
        "redis-record-of-another-run",
        "redis",
        redis("run", lambda client, key: client.hset(key, "run_id", '"someone-else"')),
        RECORD,
        ("run record", "the record stored under this id is run 'someone-else'"),
        listed=False,
    ),
    Case(
        "redis-record-deleted-but-indexed",
        "redis",
        redis("run", lambda client, key: client.delete(key)),
        frozenset(),
        ("the run is referenced (index or idempotency key) but has no record",),
        listed=False,
        gone=True,
    ),
    Case(
        "redis-event-not-json",
        "redis",
        redis_event(3, lambda body: b'{"seq":3,'),
        LOG,
        ("event seq 3", "Invalid JSON"),
    ),
    Case(
        "redis-event-data-wrong-type",
        "redis",
        redis_event(3, lambda body: json.dumps({**json.loads(body), "data": [1]}).encode()),
        LOG,
        ("event seq 3", "data", "Input should be an object"),
    ),
    Case(
        "redis-event-gap",
        "redis",
        redis("events", lambda client, key: client.lrem(key, 1, client.lindex(key, 2))),
        LOG,
        ("event seq 3", "found seq 4 in its place"),
    ),
    Case(
        "redis-message-not-json",
        "redis",
        redis("inbox", lambda client, key: client.hset(key, "1", "{not json")),
        INBOX,
        ("message 1", "Expecting property name"),
    ),
    Case(
        "redis-message-missing-field",
        "redis",
        redis("inbox", lambda client, key: client.hset(key, "1", '{"posted_at":"2030-01-01T00:00:00Z"}')),
        INBOX,
        ("message 1", "kind", "Field required"),
    ),
    Case(
        "redis-message-pending-but-gone",
        "redis",
        redis("inbox", lambda client, key: client.hdel(key, "1")),
        INBOX,
        ("message 1", "it is pending but its text is gone"),
    ),
    Case(
        "redis-history-call-id-not-an-int",
        "redis",
        redis_event(3, replace(b'"call_id":1', b'"call_id":"one"')),
        frozenset(),
        ("event seq 3", "call_id"),
        history=True,
    ),
]


# -- PostgreSQL: typed columns, event bodies, json payloads -------------------------------------


def pg(statement: str) -> Damage:
    """An UPDATE or DELETE of the run's rows (``{s}`` the schema, ``%s`` the run id)."""

    def damage(storage: StorageBackend, run_id: str) -> None:
        corrupt.postgres_execute(storage, statement, (run_id,))

    return damage


POSTGRES_CASES = [
    Case(
        "postgres-record-unknown-status",
        "postgres",
        pg("UPDATE {s}.runs SET status = 'dozing' WHERE run_id = %s"),
        RECORD,
        ("run record", "status", "'dozing'"),
        listed=False,
    ),
    Case(
        "postgres-record-input-not-an-object",
        "postgres",
        pg("UPDATE {s}.runs SET input = '[1, 2]' WHERE run_id = %s"),
        RECORD,
        ("run record", "input", "Input should be an object"),
        listed=False,
    ),
    Case(
        "postgres-record-error-not-an-object",
        "postgres",
        pg("""UPDATE {s}.runs SET error = '"boom"' WHERE run_id = %s"""),
        RECORD,
        ("run record", "error", "Input should be an object"),
        listed=False,
    ),
    Case(
        "postgres-event-data-wrong-type",
        "postgres",
        pg("UPDATE {s}.events SET body = jsonb_set(body::jsonb, '{data}', '[1]')::text WHERE seq = 3 AND run_id = %s"),
        LOG,
        ("event seq 3", "data", "Input should be an object"),
    ),
    Case(
        "postgres-event-seq-mismatch",
        "postgres",
        pg("UPDATE {s}.events SET body = jsonb_set(body::jsonb, '{seq}', '7')::text WHERE seq = 3 AND run_id = %s"),
        LOG,
        ("event seq 3", "found seq 7 in its place"),
    ),
    Case(
        "postgres-event-gap",
        "postgres",
        pg("DELETE FROM {s}.events WHERE seq = 3 AND run_id = %s"),
        LOG,
        ("event seq 3", "found seq 4 in its place"),
    ),
    Case(
        "postgres-event-not-json",
        "postgres",
        pg("""UPDATE {s}.events SET body = '{"seq":3,' WHERE seq = 3 AND run_id = %s"""),
        frozenset(),
        (),
        refused_by="InvalidTextRepresentation",
    ),
    Case(
        "postgres-message-not-json",
        "postgres",
        pg("UPDATE {s}.messages SET payload = '{not json' WHERE run_id = %s"),
        frozenset(),
        (),
        refused_by="InvalidTextRepresentation",
    ),
    Case(
        "postgres-message-seq-zero",
        "postgres",
        pg("UPDATE {s}.messages SET seq = 0 WHERE run_id = %s"),
        INBOX,
        ("message 0", "seq", "greater than or equal to 1"),
    ),
    Case(
        "postgres-history-call-id-not-an-int",
        "postgres",
        pg(
            "UPDATE {s}.events SET body = jsonb_set(body::jsonb, '{data,call_id}', '\"one\"')::text "
            "WHERE seq = 3 AND run_id = %s"
        ),
        frozenset(),
        ("event seq 3", "call_id"),
        history=True,
    ),
]

CASES = FILE_CASES + SQLITE_CASES + REDIS_CASES + POSTGRES_CASES


def params(cases: list[Case]) -> list[Any]:
    return [
        pytest.param(
            case.backend,
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else [],
        )
        for case in cases
    ]


async def read_one(storage: StorageBackend, read: str, run_id: str) -> Any:
    if read == "activate":
        return await activate(storage, run_id)
    return await getattr(storage, read)(run_id)


async def reads(storage: StorageBackend, run_id: str) -> dict[str, Any]:
    return {
        "get_run": await storage.get_run(run_id),
        "get_events": await storage.get_events(run_id),
        "get_messages": await storage.get_messages(run_id),  # the pending ones, what an activation reads
    }


async def make_runs(storage: StorageBackend) -> list[str]:
    """Three runs, oldest first: asleep with a message pending (so due), the same (the
    one to damage), and completed."""
    runtime = LocalRuntime(storage, clock=VirtualClock())
    run_ids = [await runtime.start(paused), await runtime.start(paused), await runtime.start(done)]
    for run_id in run_ids[:2]:
        await storage.post_message(run_id, "signal", {"name": "go", "value": 1})
    return run_ids


def without_lease(picture: Any) -> Any:
    """A :func:`corrupt.stored` picture minus the lease, which a refused activation may
    have taken (and leaves to expire) before it found the damage."""
    if isinstance(picture, dict):
        return {
            key: without_lease(value)
            for key, value in picture.items()
            if key not in ("lease", "leases") and not str(key).endswith(":lease_expiry")
        }
    if isinstance(picture, list):
        return [without_lease(item) for item in picture if b":lease_expiry" not in repr(item).encode()]
    return picture


def test_the_catalogue_has_every_case_once() -> None:
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.backend for case in CASES} == set(corrupt.PERSISTENT)


@pytest.mark.parametrize(("backend_name", "case"), params(CASES))
async def test_a_damaged_run_is_refused_naming_it_and_the_others_are_untouched(
    backend_name: str,
    case: Case,
    make_backend: Factory,  # noqa: F811 - the fixture imported above
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = make_backend()
    older, target, newer = await make_runs(storage)
    others = [older, newer]
    before = {run_id: await reads(storage, run_id) for run_id in (older, target, newer)}
    stored = {run_id: corrupt.stored(storage, backend_name, run_id) for run_id in (older, target, newer)}
    await storage.close()

    if case.refused_by is not None:
        with pytest.raises(Exception) as refusal:
            case.damage(storage, target)
        assert type(refusal.value).__name__ == case.refused_by
        assert corrupt.stored(storage, backend_name, target) == stored[target]
    else:
        case.damage(storage, target)
    damaged = corrupt.stored(storage, backend_name, target)

    fresh = make_backend()  # no cache of what the store said before the damage
    try:
        for read in READS:
            if read in case.raises:
                with pytest.raises(CorruptedStorageError) as info:
                    result = await read_one(fresh, read, target)
                    pytest.fail(f"{read} did not raise: it returned {result!r:.300}")
                message = str(info.value)
                assert target in message, (read, message)
                for part in case.named:
                    assert part in message, (read, part, message)
            elif read == "get_run" and case.gone:
                assert await fresh.get_run(target) is None
            elif read == "get_events" and case.history:
                events = await fresh.get_events(target)  # one event changed, all still valid
                assert len(events) == len(before[target][read])
            elif read != "activate":
                assert await read_one(fresh, read, target) == before[target][read], read

        if case.history:
            await replayed_once(fresh, target, before[target], case.named)
        elif case.gone:
            assert (await activate(fresh, target)).status == "missing"
        elif "activate" not in case.raises:
            assert case.refused_by is not None
            assert (await activate(fresh, target)).status == "suspended"

        with caplog.at_level(logging.WARNING):
            listed = [run.run_id for run in (await fresh.list_runs()).runs]
        if case.listed:
            assert listed == [newer, target, older]
            assert await fresh.list_unreadable_runs() == []
        else:
            assert listed == [newer, older]
            assert target in caplog.text
            assert await fresh.list_unreadable_runs() == [target]
            for part in case.named:
                assert part in caplog.text, part

        for run_id in others:
            assert await reads(fresh, run_id) == before[run_id], run_id
            assert corrupt.stored(fresh, backend_name, run_id) == stored[run_id], run_id
        if not case.history and case.refused_by is None:
            assert without_lease(corrupt.stored(fresh, backend_name, target)) == without_lease(damaged)
    finally:
        await fresh.close()


async def replayed_once(storage: StorageBackend, run_id: str, before: dict[str, Any], named: tuple[str, ...]) -> None:
    """The log reads, the replay cannot use it: the run fails once, with
    CorruptedHistoryError naming the seq, and a second activation changes nothing."""
    events = await storage.get_events(run_id)
    assert len(events) == len(before["get_events"])
    outcome = await activate(storage, run_id)
    assert outcome.status == "failed"
    run = await storage.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"].endswith("CorruptedHistoryError"), run.error
    for part in (run_id, *named):
        assert part in run.error["message"], (part, run.error)
    after = await storage.get_events(run_id)
    assert after[:-1] == events and [e.type for e in after[-1:]] == ["workflow.failed"]
    assert (await activate(storage, run_id)).status == "finished"
    assert await storage.get_events(run_id) == after


# -- schema versions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaCase:
    id: str
    backend: str
    damage: Callable[[StorageBackend], Any]
    named: tuple[str, ...]
    xfail: str | None = None


SCHEMA_CASES = [
    SchemaCase(
        "sqlite-schema-version-newer",
        "sqlite",
        lambda storage: corrupt.sqlite_execute(storage, "PRAGMA user_version = 99"),
        ("schema version 99", "newer than this PyWorkflow understands", "upgrade PyWorkflow"),
    ),
    SchemaCase(
        "sqlite-schema-version-behind-its-tables",
        "sqlite",
        lambda storage: corrupt.sqlite_execute(storage, "PRAGMA user_version = 1"),
        ("table messages already exists",),
    ),
    SchemaCase(
        "postgres-schema-version-newer",
        "postgres",
        lambda storage: corrupt.postgres_execute(
            storage, "INSERT INTO {s}.pyworkflow_migrations (version) VALUES (99)"
        ),
        ("is at version 99", "newer than this PyWorkflow knows", "Upgrade pyworkflow"),
    ),
    SchemaCase(
        "postgres-schema-version-row-missing",
        "postgres",
        lambda storage: corrupt.postgres_execute(storage, "DELETE FROM {s}.pyworkflow_migrations WHERE version = 2"),
        ("not migration(s) [2]", "pyworkflow_migrations", "VALUES (2)"),
    ),
]


def schema_version(storage: StorageBackend, backend_name: str) -> Any:
    if backend_name == "sqlite":
        return corrupt.sqlite_execute(storage, "PRAGMA user_version")
    return corrupt.postgres_execute(storage, "SELECT version FROM {s}.pyworkflow_migrations ORDER BY version")


@pytest.mark.parametrize(
    ("backend_name", "case"),
    [
        pytest.param(c.backend, c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in SCHEMA_CASES
    ],
)
async def test_a_schema_version_it_cannot_use_stops_every_call_and_changes_nothing(
    backend_name: str,
    case: SchemaCase,
    make_backend: Factory,  # noqa: F811 - the fixture imported above
) -> None:
    storage = make_backend()
    run_ids = await make_runs(storage)
    stored = {run_id: corrupt.stored(storage, backend_name, run_id) for run_id in run_ids}
    await storage.close()
    case.damage(storage)
    version = schema_version(storage, backend_name)

    fresh = make_backend()
    try:
        calls: list[Callable[[], Any]] = [
            lambda: fresh.get_run(run_ids[0]),
            lambda: fresh.get_events(run_ids[0]),
            lambda: fresh.list_runs(),
            lambda: activate(fresh, run_ids[0]),
            lambda: LocalRuntime(fresh).start(done),
        ]
        for call in calls:
            with pytest.raises(ConfigurationError) as info:
                await call()
            for part in case.named:
                assert part in str(info.value), (part, str(info.value))
    finally:
        await fresh.close()
    assert schema_version(storage, backend_name) == version
    for run_id in run_ids:
        assert corrupt.stored(storage, backend_name, run_id) == stored[run_id]
