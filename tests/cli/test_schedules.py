"""``pyworkflow schedules``: every subcommand through the console script on SQLite and
PostgreSQL, ``--json`` shapes, and bad input (an unknown id, a bad window) as one line."""

from __future__ import annotations

from typing import Any

from pyworkflow import create_schedule_async
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import StorageBackend
from tests.cli import workflows as wf
from tests.cli.conftest import Store, one_line_error


def with_schedules(store: Store) -> Store:
    async def make(storage: StorageBackend) -> None:
        await create_schedule_async("hourly-add", wf.add, cron="0 * * * *", args=(1, 2), storage=storage)
        await create_schedule_async(
            "b-every", wf.add, every="90s", args=(5,), timezone="Europe/Berlin", storage=storage
        )

    store.call(make)
    return store


def test_list_and_show(empty_store: Store) -> None:
    store = with_schedules(empty_store)
    body = store.json("schedules", "list")
    assert [s["schedule_id"] for s in body["schedules"]] == ["b-every", "hourly-add"]
    hourly = body["schedules"][1]
    assert hourly["cron"] == "0 * * * *" and hourly["workflow"] == "cli.add" and hourly["paused"] is False
    assert hourly["input"] == {"args": [1, 2], "kwargs": {}} and hourly["fired"] == 0

    table = store.run("schedules", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["SCHEDULE_ID", "WORKFLOW", "CRON", "EVERY"]
    assert rows[0].split()[:4] == ["b-every", "cli.add", "-", "90s"]

    shown = store.json("schedules", "show", "b-every")
    assert shown["every"] == 90 and shown["timezone"] == "Europe/Berlin"
    text = store.run("schedules", "show", "hourly-add")
    assert text.returncode == 0 and "next_run_at" in text.stdout


def test_pause_resume_trigger_backfill_delete(empty_store: Store) -> None:
    store = with_schedules(empty_store)
    paused = store.json("schedules", "pause", "hourly-add")
    assert paused["paused"] is True and paused["next_run_at"] is None
    assert store.run("schedules", "pause", "hourly-add").stdout.strip() == "paused schedule hourly-add"
    resumed = store.json("schedules", "resume", "hourly-add")
    assert resumed["paused"] is False and resumed["next_run_at"] is not None

    run_id = store.json("schedules", "trigger", "hourly-add")
    assert isinstance(run_id, str)
    ids = store.json("schedules", "backfill", "hourly-add", "--start", "3h", "--end", "1h")
    assert isinstance(ids, list) and 2 <= len(ids) <= 3

    async def tick_and_read(storage: StorageBackend) -> list[Any]:
        await LocalRuntime(storage).tick()  # what beat's next tick does with them
        return [await storage.get_run(i) for i in [run_id, *ids]]

    runs = store.call(tick_and_read)
    assert [r.status for r in runs] == ["completed"] * len(runs) and {r.result for r in runs} == {3}
    info = store.json("schedules", "show", "hourly-add")
    assert info["fired"] == 1 + len(ids) and info["recent"][0]["action"] == "triggered"

    assert store.run("schedules", "delete", "hourly-add").stdout.strip() == "deleted schedule hourly-add"
    assert [s["schedule_id"] for s in store.json("schedules", "list")["schedules"]] == ["b-every"]
    assert store.call(lambda storage: storage.get_run(run_id)) is not None  # its runs stay


def test_bad_input_is_one_line(sqlite_store: Store) -> None:
    store = with_schedules(sqlite_store)
    for args in (["show", "nope"], ["pause", "nope"], ["resume", "nope"], ["trigger", "nope"], ["delete", "nope"]):
        line = one_line_error(store.run("schedules", *args), 1)
        assert "schedule 'nope' does not exist" in line, line
    line = one_line_error(store.run("schedules", "backfill", "nope", "--start", "2h", "--end", "1h"), 1)
    assert "schedule 'nope' does not exist" in line
    assert "--end" in one_line_error(store.run("schedules", "backfill", "b-every", "--start", "1h", "--end", "2h"), 2)
    assert "--start" in one_line_error(store.run("schedules", "backfill", "b-every", "--end", "1h"), 2)
    line = one_line_error(store.run("schedules", "backfill", "b-every", "--start", "30d", "--end", "1h"), 1)
    assert "more than 10000 slots" in line
    assert one_line_error(store.run("schedules", "show"), 2)
    assert store.json("schedules", "list")["schedules"][0]["fired"] == 0  # nothing was started


def test_no_schedules(sqlite_store: Store) -> None:
    proc = sqlite_store.run("schedules", "list")
    assert proc.returncode == 0 and proc.stdout.strip() == "no schedules", (proc.stdout, proc.stderr)
    assert sqlite_store.json("schedules", "list") == {"schedules": []}
