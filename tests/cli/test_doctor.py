"""``pyworkflow doctor``: one line per check, OK or the fix; it changes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg

from tests import services
from tests.cli.conftest import Store, cli_env, pyworkflow

CHECKS = ["settings", "storage", "schema", "clock skew", "broker", "imports"]


def _doctor(store_url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    proc = pyworkflow("--storage", store_url, *args, "--json", "doctor", env=env)
    assert "Traceback" not in proc.stderr
    body = json.loads(proc.stdout)
    assert set(body) == {"ok", "checks"}
    for check in body["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("ok", "warn", "fail", "skip")
    assert body["ok"] == (proc.returncode == 0)
    return proc.returncode, {c["name"]: c for c in body["checks"]}


def test_doctor_on_a_healthy_setup(store: Store, tmp_path: Path) -> None:
    broker = f"filesystem://{tmp_path / 'broker'}"
    code, checks = _doctor(store.url, "--broker", broker, "--import", "tests.cli.workflows")
    assert code == 0, checks
    assert list(checks) == CHECKS
    assert all(checks[name]["status"] == "ok" for name in ("settings", "storage", "schema", "broker", "imports"))
    from pyworkflow.storage import postgres_sql, sqlite_schema

    version = {"sqlite": sqlite_schema.SCHEMA_VERSION, "postgres": postgres_sql.SCHEMA_VERSION}[store.kind]
    assert f"version {version} (this release's)" in checks["schema"]["detail"]
    assert "tests.cli.workflows: 4 workflow(s)" in checks["imports"]["detail"]
    if store.kind == "postgres":
        assert checks["clock skew"]["status"] == "ok" and "PostgreSQL server" in checks["clock skew"]["detail"]
    else:
        assert checks["clock skew"]["status"] == "skip"
    proc = pyworkflow("--storage", store.url, "--broker", broker, "--import", "tests.cli.workflows", "doctor")
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()][:2] == ["OK", "OK"]


def test_doctor_reports_failures_with_their_fix(sqlite_store: Store) -> None:
    env = cli_env(PYWORKFLOW_TICK_INTERVAL="0")
    code, checks = _doctor(sqlite_store.url, "--broker", "redis://127.0.0.1:1/0", "--import", "no.such", env=env)
    assert code == 1
    assert checks["settings"]["status"] == "fail" and "PYWORKFLOW_TICK_INTERVAL" in checks["settings"]["detail"]
    assert checks["broker"]["status"] == "fail" and checks["broker"]["fix"]
    assert checks["imports"]["status"] == "fail" and "no.such" in checks["imports"]["detail"]
    assert checks["storage"]["status"] == "ok"
    proc = pyworkflow("--storage", sqlite_store.url, "--broker", "redis://127.0.0.1:1/0", "doctor")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1
    assert any(line.startswith("FAIL  broker") for line in lines)
    assert any(line.strip().startswith("fix: start the broker") for line in lines)
    assert any(line.startswith("WARN  imports") for line in lines)


def test_doctor_unreachable_storage_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/test"
    code, checks = _doctor(url, "--broker", f"filesystem://{tmp_path}")
    assert code == 1 and checks["storage"]["status"] == "fail"
    assert "s3cr3t-pw" not in json.dumps(checks) and "***" in checks["storage"]["detail"]


def test_doctor_changes_nothing(empty_store: Store, tmp_path: Path) -> None:
    code, checks = _doctor(empty_store.url, "--broker", f"filesystem://{tmp_path / 'b'}")
    assert code == 0
    if empty_store.kind == "sqlite":
        assert checks["storage"]["status"] == "warn" and "no database file" in checks["storage"]["detail"]
        assert not os.path.exists(tmp_path / "cli.db")
    else:
        assert checks["schema"]["status"] == "warn" and "no PyWorkflow schema yet" in checks["schema"]["detail"]
        schema = empty_store.url.rsplit("schema=", 1)[1]
        with psycopg.connect(services.POSTGRES_URL) as conn:
            row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
        assert row == (0,)
