"""Storage backends, chosen by URL.

========================== ==========================================================
URL                        backend
========================== ==========================================================
``memory://``              :class:`~pyworkflow.storage.memory.InMemoryStorageBackend`
``file:///abs/dir``        :class:`~pyworkflow.storage.file.FileStorageBackend`
``sqlite:///rel.db``       :class:`~pyworkflow.storage.sqlite.SQLiteStorageBackend`
``redis://host:6379/0``    :class:`~pyworkflow.storage.redis.RedisStorageBackend`
``postgresql://u@h/db``    :class:`~pyworkflow.storage.postgres.PostgresStorageBackend`
========================== ==========================================================

Backends are imported only when their scheme is used, so a missing optional driver
(``pip install pyworkflow[redis]`` / ``[postgres]``) matters only to those who use it.
"""

from __future__ import annotations

import importlib

from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.base import Lease, RunPage, RunStatus, StorageBackend, Timer, WorkflowRun, redact_url

_SCHEMES = {
    "memory": ("pyworkflow.storage.memory", "InMemoryStorageBackend"),
    "file": ("pyworkflow.storage.file", "FileStorageBackend"),
    "sqlite": ("pyworkflow.storage.sqlite", "SQLiteStorageBackend"),
    "redis": ("pyworkflow.storage.redis", "RedisStorageBackend"),
    "rediss": ("pyworkflow.storage.redis", "RedisStorageBackend"),
    "postgresql": ("pyworkflow.storage.postgres", "PostgresStorageBackend"),
    "postgres": ("pyworkflow.storage.postgres", "PostgresStorageBackend"),
}


def storage_from_url(url: str) -> StorageBackend:
    """The backend a URL names, e.g. ``storage_from_url("sqlite:///pyworkflow.db")``.

    Raises :class:`~pyworkflow.errors.ConfigurationError` for an unknown scheme (listing
    the known ones) or a missing driver. Passwords never appear in the error.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ConfigurationError(f"unknown storage URL {redact_url(url)!r}: the scheme must be one of {known}")
    module_name, class_name = _SCHEMES[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        return cls()  # type: ignore[no-any-return]
    return cls.from_url(url)  # type: ignore[no-any-return]


__all__ = ["Lease", "RunPage", "RunStatus", "StorageBackend", "Timer", "WorkflowRun", "redact_url", "storage_from_url"]
