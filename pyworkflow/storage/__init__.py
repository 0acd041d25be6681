"""Storage backends, chosen by URL.

======================== ==================================================
URL                      backend
======================== ==================================================
``memory://``            :class:`~pyworkflow.storage.memory.InMemoryStorageBackend`
``file:///path``         :class:`~pyworkflow.storage.file.FileStorageBackend`
``sqlite:///path.db``    :class:`~pyworkflow.storage.sqlite.SQLiteStorageBackend`
``redis://host:6379/0``  :class:`~pyworkflow.storage.redis.RedisStorageBackend`
``postgresql://u@h/db``  :class:`~pyworkflow.storage.postgres.PostgresStorageBackend`
======================== ==================================================
"""

from pyworkflow.storage.base import Lease, RunPage, RunStatus, StorageBackend, Timer, WorkflowRun

__all__ = ["Lease", "RunPage", "RunStatus", "StorageBackend", "Timer", "WorkflowRun"]
