"""Public functions the CLI calls that a given version of PyWorkflow may not have yet.

Each command that needs one looks it up here by name when it runs: the ``_async`` form
when the module has it, else the synchronous one (run in a thread). A missing function
ends the command with one line, "... is not available in this version", and exit 2.
Wiring a new function is its entry in :data:`FUNCTIONS`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from pyworkflow.cli.context import NotAvailableError

#: What a command calls: ``key -> (module, function name, what the error names)``.
FUNCTIONS: dict[str, tuple[str, str, str]] = {
    "cancel": ("pyworkflow", "cancel", "cancelling runs (pyworkflow.cancel)"),
    "pause": ("pyworkflow", "pause", "pausing runs (pyworkflow.pause)"),
    "unpause": ("pyworkflow", "unpause", "unpausing runs (pyworkflow.unpause)"),
    "retry": ("pyworkflow", "retry", "retrying runs (pyworkflow.retry)"),
    "replay": ("pyworkflow.testing", "replay", "replay checks (pyworkflow.testing.replay)"),
    "schedules.list": ("pyworkflow", "list_schedules", "schedules (pyworkflow.list_schedules)"),
    "schedules.show": ("pyworkflow", "get_schedule", "schedules (pyworkflow.get_schedule)"),
    "schedules.pause": ("pyworkflow", "pause_schedule", "schedules (pyworkflow.pause_schedule)"),
    "schedules.resume": ("pyworkflow", "resume_schedule", "schedules (pyworkflow.resume_schedule)"),
    "schedules.trigger": ("pyworkflow", "trigger_schedule", "schedules (pyworkflow.trigger_schedule)"),
    "schedules.backfill": ("pyworkflow", "backfill_schedule", "schedules (pyworkflow.backfill_schedule)"),
    "schedules.delete": ("pyworkflow", "delete_schedule", "schedules (pyworkflow.delete_schedule)"),
}

AsyncFn = Callable[..., Awaitable[Any]]


def lookup(key: str) -> AsyncFn:
    """The function behind ``key`` as a coroutine function; :class:`NotAvailableError`
    when this version has none."""
    module_name, name, what = FUNCTIONS[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise NotAvailableError(what) from None
    async_fn = getattr(module, f"{name}_async", None)
    if callable(async_fn):
        return async_fn  # type: ignore[no-any-return]
    fn = getattr(module, name, None)
    if not callable(fn):
        raise NotAvailableError(what)
    if asyncio.iscoroutinefunction(fn):
        return fn  # type: ignore[no-any-return]
    sync: Callable[..., Any] = fn

    async def in_thread(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(sync, *args, **kwargs)

    return in_thread
