"""``pyworkflow start``: in this process with ``--local``, and through the broker."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.cli.conftest import Store, cli_env, one_line_error, pyworkflow


def test_start_local_runs_to_the_end(empty_store: Store) -> None:
    body = empty_store.json("start", "cli.add", "[4]", "--kwargs", '{"b": 1}', "--local")
    assert set(body) == {"run_id", "workflow", "status", "local", "result"}
    assert (body["workflow"], body["status"], body["local"], body["result"]) == ("cli.add", "completed", True, 5)
    run = empty_store.call(lambda s: s.get_run(body["run_id"]))
    assert run.status == "completed" and run.input == {"args": [4], "kwargs": {"b": 1}}
    proc = empty_store.run("start", "cli.add", "[1, 2]", "--local")
    assert proc.returncode == 0 and proc.stdout.splitlines()[1] == "result: 3"


def test_start_local_one_argument_and_failure(empty_store: Store) -> None:
    proc = empty_store.run("--json", "start", "cli.explode", '"kaboom"', "--local")
    assert proc.returncode == 1  # the run failed
    body = json.loads(proc.stdout)
    assert body["status"] == "failed" and body["error"]["message"] == "kaboom"


def test_start_local_suspends(empty_store: Store) -> None:
    proc = empty_store.run("start", "cli.nap", "[60]", "--local")
    assert proc.returncode == 0 and ": suspended" in proc.stdout.splitlines()[0]


def test_start_idempotency_key(empty_store: Store) -> None:
    first = empty_store.json("start", "cli.add", "[1]", "--local", "--idempotency-key", "order-1")
    again = empty_store.json("start", "cli.add", "[1]", "--local", "--idempotency-key", "order-1")
    assert first["run_id"] == again["run_id"]
    assert len(empty_store.json("runs", "list")["runs"]) == 1


def test_start_sends_the_activation_to_the_broker(empty_store: Store, tmp_path: Path) -> None:
    broker = tmp_path / "broker"
    body = empty_store.json("--broker", f"filesystem://{broker}", "start", "cli.add", "[7]")
    assert (body["status"], body["local"]) == ("pending", False)
    run = empty_store.call(lambda s: s.get_run(body["run_id"]))
    assert run.status == "pending" and run.input == {"args": [7], "kwargs": {}}
    messages = list((broker / "queue").glob("*.msg"))
    assert len(messages) == 1 and "pyworkflow.workflows" in messages[0].name
    envelope = json.loads(messages[0].read_text())
    assert envelope["headers"]["task"] == "pyworkflow.activate"
    args, _, _ = json.loads(base64.b64decode(envelope["body"]))
    assert args == [body["run_id"]]


def test_start_broker_from_the_environment(empty_store: Store, tmp_path: Path) -> None:
    broker = tmp_path / "env-broker"
    env = cli_env(PYWORKFLOW_BROKER_URL=f"filesystem://{broker}", PYWORKFLOW_IMPORTS="tests.cli.workflows")
    proc = pyworkflow("--storage", empty_store.url, "start", "cli.add", "[1]", env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("started run "), proc.stderr
    assert len(list((broker / "queue").glob("*.msg"))) == 1


def test_start_refusals(sqlite_store: Store) -> None:
    store = sqlite_store
    assert "not valid JSON" in one_line_error(store.run("start", "cli.add", "[1,"), 2)
    assert "argument 'a'" in one_line_error(store.run("start", "cli.add", '["x"]', "--local"), 2)
    assert "too many positional arguments" in one_line_error(store.run("start", "cli.add", "[1, 2, 3]"), 2)
    assert "must be a JSON object" in one_line_error(store.run("start", "cli.add", "[1]", "--kwargs", "[1]"), 2)
    line = one_line_error(store.run("start", "cli.nope"), 1)
    assert "no workflow named 'cli.nope'" in line and "--import" in line
    line = one_line_error(pyworkflow("--storage", store.url, "start", "cli.add", "[1]"), 1)
    assert "no workflow modules imported" in line
    line = one_line_error(pyworkflow("--storage", store.url, "--import", "no.such.module", "start", "x"), 1)
    assert "cannot import workflow module 'no.such.module'" in line
    assert len(store.json("runs", "list")["runs"]) == 4  # nothing recorded
