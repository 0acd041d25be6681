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

With ``PYWORKFLOW_ENCRYPTION_KEY`` set, payloads are stored encrypted (see
:mod:`pyworkflow.storage.encrypted`).

Backends are imported only when their scheme is used, so a missing optional driver
(``pip install 'pyworkflow-celery[redis]'`` / ``[postgres]``) matters only to those who use it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.base import Lease, RunCounts, RunPage, RunStatus, StorageBackend, Timer, WorkflowRun, redact_url

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


def storage_from_url(url: str, *, encryption_key: str | Sequence[str] | None = None) -> StorageBackend:
    """The backend a URL names, e.g. ``storage_from_url("sqlite:///pyworkflow.db")``.

    With ``encryption_key`` (Fernet keys, comma-separated, newest first), or else
    ``PYWORKFLOW_ENCRYPTION_KEY`` when it is set, the backend comes wrapped in
    :class:`~pyworkflow.storage.encrypted.EncryptedStorage`: payloads are stored encrypted.

    Raises :class:`~pyworkflow.errors.ConfigurationError` for an unknown scheme (listing
    the known ones), a missing driver or a malformed key. Passwords and keys never
    appear in the error. Building a backend connects to nothing: network backends
    connect on first use.
    """
    what = "storage_from_url(encryption_key=...)"
    if encryption_key is None:
        encryption_key = os.environ.get("PYWORKFLOW_ENCRYPTION_KEY")
        what = "PYWORKFLOW_ENCRYPTION_KEY"
    if encryption_key is None:
        return _backend_from_url(url)  # no key: the bare backend, no layer on the hot path
    from pyworkflow.storage.encrypted import EncryptedStorage, Encryptor

    encryptor = Encryptor.from_setting(encryption_key, what=what)  # a bad key before anything is built
    return EncryptedStorage(_backend_from_url(url), encryptor)


def _backend_from_url(url: str) -> StorageBackend:
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
        _backend_from_url(url)  # sqlite, redis, postgres and memory backends connect lazily
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever a driver raises, the URL is unusable
        # from None: a driver's message may quote the URL, password included
        raise ConfigurationError(
            f"{what} {redact_url(url)!r} is not usable: {type(exc).__name__} (check its form and options)"
        ) from None


__all__ = [
    "Lease",
    "RunCounts",
    "RunPage",
    "RunStatus",
    "StorageBackend",
    "Timer",
    "WorkflowRun",
    "check_storage_url",
    "redact_url",
    "storage_from_url",
]
