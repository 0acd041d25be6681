from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from pyworkflow.storage.memory import InMemoryStorageBackend


@pytest.fixture
def memory() -> InMemoryStorageBackend:
    return InMemoryStorageBackend()


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
