"""The chaos suite's parts: a private redis-server broker per test, storage on SQLite
(a file in tmp_path) or PostgreSQL (a schema of its own, reached by the workers through
a TCP proxy the test owns), and a :class:`Fleet` of real worker and beat subprocesses
whose step bodies write the side-effect journal that :mod:`tests.chaos.invariants`
checks.

Times are shortened for tests through the same ``PYWORKFLOW_*`` variables a deployment
sets (:data:`CHAOS_ENV`): a 3 s lease (renewed every second), a 0.2 s tick. The start
guard is 10 s, not less: 100 new runs queued at once wait seconds for a worker, and a
shorter guard sends runs that are merely queued again (measured at 2 s, before the
start-guard timer: 2,175 activations for 100 runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from pyworkflow import config as pwconfig
from pyworkflow import start
from pyworkflow.celery import Settings, create_app
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend
from tests import services
from tests.celery.conftest import ROOT, RedisServer, Subprocess, wait_until
from tests.chaos import journal
from tests.chaos.invariants import Summary, verify
from tests.chaos.proxy import TcpProxy

#: Defaults of every worker and beat of the suite (a test may override any of them).
CHAOS_ENV = {
    "PYWORKFLOW_LEASE_TTL": "3",
    "PYWORKFLOW_TICK_INTERVAL": "0.2",
    "PYWORKFLOW_START_GUARD": "10",
    "PYWORKFLOW_IMPORTS": "tests.chaos.workflows",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: real worker/beat subprocesses under faults (tests/chaos); deselect with -m 'not chaos'"
    )


# -- storage ------------------------------------------------------------------------------


@dataclass
class Store:
    """Storage shared by the test and its subprocesses. ``worker_url`` is what the
    workers use (through ``proxy`` for PostgreSQL); the test reads through ``backend``,
    connected directly, so a cut never blinds the checks."""

    kind: str
    worker_url: str
    backend: StorageBackend
    proxy: TcpProxy | None = None
    path: Path | None = None  # the SQLite file


def _sqlite_store(tmp_path: Path) -> Iterator[Store]:
    path = tmp_path / "runs.db"
    url = f"sqlite:///{path}"
    pwconfig.configure(storage=url)
    backend = pwconfig.get_storage()
    try:
        yield Store("sqlite", url, backend, path=path)
    finally:
        PROCESS_LOOP.run(backend.close())
        pwconfig.reset()


def _postgres_store(tmp_path: Path) -> Iterator[Store]:
    services.require_postgres()
    import psycopg

    schema = f"pwchaos_{uuid.uuid4().hex[:12]}"
    direct = _with_schema(services.POSTGRES_URL, schema)
    parts = urlsplit(services.POSTGRES_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = parts.netloc.rpartition("@")[0]
    through = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"))
    pwconfig.configure(storage=direct)
    backend = pwconfig.get_storage()
    try:
        yield Store("postgres", _with_schema(through, schema), backend, proxy=proxy)
    finally:
        PROCESS_LOOP.run(backend.close())
        pwconfig.reset()
        proxy.close()
        if os.environ.get("PYWORKFLOW_CHAOS_KEEP"):  # to look at a failed run's log
            print(f"kept PostgreSQL schema {schema}")
        else:
            with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


STORES: dict[str, Callable[[Path], Iterator[Store]]] = {"sqlite": _sqlite_store, "postgres": _postgres_store}


@pytest.fixture(params=list(STORES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """SQLite, then PostgreSQL storage."""
    yield from STORES[request.param](tmp_path)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    yield from _sqlite_store(tmp_path)


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[Store]:
    yield from _postgres_store(tmp_path)


# -- the broker ---------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it may stop and restart it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


# -- the fleet ----------------------------------------------------------------------------


@dataclass
class Fleet:
    """Worker and beat subprocesses on the test's broker and storage, plus what the
    checks need: the journal, and when each process group was SIGKILLed."""

    broker: RedisServer
    store: Store
    workdir: Path
    journal: Path
    env: dict[str, str]
    procs: list[Subprocess] = field(default_factory=list)
    kills: dict[int, float] = field(default_factory=dict)

    def spawn(self, kind: str, *extra: str, concurrency: int = 4, **env: str) -> Subprocess:
        name = f"{kind}{len(self.procs)}"
        if kind == "worker":
            args = [
                "worker", "-Q", "pyworkflow.workflows,pyworkflow.steps", "--pool=prefork", "-c", str(concurrency),
                "--loglevel=INFO", "-n", f"{name}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat",
            ]  # fmt: skip
        elif kind == "beat":
            args = ["beat", "--loglevel=INFO", "-s", str(self.workdir / f"{name}-schedule")]
        else:
            raise ValueError(kind)
        proc = Subprocess([*args, *extra], {**self.env, **env}, self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def worker(self, *extra: str, concurrency: int = 4, ready: bool = True, **env: str) -> Subprocess:
        proc = self.spawn("worker", *extra, concurrency=concurrency, **env)
        if ready:
            self.wait_ready(proc)
        return proc

    def beat(self, **env: str) -> Subprocess:
        return self.spawn("beat", **env)

    @staticmethod
    def wait_ready(proc: Subprocess, timeout: float = 60.0) -> None:
        """Until the worker logs that it consumes (``celery@… ready.``)."""

        def ready() -> bool:
            if proc.proc.poll() is not None:
                raise AssertionError(f"the worker exited ({proc.proc.returncode}) before it was ready; see {proc.log}")
            return b" ready." in proc.log.read_bytes()

        wait_until(ready, timeout, f"worker ready ({proc.log})")

    def kill(self, proc: Subprocess) -> float:
        """SIGKILL the process group (main process and pool); returns when it died."""
        os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        killed = time.time()
        self.kills[proc.proc.pid] = killed
        proc.handle.close()
        return killed

    def alive(self, proc: Subprocess) -> None:
        assert proc.proc.poll() is None, f"{proc.log.name} exited ({proc.proc.returncode}); see {proc.log}"

    def start(self, wf: Any, *args: Any) -> str:
        return start(wf, *args)

    def completed(self) -> int:
        """How many runs of this test's storage have completed."""
        return len(PROCESS_LOOP.run(self.store.backend.list_runs(status="completed", limit=1000)).runs)

    def verify(self, run_ids: list[str], timeout: float, **options: Any) -> Summary:
        options.setdefault("kills", self.kills)
        return verify(self.store.backend, run_ids, self.journal, timeout=timeout, context=self.logs(), **options)

    def logs(self) -> str:
        """Where the logs are, and their error lines: the context of a failure."""
        lines = [f"journal: {self.journal}"]
        for proc in self.procs:
            lines.append(f"log: {proc.log}")
            try:
                text = proc.log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            errors = [line for line in text if re.search(r"ERROR|CRITICAL|Traceback|lease_lost|exited", line)]
            lines += [f"    {line[:300]}" for line in errors[-8:]]
        return "\n".join(lines)

    def stop(self) -> None:
        """The end of the test: every process group still running is killed (its
        checks are done; a warm shutdown would only cost time)."""
        for proc in self.procs:
            if proc.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.proc.pid, signal.SIGKILL)
                proc.proc.wait(10)
            if not proc.handle.closed:
                proc.handle.close()


@pytest.fixture
def fleet(broker: RedisServer, store: Store, tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(broker, store, tmp_path)


@pytest.fixture
def sqlite_fleet(broker: RedisServer, sqlite_store: Store, tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(broker, sqlite_store, tmp_path)


@pytest.fixture
def postgres_fleet(broker: RedisServer, postgres_store: Store, tmp_path: Path) -> Iterator[Fleet]:
    yield from _fleet(broker, postgres_store, tmp_path)


def _fleet(broker: RedisServer, store: Store, tmp_path: Path) -> Iterator[Fleet]:
    import pyworkflow.celery.factory as factory
    import tests.chaos.workflows  # noqa: F401 - registers the workflows start() names

    path = tmp_path / "journal.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    env.update(
        CHAOS_ENV,
        PYWORKFLOW_BROKER_URL=broker.url,
        PYWORKFLOW_STORAGE_URL=store.worker_url,
        PYTHONPATH=str(ROOT),
    )
    env[journal.VARIABLE] = str(path)
    previous = factory._installed
    create_app("pyworkflow-chaos", settings=Settings(broker_url=broker.url, lease_ttl=3.0))  # what start() sends with
    crew = Fleet(broker, store, tmp_path, path, env)
    try:
        yield crew
    finally:
        crew.stop()
        factory._installed = previous
