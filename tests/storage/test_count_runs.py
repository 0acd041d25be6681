"""``count_runs``: runs by status and by workflow, on every backend, without paging.

The counts must agree with what ``list_runs`` pages through (with the same
``created_after``), follow runs as they move between statuses and go away, skip nothing
but what the contract says (the file backend, having no index, skips a run whose record
cannot be read back; the others count it), and go through the encryption wrapper.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from pyworkflow.storage.base import RunCounts, RunStatus, StorageBackend
from tests.storage.test_contract import ev, make_run, new_run

UTC = timezone.utc
BASE = datetime(2030, 1, 1, tzinfo=UTC)


def zeros(**counts: int) -> dict[str, int]:
    """Every status at zero but those given, in the enum's order."""
    return {s.value: counts.get(s.value, 0) for s in RunStatus}


async def listed(storage: StorageBackend, **filters: Any) -> list[str]:
    """Every run id ``list_runs`` pages through with ``filters``."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await storage.list_runs(limit=4, cursor=cursor, **filters)
        ids += [r.run_id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            return ids


async def populate(storage: StorageBackend) -> dict[str, list[str]]:
    """Eleven runs of three workflows, one minute apart from :data:`BASE`, moved to their
    statuses as the engine moves them: an append with its run changes, or update_run.
    Returns the run ids by status."""
    plan = [  # (workflow, status)
        ("orders", RunStatus.COMPLETED),
        ("orders", RunStatus.COMPLETED),
        ("emails", RunStatus.FAILED),
        ("orders", RunStatus.SUSPENDED),
        ("emails", RunStatus.RUNNING),
        ("orders", RunStatus.PENDING),
        ("audit", RunStatus.CANCELLED),
        ("emails", RunStatus.COMPLETED),
        ("orders", RunStatus.PAUSED),
        ("emails", RunStatus.PENDING),
        ("audit", RunStatus.CONTINUED),
    ]
    ids: dict[str, list[str]] = {}
    for i, (workflow, status) in enumerate(plan):
        run = await new_run(storage, workflow=workflow, created_at=BASE + timedelta(minutes=i))
        if status == RunStatus.COMPLETED:
            await storage.append_events(
                run.run_id,
                [ev(2, "workflow.completed", result=i)],
                run_changes={"status": status, "result": i, "completed_at": datetime.now(UTC)},
            )
        elif status == RunStatus.FAILED:
            error = {"type": "builtins.ValueError", "message": "no", "traceback": ""}
            await storage.append_events(
                run.run_id, [ev(2, "workflow.failed", error=error)], run_changes={"status": status, "error": error}
            )
        elif status == RunStatus.SUSPENDED:
            await storage.append_events(
                run.run_id,
                [ev(2, "workflow.suspended")],
                run_changes={"status": status, "wake_at": datetime.now(UTC) + timedelta(hours=1)},
            )
        elif status != RunStatus.PENDING:
            await storage.update_run(run.run_id, status=status)
        ids.setdefault(status.value, []).append(run.run_id)
    return ids


async def test_an_empty_store_counts_nothing(storage: StorageBackend) -> None:
    counts = await storage.count_runs()
    assert counts == RunCounts(by_status=zeros(), by_workflow={}, total=0)
    assert list(counts.by_status) == [s.value for s in RunStatus]
    assert (await storage.count_runs(created_after=BASE)).total == 0


async def test_counts_by_status_and_by_workflow(storage: StorageBackend) -> None:
    await populate(storage)
    counts = await storage.count_runs()
    assert counts.by_status == zeros(
        completed=3, failed=1, suspended=1, running=1, pending=2, cancelled=1, paused=1, continued=1
    )
    assert list(counts.by_status) == [s.value for s in RunStatus]
    # most runs first, ties by name
    assert list(counts.by_workflow.items()) == [("orders", 5), ("emails", 4), ("audit", 2)]
    assert counts.total == 11


async def test_counts_follow_runs_that_move_and_go(storage: StorageBackend) -> None:
    ids = await populate(storage)
    pending = ids["pending"][0]
    await storage.append_events(
        pending, [ev(2, "workflow.completed", result=None)], run_changes={"status": RunStatus.COMPLETED}
    )
    assert await storage.delete_run(ids["cancelled"][0])
    await new_run(storage, workflow="zeta")
    counts = await storage.count_runs()
    assert counts.by_status["pending"] == 2 and counts.by_status["completed"] == 4  # zeta is pending
    assert counts.by_status["cancelled"] == 0
    assert counts.by_workflow == {"orders": 5, "emails": 4, "audit": 1, "zeta": 1}
    assert counts.total == 11


async def test_counts_agree_with_list_runs(storage: StorageBackend) -> None:
    await populate(storage)
    counts = await storage.count_runs()
    assert counts.total == len(await listed(storage)) == sum(counts.by_workflow.values())
    for status, n in counts.by_status.items():
        assert len(await listed(storage, status=status)) == n, status
    for workflow, n in counts.by_workflow.items():
        assert len(await listed(storage, workflow_name=workflow)) == n, workflow


async def test_created_after_counts_only_later_runs(storage: StorageBackend) -> None:
    await populate(storage)
    cutoff = BASE + timedelta(minutes=6)  # run 6 was created at exactly this time: not after it
    later = await storage.count_runs(created_after=cutoff)
    assert later.by_status == zeros(completed=1, paused=1, pending=1, continued=1)
    assert later.by_workflow == {"emails": 2, "audit": 1, "orders": 1}
    assert later.total == 4 == len(await listed(storage, created_after=cutoff))
    naive = await storage.count_runs(created_after=cutoff.replace(tzinfo=None))  # read as UTC
    assert naive == later
    elsewhere = await storage.count_runs(created_after=cutoff.astimezone(timezone(timedelta(hours=-5))))
    assert elsewhere == later
    assert await storage.count_runs(created_after=BASE - timedelta(seconds=1)) == await storage.count_runs()
    assert (await storage.count_runs(created_after=BASE + timedelta(days=1))).total == 0
    # a microsecond matters: the run made at the cutoff counts from just before it
    assert (await storage.count_runs(created_after=cutoff - timedelta(microseconds=1))).total == 5


@pytest.mark.parametrize("bad", ["2030-01-01T00:00:00", 1_900_000_000, date(2030, 1, 1), True])
async def test_created_after_must_be_a_datetime(storage: StorageBackend, bad: Any) -> None:
    with pytest.raises(TypeError, match=r"count_runs: created_after must be a datetime or None, got"):
        await storage.count_runs(created_after=bad)


async def test_an_unreadable_run_stops_no_count(storage: StorageBackend, backend_name: str) -> None:
    from tests.storage.corrupt import PERSISTENT, make_unreadable

    if backend_name not in PERSISTENT:
        pytest.skip("only a persistent backend's records can be damaged behind its back")
    runs = [await new_run(storage, workflow="wf", created_at=BASE + timedelta(minutes=i)) for i in range(3)]
    make_unreadable(storage, backend_name, runs[1].run_id)
    counts = await storage.count_runs()
    # The indexed backends never read a record to count it; the file backend reads
    # them all (it has no index), and skips what it cannot read, as its listings do.
    assert counts.total == (2 if backend_name == "file" else 3)
    assert sum(counts.by_workflow.values()) == counts.total


async def test_the_encryption_wrapper_counts_what_it_wraps(storage: StorageBackend) -> None:
    pytest.importorskip("cryptography")
    from cryptography.fernet import Fernet

    from pyworkflow.storage.encrypted import EncryptedStorage

    inner = storage.inner if isinstance(storage, EncryptedStorage) else storage
    sealed = EncryptedStorage(inner, Fernet.generate_key().decode())
    for i, workflow in enumerate(["secret.a", "secret.a", "secret.b"]):
        run, _ = await sealed.create_run(make_run(workflow=workflow, created_at=BASE + timedelta(minutes=i)))
        if i == 0:
            await sealed.update_run(run.run_id, status=RunStatus.COMPLETED, result={"card": "4111"})
    counts = await sealed.count_runs()
    assert counts == await inner.count_runs()
    assert counts.by_status == zeros(completed=1, pending=2)
    assert counts.by_workflow == {"secret.a": 2, "secret.b": 1}
    assert (await sealed.count_runs(created_after=BASE)).total == 2
    with pytest.raises(TypeError, match="count_runs: created_after"):
        await sealed.count_runs(created_after="yesterday")  # type: ignore[arg-type]


async def test_redis_finds_only_its_own_prefixes_workflows() -> None:
    """Redis finds the workflow sets with SCAN MATCH: a prefix holding glob characters
    must match itself only, not the keys of the prefixes its pattern would match."""
    import uuid

    from tests import services

    services.require_redis()
    import redis

    from pyworkflow.storage.redis import RedisStorageBackend

    root = f"pwtest:{uuid.uuid4().hex[:12]}"
    prefixes = {f"{root}:a*": "star", f"{root}:a?": "question", f"{root}:a[b]\\": "brackets", f"{root}:ab": "plain"}
    backends = {p: RedisStorageBackend(services.REDIS_URL, prefix=p) for p in prefixes}
    try:
        for p, workflow in prefixes.items():
            await new_run(backends[p], workflow=workflow)
        for p, workflow in prefixes.items():
            counts = await backends[p].count_runs()
            assert counts.by_workflow == {workflow: 1} and counts.total == 1, p
    finally:
        for backend in backends.values():
            await backend.close()
        with redis.Redis.from_url(services.REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{root}:*", count=1000))
            if keys:
                client.delete(*keys)
