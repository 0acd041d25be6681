"""A SQLite store holding real runs of ``tests/dashboard/workflows.py`` (made in-process
with :class:`~pyworkflow.local.LocalRuntime`), and the dashboard over it, spoken to
through httpx's ASGI transport (the browser tests serve it for real)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pyworkflow.dashboard import create_app
from pyworkflow.storage.sqlite import SQLiteStorageBackend
from tests.dashboard.workflows import populate

BASE = "http://127.0.0.1"


@pytest.fixture(autouse=True)
def _no_token_no_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    """No access token unless a test sets one, and no Celery app: an action records its
    message and sends no activation (a test activates the run itself)."""
    import pyworkflow.celery.factory as factory

    monkeypatch.delenv("PYWORKFLOW_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("PYWORKFLOW_BROKER_URL", raising=False)
    monkeypatch.setattr(factory, "_installed", None)


@dataclass
class Store:
    path: Path
    storage: SQLiteStorageBackend
    ids: dict[str, str]

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    path = tmp_path / "runs.db"
    storage = SQLiteStorageBackend(path)
    ids = await populate(storage)
    yield Store(path, storage, ids)
    await storage.close()


def client_of(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, **kwargs)


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(create_app(storage=store.storage)) as http:
        yield http
