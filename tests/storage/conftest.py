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


@pytest.fixture(params=BACKENDS)
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
