"""Choosing storage by URL: one URL selects a backend everywhere."""

from pathlib import Path

import pytest

from pyworkflow import config, configure
from pyworkflow.errors import ConfigurationError
from pyworkflow.storage import storage_from_url
from pyworkflow.storage.file import FileStorageBackend
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.storage.sqlite import SQLiteStorageBackend


@pytest.fixture(autouse=True)
def _fresh_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYWORKFLOW_STORAGE_URL", raising=False)
    config.reset()
    yield
    config.reset()


def test_the_embedded_default_is_sqlite_in_the_working_directory(tmp_path: Path) -> None:
    storage = config.get_storage()
    assert isinstance(storage, SQLiteStorageBackend)
    assert Path(storage.path).resolve() == (tmp_path / "pyworkflow.db").resolve()  # type: ignore[attr-defined]


def test_the_environment_variable_selects_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYWORKFLOW_STORAGE_URL", f"file://{tmp_path}/store")
    assert isinstance(config.get_storage(), FileStorageBackend)


def test_configure_takes_a_url_or_a_backend() -> None:
    configure(storage="memory://")
    assert isinstance(config.get_storage(), InMemoryStorageBackend)
    mine = InMemoryStorageBackend()
    configure(storage=mine)
    assert config.get_storage() is mine
    with pytest.raises(ConfigurationError):
        configure(storage=42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "cls_name"),
    [
        ("memory://", "InMemoryStorageBackend"),
        ("file:///tmp/pyworkflow-url-test", "FileStorageBackend"),
        ("sqlite:///relative.db", "SQLiteStorageBackend"),
        ("sqlite:////tmp/absolute.db", "SQLiteStorageBackend"),
        ("redis://127.0.0.1:6379/15", "RedisStorageBackend"),
        ("rediss://127.0.0.1:6379/15", "RedisStorageBackend"),
        ("postgresql://postgres@127.0.0.1/test", "PostgresStorageBackend"),
        ("postgres://postgres@127.0.0.1/test", "PostgresStorageBackend"),
    ],
)
def test_each_scheme_selects_its_backend(url: str, cls_name: str) -> None:
    backend = storage_from_url(url)
    assert type(backend).__name__ == cls_name


def test_an_unknown_scheme_lists_the_known_ones_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        storage_from_url("mysql://admin:hunter2@db/app")
    message = str(info.value)
    assert "hunter2" not in message
    for scheme in ("memory://", "file://", "sqlite://", "redis://", "postgresql://"):
        assert scheme in message


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:6379/15", "postgresql://u:hunter2@127.0.0.1/test"])
def test_passwords_never_show_in_url_or_repr(url: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = storage_from_url(url)
    assert "hunter2" not in backend.url and "hunter2" not in repr(backend)
    configure(storage=backend)
    assert "hunter2" not in caplog.text
