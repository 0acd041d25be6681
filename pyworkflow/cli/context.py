"""What every command shares: the global options, the storage they name, the workflow
modules to import, and the errors a command ends with.

Exit codes: 0 success; 1 a runtime error (unknown run, unreachable storage, a failed run
for ``runs result``); 2 a usage error (bad flag or value, a command this version does not
provide yet); 3 ``runs result`` on a run that has not finished; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import click

from pyworkflow.config import DEFAULT_STORAGE_URL
from pyworkflow.errors import StorageUnavailableError
from pyworkflow.storage.base import StorageBackend, WorkflowRun, redact_url

T = TypeVar("T")


class CliError(click.ClickException):
    """A runtime failure: one line on stderr, exit code 1 (subclasses: their own code)."""

    exit_code = 1


class NotAvailableError(CliError):
    """A command whose function this version of PyWorkflow does not provide (exit 2)."""

    exit_code = 2

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not available in this version of pyworkflow")


class NotFinishedError(CliError):
    """``runs result`` on a run that has not finished (exit 3)."""

    exit_code = 3


@dataclass
class Cli:
    """The options of the ``pyworkflow`` group, held on click's context object."""

    storage_url: str | None = None
    broker_url: str | None = None
    imports: list[str] = field(default_factory=list)
    json: bool = False
    _storage: StorageBackend | None = None
    _imported: bool = False

    @property
    def url(self) -> str:
        return self.storage_url or os.environ.get("PYWORKFLOW_STORAGE_URL") or DEFAULT_STORAGE_URL

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    def apply_environment(self) -> None:
        """Flags win over ``PYWORKFLOW_*`` variables for everything this process calls
        (``Settings.from_env``, ``send_signal``'s wake-up, ``start``'s Celery app)."""
        if self.storage_url:
            os.environ["PYWORKFLOW_STORAGE_URL"] = self.storage_url
        if self.broker_url:
            os.environ["PYWORKFLOW_BROKER_URL"] = self.broker_url

    def storage(self, *, create: bool = False) -> StorageBackend:
        """The storage the options name, built once (connecting happens on first use) and
        made the process default, so public functions (``send_signal`` …) use it too.

        A SQLite file or a file-storage directory that does not exist is an error unless
        ``create``: reading a store that is not there is a wrong URL, and must not leave
        an empty one behind."""
        if self._storage is None:
            from pyworkflow import config
            from pyworkflow.storage import storage_from_url

            if not create:
                self._check_exists()
            self._storage = storage_from_url(self.url)
            config.configure(storage=self._storage)
        return self._storage

    def _check_exists(self) -> None:
        scheme = self.url.split("://", 1)[0].lower()
        if scheme == "sqlite":
            from pyworkflow.storage.sqlite import SQLiteStorageBackend

            path, what = SQLiteStorageBackend.from_url(self.url).path, "database file"
            missing = not os.path.exists(path)
        elif scheme == "file":
            path, what = self.url[len("file://") :], "directory"
            missing = not os.path.isdir(path)
        else:
            return
        if missing:
            raise CliError(
                f"no {what} at {os.path.abspath(path)!r} ({self.shown_url}); point --storage or "
                "PYWORKFLOW_STORAGE_URL at your store"
            )

    def modules(self) -> list[str]:
        """``PYWORKFLOW_IMPORTS`` and every ``--import``, in that order, once each."""
        names = [m.strip() for m in os.environ.get("PYWORKFLOW_IMPORTS", "").split(",") if m.strip()]
        return list(dict.fromkeys(names + self.imports))

    def import_workflows(self) -> list[str]:
        """Import the workflow modules (from the current directory too, as ``celery -A``
        does); a module that fails to import is a one-line error."""
        modules = self.modules()
        if not self._imported:
            from pyworkflow import config

            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            config.import_modules(modules)  # ConfigurationError names the module
            self._imported = True
        return modules

    def run(self, main: Callable[[], Awaitable[T]]) -> T:
        """Run one command's coroutine on a fresh event loop, closing the storage after."""

        async def body() -> T:
            try:
                return await main()
            except Exception as exc:
                storage = self._storage
                unreachable: tuple[type[BaseException], ...] = (StorageUnavailableError,)
                if storage is not None:
                    unreachable += storage.unavailable_errors
                if isinstance(exc, unreachable) and not isinstance(exc, click.ClickException):
                    raise CliError(f"storage {self.shown_url} is unreachable: {type(exc).__name__}: {exc}") from exc
                raise
            finally:
                if self._storage is not None:
                    await self._storage.close()
                    self._storage = None

        return asyncio.run(body())

    async def get_run(self, run_id: str) -> WorkflowRun:
        """The run, or a one-line error naming it and the storage."""
        run = await self.storage().get_run(run_id)
        if run is None:
            raise CliError(f"no run {run_id!r} in {self.shown_url}")
        return run

    def secrets(self) -> list[str]:
        """Passwords in the URLs this process was given: never printed, even when a
        driver quotes one in its error."""
        found = []
        for url in (self.url, self.broker_url or os.environ.get("PYWORKFLOW_BROKER_URL") or ""):
            for one in url.split(";"):
                if "://" not in one:
                    continue
                userinfo, at, _ = one.split("://", 1)[1].rpartition("@")
                if at and ":" in userinfo:
                    password = userinfo.split(":", 1)[1]
                    if password:
                        found.append(password)
        return found


def cli_of(ctx: click.Context) -> Cli:
    obj = ctx.find_object(Cli)
    if obj is None:  # a command invoked without the group (tests of one command)
        obj = ctx.ensure_object(Cli)
    return obj
