"""``pyworkflow runs signal/cancel/retry/prune``, ``schedules`` and ``replay`` on SQLite
and PostgreSQL stores."""

from __future__ import annotations

import json

from pyworkflow.testing import resume_local
from tests.cli.conftest import Store, one_line_error
from tests.cli.conftest import pyworkflow as run_cli

# -- signal ----------------------------------------------------------------------------------


def test_signal_reaches_the_run(store: Store) -> None:
    run_id = store.ids["waiting"]
    body = store.json("runs", "signal", run_id, "go", '{"approved": true}', "--idempotency-key", "mail-1")
    assert set(body) == {"run_id", "name", "message_id"}
    assert body["run_id"] == run_id and body["name"] == "go" and body["message_id"].startswith(run_id)
    again = store.run("runs", "signal", run_id, "go", '{"approved": true}', "--idempotency-key", "mail-1")
    assert again.returncode == 0 and body["message_id"] in again.stdout  # one signal, its first id
    assert len(store.call(lambda s: s.get_messages(run_id))) == 1
    run = store.call(lambda s: resume_local(run_id, s))
    assert run.status == "completed" and run.result == {"got": {"approved": True}}


def test_signal_without_payload(store: Store) -> None:
    proc = store.run("runs", "signal", store.ids["waiting"], "go")
    assert proc.returncode == 0 and proc.stdout.startswith("sent signal 'go' to run ")
    assert store.call(lambda s: resume_local(store.ids["waiting"], s)).result == {"got": None}


def test_signal_refusals(store: Store) -> None:
    assert "not valid JSON" in one_line_error(store.run("runs", "signal", store.ids["waiting"], "go", "{x"), 2)
    line = one_line_error(store.run("runs", "signal", store.ids["completed"], "go"), 1)
    assert "has finished (completed)" in line
    line = one_line_error(store.run("runs", "signal", "no-such-run", "go"), 1)
    assert line == f"pyworkflow: error: no run 'no-such-run' in {store.url}"
    assert "name" in one_line_error(store.run("runs", "signal", store.ids["waiting"], " go "), 2)
    assert store.call(lambda s: s.get_messages(store.ids["waiting"])) == []


# -- cancel (pyworkflow.cancel) --------------------------------------------------------------------


def test_cancel_through_pyworkflow_cancel(store: Store) -> None:
    run_id = store.ids["waiting"]
    dry = store.json("runs", "cancel", "--status", "suspended", "--dry-run")
    assert dry == {"dry_run": True, "runs": [store.ids["sleeping"], run_id], "results": [], "failed": 0}
    proc = store.run("runs", "cancel", run_id, "--reason", "ops")
    assert proc.returncode == 0, proc.stderr
    assert store.call(lambda s: resume_local(run_id, s)).status == "cancelled"
    assert "has already finished" in one_line_error(store.run("runs", "cancel", store.ids["completed"]), 1)


def test_pause_and_unpause(store: Store) -> None:
    run_id = store.ids["waiting"]
    proc = store.run("runs", "pause", run_id)
    assert proc.returncode == 0, proc.stderr
    assert [m.kind for m in store.call(lambda s: s.get_messages(run_id))] == ["pause"]
    assert store.json("runs", "unpause", run_id) == {
        "dry_run": False,
        "runs": [run_id],
        "results": [{"run_id": run_id, "ok": True, "error": None}],
        "failed": 0,
    }
    assert [m.kind for m in store.call(lambda s: s.get_messages(run_id))] == ["pause", "unpause"]
    assert "has already finished" in one_line_error(store.run("runs", "pause", store.ids["completed"]), 1)
    assert "no run" in one_line_error(store.run("runs", "unpause", "no-such-run"), 1)


# -- retry (pyworkflow.retry) ------------------------------------------------------------------------


def test_retry_batch_by_filter(store: Store) -> None:
    dry = store.json("runs", "retry", "--workflow", "cli.explode", "--dry-run")
    assert dry == {"dry_run": True, "runs": [store.ids["failed"]], "results": [], "failed": 0}
    assert store.call(lambda s: s.get_run(store.ids["failed"])).status == "failed"  # a dry run changes nothing
    proc = store.run("--json", "runs", "retry", "--since", "1h")
    assert proc.returncode == 1  # three of the four runs had not failed
    body = json.loads(proc.stdout)
    assert body["failed"] == 3 and len(body["runs"]) == 4
    assert [r["run_id"] for r in body["results"] if r["ok"]] == [store.ids["failed"]]
    refused = [r["error"] for r in body["results"] if not r["ok"]]
    assert all("only a failed or blocked run can be retried" in e for e in refused)
    assert store.call(lambda s: s.get_run(store.ids["failed"])).status == "suspended"  # due again


def test_retry_by_id(store: Store) -> None:
    proc = store.run("runs", "retry", store.ids["failed"])
    assert proc.returncode == 0 and "1 run(s) done, 0 refused" in proc.stdout
    assert "only a failed or blocked run" in one_line_error(store.run("runs", "retry", store.ids["completed"]), 1)
    assert "no run 'no-such-run'" in one_line_error(store.run("runs", "retry", "no-such-run"), 1)
    assert "not both" in one_line_error(store.run("runs", "retry", store.ids["failed"], "--status", "failed"), 2)


def test_retry_needs_a_run_or_a_filter(sqlite_store: Store) -> None:
    assert "name a run" in one_line_error(sqlite_store.run("runs", "retry"), 2)


# -- replay ---------------------------------------------------------------------------------------


def test_replay_checks_stored_runs_against_the_code(store: Store) -> None:
    body = store.json("replay")
    assert body["checked"] == 4 and body["diverged"] == 0 and body["errors"] == 0
    assert {r["outcome"] for r in body["runs"]} == {"ok"}
    # after a "deploy" that changed cli.add's calls, its completed run would diverge
    changed = run_cli("--storage", store.url, "--import", "tests.cli.workflows_changed", "--json", "replay")
    assert changed.returncode == 1, changed.stderr
    report = json.loads(changed.stdout)
    assert report["diverged"] == 1
    (bad,) = [r for r in report["runs"] if r["outcome"] != "ok"]
    assert bad["run_id"] == store.ids["completed"] and "recorded as step 'cli.double'" in bad["detail"]


# -- prune -----------------------------------------------------------------------------------------


def test_prune_dry_run_then_prune(store: Store) -> None:
    dry = store.json("runs", "prune", "--older-than", "0s", "--dry-run")
    assert set(dry) == {"dry_run", "cutoff", "statuses", "matched", "by_status"}
    assert dry["dry_run"] is True and dry["statuses"] == ["cancelled", "completed", "continued", "failed"]
    assert (dry["matched"], dry["by_status"]) == (2, {"completed": 1, "failed": 1})
    assert store.json("runs", "prune", "--older-than", "1d", "--dry-run")["matched"] == 0
    assert len(store.json("runs", "list")["runs"]) == 4  # a dry run deletes nothing

    proc = store.run("runs", "prune", "--older-than", "0s", "--status", "failed")
    assert proc.returncode == 0 and proc.stdout.startswith("deleted 1 run(s)"), proc.stdout + proc.stderr
    assert store.call(lambda s: s.get_run(store.ids["failed"])) is None
    done = store.json("runs", "prune", "--older-than", "0s")
    assert set(done) == {"dry_run", "cutoff", "statuses", "deleted"} and done["deleted"] == 1
    left = sorted(r["run_id"] for r in store.json("runs", "list")["runs"])
    assert left == sorted([store.ids["waiting"], store.ids["sleeping"]])


def test_prune_flags(sqlite_store: Store) -> None:
    assert "--older-than" in one_line_error(sqlite_store.run("runs", "prune"), 2)
    assert "invalid duration '30 days'" in one_line_error(
        sqlite_store.run("runs", "prune", "--older-than", "30 days"), 2
    )
    assert "'--status'" in one_line_error(sqlite_store.run("runs", "prune", "--older-than", "1d", "--status", "x"), 2)
    proc = sqlite_store.run("runs", "prune", "--older-than", "1d", "--status", "suspended", "--dry-run")
    assert proc.returncode == 0 and "pruning them deletes live runs" in proc.stderr
