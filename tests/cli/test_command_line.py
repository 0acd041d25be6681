"""The command line itself: help, bad flags, bad storage, and errors that are one line
(never a traceback, never a password) with the documented exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Store, one_line_error, pyworkflow

COMMANDS = [
    ["runs", "list"],
    ["runs", "show", "r"],
    ["runs", "events", "r"],
    ["runs", "result", "r"],
    ["runs", "signal", "r", "go"],
    ["runs", "export", "r"],
    ["runs", "prune", "--older-than", "1d"],
    ["runs", "cancel", "r"],
    ["runs", "retry", "r"],
    ["start", "cli.add"],
    ["schedules", "list"],
    ["schedules", "backfill", "s", "--start", "2d", "--end", "1d"],
    ["replay"],
    ["doctor"],
]


def test_help_of_every_command() -> None:
    proc = pyworkflow("--help")
    assert proc.returncode == 0
    for name in ("runs", "start", "schedules", "replay", "doctor"):
        assert f"  {name} " in proc.stdout
    for command in COMMANDS:
        path = [c for c in command if not c.startswith("-")][: 2 if command[0] in ("runs", "schedules") else 1]
        proc = pyworkflow(*path, "--help")
        assert proc.returncode == 0 and proc.stdout.startswith("Usage: pyworkflow"), (path, proc.stderr)


def test_version() -> None:
    proc = pyworkflow("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pyworkflow, version ")


def test_no_command_shows_the_help() -> None:
    proc = pyworkflow()
    assert proc.returncode == 2 and proc.stdout.startswith("Usage: pyworkflow") and proc.stderr == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_bad_flag_is_one_line_and_exit_2(sqlite_store: Store, command: list[str]) -> None:
    line = one_line_error(sqlite_store.run(*command, "--no-such-flag"), 2)
    assert "No such option" in line and "--no-such-flag" in line and "--help" in line


def test_usage_errors(sqlite_store: Store) -> None:
    assert "Missing argument 'RUN_ID'" in one_line_error(sqlite_store.run("runs", "show"), 2)
    assert "No such command 'lsit'" in one_line_error(sqlite_store.run("runs", "lsit"), 2)
    assert "'--limit'" in one_line_error(sqlite_store.run("runs", "list", "--limit", "0"), 2)
    assert "'--status'" in one_line_error(sqlite_store.run("runs", "list", "--status", "done"), 2)
    assert "not a cursor" in one_line_error(sqlite_store.run("runs", "list", "--cursor", "page-2"), 2)
    assert "neither a duration" in one_line_error(sqlite_store.run("runs", "list", "--since", "yesterday"), 2)


def test_json_goes_before_or_after_the_command(sqlite_store: Store) -> None:
    assert sqlite_store.json("runs", "list")["runs"]
    proc = sqlite_store.run("runs", "list", "--json")
    assert proc.returncode == 0 and proc.stdout.startswith("{")


def test_unknown_storage_scheme() -> None:
    line = one_line_error(pyworkflow("--storage", "mysql://u:pw@h/db", "runs", "list"), 1)
    assert "scheme must be one of" in line and "pw" not in line.replace("pyworkflow", "")


def test_unreachable_storage_hides_the_password() -> None:
    url = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/test"
    for command in (["runs", "list"], ["runs", "show", "r"], ["runs", "prune", "--older-than", "1d"]):
        line = one_line_error(pyworkflow("--storage", url, *command), 1)
        assert "s3cr3t-pw" not in line and "127.0.0.1" in line, line


def test_a_store_that_is_not_there_is_an_error_not_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    for command in (["runs", "list"], ["runs", "show", "r"], ["runs", "prune", "--older-than", "1d"]):
        line = one_line_error(pyworkflow("--storage", f"sqlite:///{path}", *command), 1)
        assert f"no database file at '{path}'" in line
    line = one_line_error(pyworkflow("--storage", f"file://{tmp_path / 'nothing'}", "runs", "list"), 1)
    assert "no directory at" in line
    assert list(tmp_path.iterdir()) == []
