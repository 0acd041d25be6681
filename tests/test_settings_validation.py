"""Settings are checked where they enter: ``PYWORKFLOW_*`` variables, URLs, and the
``celery`` command refusing to start on a bad one, in one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pyworkflow.celery.settings import Settings
from pyworkflow.errors import ConfigurationError
from pyworkflow.storage import check_storage_url, storage_from_url
from pyworkflow.storage.base import redact_url
from pyworkflow.storage.file import FileStorageBackend
from pyworkflow.storage.sqlite import SQLiteStorageBackend

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = {
    "PYWORKFLOW_TICK_INTERVAL": "from 0.05 to 3600",
    "PYWORKFLOW_LEASE_TTL": "from 1 to 86400",
    "PYWORKFLOW_VISIBILITY_TIMEOUT": "from 1 to 2.592e+06",
    "PYWORKFLOW_COUNTDOWN_HINT": "from 0 to 86400",
    "PYWORKFLOW_START_GUARD": "from 0.1 to 604800",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PYWORKFLOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "memory://")


@pytest.mark.parametrize("variable", sorted(VARIABLES))
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_non_finite_numbers_are_refused_naming_variable_value_and_range(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env()
    message = str(info.value)
    assert variable in message and repr(raw) in message and VARIABLES[variable] in message


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PYWORKFLOW_LEASE_TTL", "0.5"),
        ("PYWORKFLOW_TICK_INTERVAL", "0"),
        ("PYWORKFLOW_START_GUARD", "1e12"),
        ("PYWORKFLOW_VISIBILITY_TIMEOUT", "ten"),
        ("PYWORKFLOW_COUNTDOWN_HINT", "-1"),
    ],
)
def test_numbers_out_of_range_are_refused(monkeypatch: pytest.MonkeyPatch, variable: str, raw: str) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError, match=variable) as info:
        Settings.from_env()
    assert repr(raw) in str(info.value) and VARIABLES[variable] in str(info.value)


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="lease_ttl=nan"):
        Settings(broker_url="memory://", lease_ttl=float("nan")).check()
    Settings(broker_url="memory://").check()


def test_valid_settings_still_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYWORKFLOW_LEASE_TTL", "20")
    monkeypatch.setenv("PYWORKFLOW_COUNTDOWN_HINT", "0")
    monkeypatch.setenv("PYWORKFLOW_STORAGE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "redis://localhost:6379/0;redis://other:6379/0")
    settings = Settings.from_env()
    assert settings.lease_ttl == 20.0 and settings.countdown_hint == 0.0
    assert not (tmp_path / "x.db").exists(), "checking the storage URL creates nothing"
    for broker in ("amqp://guest@localhost//", "redis+socket:///tmp/redis.sock", "filesystem://", "rediss://h:6380/0"):
        Settings(broker_url=broker).check()


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("garbage://x", "'garbage://x'"),
        ("sqlite://host/db.sqlite", "has no host"),
        ("sqlite:///x.db?mode=ro", "unknown option"),
        ("file://", "names no directory"),
        ("nothing", "'nothing'"),
    ],
)
def test_a_bad_storage_url_fails_settings_at_once(monkeypatch: pytest.MonkeyPatch, url: str, named: str) -> None:
    monkeypatch.setenv("PYWORKFLOW_STORAGE_URL", url)
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_STORAGE_URL") as info:
        Settings.from_env()
    assert named in str(info.value)


def test_checking_a_file_url_creates_no_directory(tmp_path: Path) -> None:
    check_storage_url(f"file://{tmp_path}/store")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("url", ["garbage://u:hunter2@x", "redis", "://", "redis:/localhost", ""])
def test_a_bad_broker_url_fails_settings_at_once(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", url)
    if not url:
        assert Settings.from_env().broker_url.startswith("redis://")  # unset: the default
        return
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_BROKER_URL") as info:
        Settings.from_env()
    assert "hunter2" not in str(info.value)


def test_create_app_refuses_an_unknown_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.celery.factory import create_app

    monkeypatch.setenv("PYWORKFLOW_BROKER_URL", "garbage://x")
    with pytest.raises(ConfigurationError, match="garbage"):
        create_app("bad-broker")


# -- secrets ------------------------------------------------------------------------------

PLAIN = "redis://:hunter2@localhost:6379/0"


def test_settings_repr_hides_the_broker_and_storage_passwords() -> None:
    settings = Settings(broker_url=PLAIN, storage_url="postgresql://u:hunter2@h/db")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "localhost" in repr(settings) and "***" in repr(settings)


ODD = ["p#ss", "p?ss", "p/ss", "p@ss", "p:ss", "p%ss", "a#?/@:%b"]


@pytest.mark.parametrize("password", ODD)
def test_redact_url_hides_unencoded_odd_passwords(password: str) -> None:
    shown = redact_url(f"redis://user:{password}@host:6379/0")
    assert "ss" not in shown.replace("host", "") and "a#" not in shown and "%b" not in shown


@pytest.mark.parametrize("password", ODD)
def test_settings_errors_and_repr_hide_unencoded_odd_passwords(password: str) -> None:
    url = f"garbage://user:{password}@host/0"
    with pytest.raises(ConfigurationError) as info:
        Settings(broker_url=url).check()
    shown = repr(Settings(broker_url=f"redis://user:{password}@host/0"))
    for text in (str(info.value), shown):
        assert password not in text and "ss@" not in text and "%b@" not in text


@pytest.mark.parametrize("password", ODD)
def test_storage_url_errors_hide_unencoded_odd_passwords(password: str) -> None:
    for url in (f"mysql://user:{password}@host/db", f"postgresql://user:{password}@host/db?bogus=1"):
        with pytest.raises(ConfigurationError) as info:
            check_storage_url(url)
        assert password not in str(info.value) and "ss@" not in str(info.value) and "%b@" not in str(info.value)


# -- file permissions ---------------------------------------------------------------------


@pytest.fixture
def umask_022() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
async def test_the_sqlite_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    storage = SQLiteStorageBackend(tmp_path / "runs.db")
    await storage.list_runs()
    try:
        for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
            assert _mode(tmp_path / name) == 0o600, name
    finally:
        await storage.close()


@pytest.mark.usefixtures("umask_022")
async def test_a_sqlite_file_created_by_the_user_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o660)
    storage = SQLiteStorageBackend(path)
    await storage.list_runs()
    await storage.close()
    assert _mode(path) == 0o660


@pytest.mark.usefixtures("umask_022")
async def test_the_file_store_is_private(tmp_path: Path) -> None:
    from pyworkflow import step, workflow
    from pyworkflow.testing import start_local

    @step(name="perm.step")
    async def one() -> int:
        return 1

    @workflow(name="perm.flow")
    async def flow() -> int:
        return await one()

    storage = FileStorageBackend(tmp_path / "deep" / "store")
    try:
        run_id = await start_local(flow, storage=storage)
        assert _mode(tmp_path / "deep") == 0o700 and _mode(tmp_path / "deep" / "store") == 0o700
        assert _mode(tmp_path / "deep" / "store" / "runs") == 0o700
        assert _mode(tmp_path / "deep" / "store" / "runs" / f"{run_id}.jsonl") == 0o600
        await start_local(flow, storage=storage, idempotency_key="perm-key")  # a key file too
        await storage.update_run(run_id, wake_at=datetime(2099, 1, 1, tzinfo=timezone.utc))  # timer files
        # every directory and file the store made is its owner's alone
        for path in (tmp_path / "deep" / "store").rglob("*"):
            assert _mode(path) == (0o700 if path.is_dir() else 0o600), path
    finally:
        await storage.close()


@pytest.mark.usefixtures("umask_022")
def test_a_store_directory_made_by_the_user_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    root.chmod(0o750)
    storage_from_url(f"file://{root}")
    assert _mode(root) == 0o750


# -- the celery command -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "beat"])
@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PYWORKFLOW_STORAGE_URL", "garbage://x", "PYWORKFLOW_STORAGE_URL 'garbage://x'"),
        ("PYWORKFLOW_BROKER_URL", "garbage://u:hunter2@x", "PYWORKFLOW_BROKER_URL 'garbage://u:***@x'"),
        ("PYWORKFLOW_LEASE_TTL", "nan", "PYWORKFLOW_LEASE_TTL='nan'"),
    ],
)
def test_worker_and_beat_refuse_to_start_in_one_line(
    tmp_path: Path, command: str, variable: str, value: str, named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    env.update({"PYWORKFLOW_BROKER_URL": "memory://", variable: value, "PYTHONPATH": str(ROOT)})
    celery = Path(sys.executable).with_name("celery")
    done = subprocess.run(
        [str(celery), "-A", "pyworkflow.celery.app", command, "--loglevel=WARNING"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("pyworkflow: ConfigurationError: ") and named in lines[0]
    assert "hunter2" not in lines[0] and "Traceback" not in lines[0]
