"""One fixture, every backend: the contract suite runs against each of them.

``make_backend()`` returns a *new* backend instance over the same store, so concurrency
tests can give each thread (each with its own event loop) its own client, as separate
processes would have.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyworkflow.storage.base import StorageBackend
from tests import services

BACKENDS = ["memory", "file", "sqlite", "redis", "postgres"]

Factory = Callable[[], StorageBackend]
#: A picklable recipe for a backend over the same store, for tests with several processes:
#: (module, class name, args, kwargs). ``None`` for the memory backend (one process only).
Spec = tuple[str, str, tuple[object, ...], dict[str, object]] | None


def open_spec(spec: Spec) -> StorageBackend:
    assert spec is not None
    module, cls, args, kwargs = spec
    return getattr(importlib.import_module(module), cls)(*args, **kwargs)  # type: ignore[no-any-return]


def _load(module: str, cls: str) -> type:
    try:
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
    except ImportError as exc:
        if services.services_required():
            pytest.fail(f"{module}.{cls} cannot be imported: {exc}", pytrace=False)
        pytest.skip(f"{module}.{cls} cannot be imported: {exc}")


def _with_spec(cls: type, args: tuple[object, ...], kwargs: dict[str, object]) -> Factory:
    def factory() -> StorageBackend:
        return cls(*args, **kwargs)  # type: ignore[no-any-return]

    factory.spec = (cls.__module__, cls.__name__, args, kwargs)  # type: ignore[attr-defined]
    return factory


def _memory(tmp_path: Path) -> Iterator[Factory]:
    cls = _load("pyworkflow.storage.memory", "InMemoryStorageBackend")
    shared = cls()
    factory = lambda: shared  # noqa: E731
    factory.spec = None  # type: ignore[attr-defined]
    yield factory


def _file(tmp_path: Path) -> Iterator[Factory]:
    cls = _load("pyworkflow.storage.file", "FileStorageBackend")
    yield _with_spec(cls, (str(tmp_path / "store"),), {})


def _sqlite(tmp_path: Path) -> Iterator[Factory]:
    cls = _load("pyworkflow.storage.sqlite", "SQLiteStorageBackend")
    yield _with_spec(cls, (str(tmp_path / "pyworkflow.db"),), {})


def _redis(tmp_path: Path) -> Iterator[Factory]:
    services.require_redis()
    cls = _load("pyworkflow.storage.redis", "RedisStorageBackend")
    prefix = f"pwtest:{uuid.uuid4().hex[:12]}"
    yield _with_spec(cls, (services.REDIS_URL,), {"prefix": prefix})
    import redis

    client = redis.Redis.from_url(services.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _postgres(tmp_path: Path) -> Iterator[Factory]:
    services.require_postgres()
    cls = _load("pyworkflow.storage.postgres", "PostgresStorageBackend")
    schema = f"pwtest_{uuid.uuid4().hex[:12]}"
    yield _with_spec(cls, (services.POSTGRES_URL,), {"schema": schema})
    import psycopg

    with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


_FACTORIES = {"memory": _memory, "file": _file, "sqlite": _sqlite, "redis": _redis, "postgres": _postgres}

# -- the same contract through EncryptedStorage ------------------------------------------------

#: Backends wrapped in :class:`~pyworkflow.storage.encrypted.EncryptedStorage` with a fresh
#: key: the contract must hold over the wrapper too.
ENCRYPTED_BACKENDS = ["encrypted-memory", "encrypted-sqlite"]
#: The test modules that also run on ENCRYPTED_BACKENDS; the others reach into a backend's
#: own files, tables or keys, which the wrapper does not have.
ENCRYPTED_MODULES = frozenset(
    {
        "test_contract.py",
        "test_inbox.py",
        "test_value_policy.py",
        "test_any_loop.py",
        "test_signals.py",
        "test_cancellation.py",
        "test_pause.py",
        "test_children.py",
        "test_continue_as_new.py",
        "test_schedule_store.py",
        "test_schedules.py",
        "test_count_runs.py",
    }
)


def open_encrypted(inner: Spec, key: str) -> StorageBackend:
    """The :data:`Spec` recipe of an encrypted backend: the inner recipe, wrapped."""
    from pyworkflow.storage.encrypted import EncryptedStorage

    return EncryptedStorage(open_spec(inner), key)


def _encrypting(inner_name: str) -> Callable[[Path], Iterator[Factory]]:
    def make(tmp_path: Path) -> Iterator[Factory]:
        cls = _load("pyworkflow.storage.encrypted", "EncryptedStorage")
        try:
            from cryptography.fernet import Fernet
        except ImportError as exc:
            if services.services_required():
                pytest.fail(f"cryptography cannot be imported: {exc}", pytrace=False)
            pytest.skip(f"cryptography cannot be imported: {exc}")
        key = Fernet.generate_key().decode()
        for inner in _FACTORIES[inner_name](tmp_path):

            def factory(inner: Factory = inner) -> StorageBackend:
                return cls(inner(), key)  # type: ignore[no-any-return]

            inner_spec: Spec = inner.spec  # type: ignore[attr-defined]
            factory.spec = None if inner_spec is None else (__name__, "open_encrypted", (inner_spec, key), {})  # type: ignore[attr-defined]
            yield factory

    return make


for _name in ENCRYPTED_BACKENDS:
    _FACTORIES[_name] = _encrypting(_name.removeprefix("encrypted-"))  # type: ignore[assignment]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the encrypted variants of tests outside :data:`ENCRYPTED_MODULES`."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend_name") if callspec is not None else None
        if name in ENCRYPTED_BACKENDS and item.path.name not in ENCRYPTED_MODULES:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=BACKENDS + ENCRYPTED_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_backend(backend_name: str, tmp_path: Path) -> Iterator[Factory]:
    yield from _FACTORIES[backend_name](tmp_path)


@pytest.fixture
async def storage(make_backend: Factory) -> StorageBackend:  # type: ignore[misc]
    backend = make_backend()
    yield backend
    await backend.close()
