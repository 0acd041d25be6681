"""Process-wide settings: which storage, which modules hold the workflows.

Read from ``pyworkflow.configure(...)`` first, then ``PYWORKFLOW_*`` environment
variables, then defaults (SQLite file ``./pyworkflow.db``: no server needed).
"""

from __future__ import annotations

import importlib
import os

from pyworkflow.errors import ConfigurationError
from pyworkflow.storage import storage_from_url
from pyworkflow.storage.base import StorageBackend

DEFAULT_STORAGE_URL = "sqlite:///pyworkflow.db"

_storage: StorageBackend | None = None
_imported: list[str] = []


def configure(*, storage: StorageBackend | str | None = None, imports: list[str] | str | None = None) -> None:
    """Set the default storage (a backend or a URL) and import the modules holding workflows."""
    global _storage
    if storage is not None:
        if isinstance(storage, str):
            storage = storage_from_url(storage)
        elif not isinstance(storage, StorageBackend):
            raise ConfigurationError(f"configure(storage=...) takes a StorageBackend or a URL, got {storage!r}")
        _storage = storage
    if imports is not None:
        import_modules(imports)


def get_storage() -> StorageBackend:
    """The configured storage, else ``PYWORKFLOW_STORAGE_URL``, else ``sqlite:///pyworkflow.db``."""
    global _storage
    if _storage is None:
        _storage = storage_from_url(os.environ.get("PYWORKFLOW_STORAGE_URL") or DEFAULT_STORAGE_URL)
    return _storage


def reset() -> None:
    """Forget the configured storage (tests)."""
    global _storage
    _storage = None


def import_modules(modules: list[str] | str) -> list[str]:
    """Import modules by name (a list or a comma-separated string); each is remembered."""
    names = [m.strip() for m in (modules.split(",") if isinstance(modules, str) else modules) if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import workflow module {name!r}: {exc}") from exc
        if name not in _imported:
            _imported.append(name)
    return names


def imported_modules() -> list[str]:
    return list(_imported)
