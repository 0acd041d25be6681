"""The schedule part of the storage contract, on every backend: compare-and-set writes,
the due index, listing in id order, deletion, and two writers racing on one version."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from pyworkflow.storage.base import StorageBackend

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)


def body(n: int, **extra: object) -> str:
    return json.dumps({"n": n, "input": {"args": [n], "kwargs": {}}, **extra})


async def test_create_read_update_delete(storage: StorageBackend) -> None:
    assert await storage.get_schedule("daily") is None
    assert await storage.save_schedule("daily", body(1), T0, version=0) == 1
    stored = await storage.get_schedule("daily")
    assert stored is not None
    assert (stored.schedule_id, json.loads(stored.body), stored.due_at, stored.version) == (
        "daily",
        json.loads(body(1)),
        T0,
        1,
    )

    # a create of an existing id and an update from a stale version both write nothing
    assert await storage.save_schedule("daily", body(2), T0, version=0) is None
    assert await storage.save_schedule("daily", body(2), T0, version=7) is None
    assert await storage.save_schedule("daily", body(3), T0 + timedelta(hours=1), version=1) == 2
    stored = await storage.get_schedule("daily")
    assert stored is not None and json.loads(stored.body)["n"] == 3 and stored.version == 2
    assert stored.due_at == T0 + timedelta(hours=1)

    assert await storage.delete_schedule("daily") is True
    assert await storage.delete_schedule("daily") is False
    assert await storage.get_schedule("daily") is None
    assert await storage.save_schedule("daily", body(4), None, version=0) == 1  # the id is free again


async def test_due_reads_only_what_is_due_earliest_first(storage: StorageBackend) -> None:
    for i, minutes in enumerate([30, -5, 0, -10, 90]):
        assert await storage.save_schedule(f"s{i}", body(i), T0 + timedelta(minutes=minutes), version=0) == 1
    assert await storage.save_schedule("paused", body(9), None, version=0) == 1

    due = await storage.due_schedules(T0)
    assert [s.schedule_id for s in due] == ["s3", "s1", "s2"]
    assert [s.schedule_id for s in await storage.due_schedules(T0, limit=2)] == ["s3", "s1"]
    assert await storage.due_schedules(T0 - timedelta(days=1)) == []
    assert await storage.due_schedules(T0, limit=0) == []

    # moving a schedule later takes it out of what is due; pausing (None) too
    s3 = due[0]
    assert await storage.save_schedule("s3", s3.body, T0 + timedelta(days=1), version=s3.version) == 2
    assert await storage.save_schedule("s1", due[1].body, None, version=due[1].version) == 2
    assert [s.schedule_id for s in await storage.due_schedules(T0)] == ["s2"]
    await storage.delete_schedule("s2")
    assert await storage.due_schedules(T0) == []
    everything = await storage.due_schedules(T0 + timedelta(days=2), limit=100)
    assert [s.schedule_id for s in everything] == ["s0", "s4", "s3"]


async def test_list_in_id_order_with_a_cursor(storage: StorageBackend) -> None:
    ids = ["b", "a", "c/with:odd chars", "Z", "é"]
    for i, schedule_id in enumerate(ids):
        await storage.save_schedule(schedule_id, body(i), T0, version=0)
    listed = [s.schedule_id for s in await storage.list_schedules()]
    assert listed == sorted(ids)
    first = await storage.list_schedules(limit=2)
    rest = await storage.list_schedules(after=first[-1].schedule_id, limit=10)
    assert [s.schedule_id for s in first + rest] == sorted(ids)
    assert await storage.list_schedules(limit=0) == []


async def test_racing_writers_one_wins(storage: StorageBackend) -> None:
    await storage.save_schedule("race", body(0), T0, version=0)
    results = await asyncio.gather(*(storage.save_schedule("race", body(n), T0, version=1) for n in range(1, 9)))
    assert [r for r in results if r is not None] == [2]
    stored = await storage.get_schedule("race")
    assert stored is not None and stored.version == 2
