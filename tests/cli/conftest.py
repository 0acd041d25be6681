"""The ``pyworkflow`` console script, run as a subprocess against SQLite and PostgreSQL
stores holding known runs.

The runs are made in-process with :class:`~pyworkflow.local.LocalRuntime` on the same
store, from the workflows in ``tests/cli/workflows.py``, which the subprocess imports
with ``--import tests.cli.workflows`` (``PYTHONPATH`` is the repository root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyworkflow.local import LocalRuntime
from pyworkflow.storage import storage_from_url
from pyworkflow.storage.base import StorageBackend
from tests import services
from tests.cli import workflows as wf

ROOT = Path(__file__).resolve().parents[2]
BIN = shutil.which("pyworkflow", path=str(Path(sys.executable).parent))
IMPORT = "tests.cli.workflows"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no PYWORKFLOW_* of the caller's, the repo on
    the path, the caller's extras."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_") or k == "PYWORKFLOW_REQUIRE_SERVICES"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def pyworkflow(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script; never raises on a non-zero exit."""
    assert BIN is not None, f"no pyworkflow console script next to {sys.executable}: pip install -e ."
    return subprocess.run(
        [BIN, *args],
        env=env if env is not None else cli_env(),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert the process failed with ``code`` and said why in one line on stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@dataclass
class Store:
    """A store the tests and the subprocess share, with the ids of the runs it holds:
    ``completed`` (cli.add(2, 3) == 5), ``failed`` (cli.explode("boom")), ``waiting``
    (cli.await_go, waiting for signal "go") and ``sleeping`` (cli.nap(3600))."""

    kind: str
    url: str
    ids: dict[str, str] = field(default_factory=dict)

    def open(self) -> StorageBackend:
        return storage_from_url(self.url)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``pyworkflow --storage URL --import tests.cli.workflows ARGS``."""
        return pyworkflow("--storage", self.url, "--import", IMPORT, *args, env=env)

    def json(self, *args: str, code: int = 0) -> Any:
        proc = self.run("--json", *args)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return json.loads(proc.stdout)

    def call(self, coro_fn: Any) -> Any:
        """Run ``await coro_fn(storage)`` in this process on a fresh backend."""

        async def main() -> Any:
            storage = self.open()
            try:
                return await coro_fn(storage)
            finally:
                await storage.close()

        return asyncio.run(main())


async def populate(storage: StorageBackend) -> dict[str, str]:
    runtime = LocalRuntime(storage)
    return {
        "completed": await runtime.start(wf.add, 2, 3),
        "failed": await runtime.start(wf.explode, "boom"),
        "waiting": await runtime.start(wf.await_go),
        "sleeping": await runtime.start(wf.nap, 3600),
    }


def _sqlite(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'cli.db'}"  # an absolute path: sqlite:////tmp/...


def _postgres(tmp_path: Path) -> Iterator[str]:
    services.require_postgres()
    schema = f"pwcli_{uuid.uuid4().hex[:12]}"
    yield f"{services.POSTGRES_URL}?schema={schema}"
    import psycopg

    with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


_URLS = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store of each kind, nothing in it (not even its schema)."""
    for url in _URLS[request.param](tmp_path):
        yield Store(request.param, url)


@pytest.fixture
def store(empty_store: Store) -> Store:
    """A store of each kind holding the four known runs."""
    empty_store.ids = empty_store.call(populate)
    return empty_store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    """The known runs in SQLite only: for checks of the command line itself."""
    store = Store("sqlite", f"sqlite:///{tmp_path / 'cli.db'}")
    store.ids = store.call(populate)
    return store
