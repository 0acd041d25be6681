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


def _scheme(url: object, what: str) -> str:
    """The known scheme of a storage URL, or ConfigurationError naming ``what`` and the
    URL (without its password) and listing the known schemes."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a URL string such as 'sqlite:///pyworkflow.db', got {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise ConfigurationError(f"{what} {redact_url(url)!r} is unknown: the scheme must be one of {known}")
    return scheme


def storage_from_url(url: str) -> StorageBackend:
    """The backend a URL names, e.g. ``storage_from_url("sqlite:///pyworkflow.db")``.

    Raises :class:`~pyworkflow.errors.ConfigurationError` for an unknown scheme (listing
    the known ones) or a missing driver. Passwords never appear in the error. Building a
    backend connects to nothing: network backends connect on first use.
    """
    scheme = _scheme(url, "storage URL")
    module_name, class_name = _SCHEMES[scheme]
    cls = getattr(importlib.import_module(module_name), class_name)
    if scheme == "memory":
        return cls()  # type: ignore[no-any-return]
    return cls.from_url(url)  # type: ignore[no-any-return]


def check_storage_url(url: object, *, what: str = "storage URL") -> None:
    """Refuse a storage URL that :func:`storage_from_url` would refuse, without
    connecting and without creating anything: the scheme, the shape, the options and
    the driver are checked, at once (a worker checks its URL before it starts).
    Raises :class:`~pyworkflow.errors.ConfigurationError` naming ``what``."""
    scheme = _scheme(url, what)
    assert isinstance(url, str)
    if scheme == "file":
        # Building a file backend creates its directories: check the shape only.
        if len(url) == len("file://"):
            raise ConfigurationError(
                f"{what} {redact_url(url)!r} names no directory; use file:///absolute/path or file://./relative/path"
            )
        return
    try:
        storage_from_url(url)  # sqlite, redis, postgres and memory backends connect lazily
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a driver raises, the URL is unusable
        # from None: a driver's message may quote the URL, password included
        raise ConfigurationError(
            f"{what} {redact_url(url)!r} is not usable: {type(exc).__name__} (check its form and options)"
        ) from None


__all__ = [
    "Lease",
    "RunPage",
    "RunStatus",
    "StorageBackend",
    "Timer",
    "WorkflowRun",
    "check_storage_url",
    "redact_url",
    "storage_from_url",
]
