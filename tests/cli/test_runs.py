"""``pyworkflow runs list/show/events/result/export`` on SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pyworkflow import continue_as_new, run_child, workflow
from pyworkflow.signals import send_signal_async
from pyworkflow.storage.base import StorageBackend
from pyworkflow.testing import resume_local
from tests.cli.conftest import BIN, IMPORT, Store, cli_env, one_line_error

RUN_KEYS = {
    "run_id",
    "workflow_name",
    "status",
    "input",
    "result",
    "error",
    "idempotency_key",
    "created_at",
    "updated_at",
    "completed_at",
    "deadline",
    "wake_at",
    "parent_run_id",
}


# -- list ------------------------------------------------------------------------------------


def test_list_json_shape_holds_every_run_newest_first(store: Store) -> None:
    page = store.json("runs", "list")
    assert set(page) == {"runs", "next_cursor"}
    assert page["next_cursor"] is None
    assert [r["run_id"] for r in page["runs"]] == [
        store.ids["sleeping"],
        store.ids["waiting"],
        store.ids["failed"],
        store.ids["completed"],
    ]
    for run in page["runs"]:
        assert set(run) == RUN_KEYS
    by_id = {r["run_id"]: r for r in page["runs"]}
    assert by_id[store.ids["completed"]]["status"] == "completed"
    assert by_id[store.ids["completed"]]["result"] == 5
    assert by_id[store.ids["failed"]]["error"]["message"] == "boom"


def test_list_table(store: Store) -> None:
    proc = store.run("runs", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "WORKFLOW"]
    assert len(lines) == 5
    failed = next(line for line in lines if store.ids["failed"] in line)
    assert "cli.explode" in failed and "failed" in failed and "ValueError: boom" in failed


def test_list_filters(store: Store) -> None:
    def ids(*args: str) -> list[str]:
        return [r["run_id"] for r in store.json("runs", "list", *args)["runs"]]

    assert ids("--status", "failed") == [store.ids["failed"]]
    assert ids("--status", "SUSPENDED") == [store.ids["sleeping"], store.ids["waiting"]]
    assert ids("--workflow", "cli.add") == [store.ids["completed"]]
    assert ids("--workflow", "cli.add", "--status", "failed") == []
    assert len(ids("--since", "1h")) == 4
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert ids("--since", future) == []
    assert len(ids("--since", "2000-01-01T00:00:00")) == 4  # naive: UTC


def test_list_pages_with_the_cursor(store: Store) -> None:
    first = store.json("runs", "list", "--limit", "3")
    assert len(first["runs"]) == 3 and first["next_cursor"]
    second = store.json("runs", "list", "--limit", "3", "--cursor", first["next_cursor"])
    assert second["next_cursor"] is None
    seen = [r["run_id"] for r in first["runs"] + second["runs"]]
    assert sorted(seen) == sorted(store.ids.values())
    proc = store.run("runs", "list", "--limit", "1")
    assert "--cursor" in proc.stdout.splitlines()[-1]


def test_list_nothing(store: Store) -> None:
    proc = store.run("runs", "list", "--workflow", "no.such")
    assert proc.returncode == 0 and proc.stdout.strip() == "no runs match"


# -- show ------------------------------------------------------------------------------------


def test_show_json_shape(store: Store) -> None:
    shown = store.json("runs", "show", store.ids["completed"])
    assert set(shown) == {
        "run",
        "parent_run_id",
        "children",
        "event_count",
        "last_event",
        "pending_messages",
        "chain",
        "calls",
        "state",
        "history_error",
    }
    assert shown["chain"] is None
    assert set(shown["run"]) == RUN_KEYS
    assert shown["run"]["result"] == 5
    assert shown["event_count"] == 5 and shown["last_event"]["type"] == "workflow.completed"
    assert shown["state"] == {"stage": "adding"}
    assert shown["calls"] == [
        {"call_id": 1, "kind": "step", "name": "cli.double", "state": "completed", "attempt": 1, "wake_at": None}
    ]
    assert shown["history_error"] is None
    sleeping = store.json("runs", "show", store.ids["sleeping"])
    assert sleeping["calls"][0]["kind"] == "sleep" and sleeping["calls"][0]["state"] == "waiting"
    assert sleeping["calls"][0]["wake_at"] == sleeping["run"]["wake_at"].replace("Z", "+00:00")


def test_show_human(store: Store) -> None:
    proc = store.run("runs", "show", store.ids["failed"])
    assert proc.returncode == 0, proc.stderr
    assert f"run:              {store.ids['failed']}" in proc.stdout
    assert "status:           failed" in proc.stdout
    assert "error:            builtins.ValueError: boom" in proc.stdout


def test_show_counts_pending_messages(store: Store) -> None:
    store.call(lambda s: send_signal_async(store.ids["waiting"], "go", 1, storage=s))
    assert store.json("runs", "show", store.ids["waiting"])["pending_messages"] == 1


@workflow(name="cli_tests.relay")  # here, not in tests.cli.workflows: `runs show` needs no code
async def relay(left: int) -> int:
    if left > 0:
        await continue_as_new(left - 1)
    return left


def test_show_a_run_of_a_continue_as_new_chain(sqlite_store: Store) -> None:
    from pyworkflow.continuation import continued_run_id
    from pyworkflow.testing import LocalRuntime

    async def chain(storage: StorageBackend) -> str:
        runtime = LocalRuntime(storage)
        first = await runtime.start(relay, 2)
        await runtime.run_until_complete(first)
        return first

    first = sqlite_store.call(chain)
    second, third = continued_run_id(first), continued_run_id(continued_run_id(first))
    shown = sqlite_store.json("runs", "show", first)
    assert shown["run"]["status"] == "continued"
    assert shown["chain"] == {
        "first_run_id": first,
        "index": 0,
        "continued_from": None,
        "continued_as": second,
        "current_run_id": third,
    }
    middle = sqlite_store.json("runs", "show", second)["chain"]
    assert middle["index"] == 1 and middle["continued_from"] == first and middle["current_run_id"] == third
    proc = sqlite_store.run("runs", "show", first)
    assert proc.returncode == 0, proc.stderr
    assert f"run #0 of the chain begun by {first}" in proc.stdout
    result = sqlite_store.json("runs", "result", first)
    assert result == {"run_id": third, "status": "completed", "result": 0}
    assert "continued as:" in proc.stdout and f"chain's current run: {third}" in proc.stdout


@workflow(name="cli_tests.kid")
async def kid(n: int) -> int:
    return n + 1


@workflow(name="cli_tests.family")
async def family() -> list[int]:
    return [await run_child(kid, 1), await run_child(kid, 2)]


def test_show_and_list_a_parent_and_its_children(store: Store) -> None:
    from pyworkflow.testing import LocalRuntime

    async def make(storage: StorageBackend) -> str:
        runtime = LocalRuntime(storage)
        parent = await runtime.start(family)
        await runtime.run_until_complete(parent)
        return parent

    parent = store.call(make)
    shown = store.json("runs", "show", parent)
    assert shown["parent_run_id"] is None and len(shown["children"]) == 2
    assert {c["status"] for c in shown["children"]} == {"completed"}
    child = shown["children"][0]["run_id"]
    assert store.json("runs", "show", child)["parent_run_id"] == parent
    assert store.json("runs", "show", child)["run"]["parent_run_id"] == parent

    listed = store.json("runs", "list", "--parent", parent)
    assert {r["run_id"] for r in listed["runs"]} == {c["run_id"] for c in shown["children"]}
    assert {r["parent_run_id"] for r in listed["runs"]} == {parent}
    page = store.json("runs", "list", "--parent", parent, "--limit", "1")
    assert len(page["runs"]) == 1 and page["next_cursor"]
    assert store.json("runs", "list", "--parent", parent, "--status", "failed")["runs"] == []
    text = store.run("runs", "show", child)
    assert "parent:" in text.stdout and parent in text.stdout
    line = one_line_error(store.run("runs", "list", "--parent", "no-such-run"), 1)
    assert "no-such-run" in line


# -- events ----------------------------------------------------------------------------------


def test_events_json_and_table(store: Store) -> None:
    log = store.json("runs", "events", store.ids["completed"])
    assert set(log) == {"run_id", "events"}
    assert [e["seq"] for e in log["events"]] == [1, 2, 3, 4, 5]
    assert set(log["events"][0]) == {"seq", "type", "timestamp", "data", "v"}
    assert log["events"][-1]["type"] == "workflow.completed"
    after = store.json("runs", "events", store.ids["completed"], "--after", "3")
    assert [e["seq"] for e in after["events"]] == [4, 5]
    proc = store.run("runs", "events", store.ids["completed"])
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "TYPE", "DETAILS"]
    assert "step.started" in lines[3] and "step=cli.double" in lines[3]


def _follow(store: Store, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BIN or "pyworkflow", "--storage", store.url, "--import", IMPORT, *extra],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _deliver(run_id: str, storage: StorageBackend) -> None:
    await send_signal_async(run_id, "go", {"n": 7}, storage=storage)
    await resume_local(run_id, storage)


def test_events_follow_ends_when_the_run_finishes(store: Store) -> None:
    run_id = store.ids["waiting"]
    proc = _follow(store, "runs", "events", run_id, "--follow", "--interval", "0.05")
    try:
        assert proc.stdout is not None
        header = proc.stdout.readline()
        assert header.split()[0] == "SEQ"
        seen = [proc.stdout.readline() for _ in range(3)]  # what the run wrote before it waited
        assert "workflow.suspended" in seen[-1]
        store.call(lambda s: _deliver(run_id, s))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines()[-1].split()[3] == "workflow.completed"
    assert "signal.received" in out


def test_events_follow_json_lines(store: Store) -> None:
    run_id = store.ids["waiting"]
    proc = _follow(store, "--json", "runs", "events", run_id, "--follow", "--interval", "0.05")
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [e["seq"] for e in first] == [1, 2, 3]
        store.call(lambda s: _deliver(run_id, s))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    rest = [json.loads(line) for line in out.splitlines()]
    assert rest[-1]["type"] == "workflow.completed" and rest[-1]["data"]["result"] == {"got": {"n": 7}}
    assert [e["seq"] for e in first + rest] == list(range(1, len(first + rest) + 1))


def test_events_follow_of_a_finished_run_ends_at_once(store: Store) -> None:
    proc = store.run("runs", "events", store.ids["failed"], "--follow")
    assert proc.returncode == 0 and "workflow.failed" in proc.stdout


# -- result ----------------------------------------------------------------------------------


def test_result_of_a_completed_run(store: Store) -> None:
    proc = store.run("runs", "result", store.ids["completed"])
    assert (proc.returncode, proc.stdout.strip()) == (0, "5")
    assert store.json("runs", "result", store.ids["completed"]) == {
        "run_id": store.ids["completed"],
        "status": "completed",
        "result": 5,
    }


def test_result_of_a_failed_run_exits_1_with_the_error(store: Store) -> None:
    line = one_line_error(store.run("runs", "result", store.ids["failed"]), 1)
    assert store.ids["failed"] in line and "ValueError: boom" in line
    body = store.json("runs", "result", store.ids["failed"], code=1)
    assert body["status"] == "failed" and body["error"]["message"] == "boom"


def test_result_of_an_unfinished_run_exits_3(store: Store) -> None:
    line = one_line_error(store.run("runs", "result", store.ids["sleeping"], "--wait", "0.2"), 3)
    assert "has not finished (status suspended)" in line
    body = store.json("runs", "result", store.ids["sleeping"], code=3)
    assert body["status"] == "suspended" and body["wake_at"]


# -- export ----------------------------------------------------------------------------------


def test_export_is_the_run_and_its_log(store: Store, tmp_path: Path) -> None:
    doc = store.json("runs", "export", store.ids["completed"])
    assert set(doc) == {"format", "run", "events"}
    assert doc["format"] == "pyworkflow.history/1"
    assert doc["run"]["run_id"] == store.ids["completed"] and set(doc["run"]) == RUN_KEYS
    events = store.call(lambda s: s.get_events(store.ids["completed"]))
    assert doc["events"] == [e.model_dump(mode="json") for e in events]
    target = tmp_path / "history.json"
    proc = store.run("runs", "export", store.ids["completed"], "-o", str(target))
    assert proc.returncode == 0 and "5 events" in proc.stdout
    assert json.loads(target.read_text()) == doc


# -- unknown runs ------------------------------------------------------------------------------


def test_unknown_run_is_one_line_and_exit_1(store: Store) -> None:
    for command in (["show"], ["events"], ["events", "--follow"], ["result"], ["export"]):
        line = one_line_error(store.run("runs", *command, "no-such-run"), 1)
        assert line == f"pyworkflow: error: no run 'no-such-run' in {store.url}"


def test_unreadable_lists_the_runs_that_cannot_be_read(store: Store) -> None:
    assert store.json("runs", "unreadable") == {"runs": []}
    assert store.run("runs", "unreadable").stdout.strip() == "no unreadable runs"
    if store.kind != "sqlite":
        return  # how each backend is damaged: tests/storage/test_poison.py
    import sqlite3

    path = store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET record = '{not json' WHERE run_id = ?", (store.ids["failed"],))
    assert store.json("runs", "unreadable") == {"runs": [store.ids["failed"]]}
    listed = [r["run_id"] for r in store.json("runs", "list")["runs"]]
    assert store.ids["failed"] not in listed and store.ids["completed"] in listed
