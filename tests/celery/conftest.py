"""Real parts for the Celery tests: a redis-server of our own as broker, an in-process
worker for most tests, worker and beat subprocesses where a test kills or restarts them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyworkflow import config
from pyworkflow.celery import Settings, create_app
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend
from tests import services

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.02)


class RedisServer:
    """A redis-server process we own, so tests may stop and restart the broker."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if services.services_required():
                pytest.fail("redis-server is not installed", pytrace=False)
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(lambda: services.reachable("127.0.0.1", self.port, 0.2), 10, "redis-server up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("broker"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("markers")
    os.environ["PYWORKFLOW_TEST_MARKERS"] = str(path)
    return path


@pytest.fixture(scope="session")
def celery_app(broker: RedisServer, markers: Path) -> Any:
    import tests.celery_workflows  # noqa: F401 - registers the workflows

    settings = Settings(broker_url=broker.url, lease_ttl=5.0, countdown_hint=10.0, tick_interval=0.2)
    return create_app("pyworkflow-tests", settings=settings)


@pytest.fixture(scope="session")
def worker(celery_app: Any) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app, pool="threads", concurrency=4, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as w:
        yield w


@pytest.fixture(params=["sqlite", "redis"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    """Storage the worker and the test share, as ``pyworkflow.configure(storage=...)``."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/runs.db"
    else:
        services.require_redis()
        url = f"{services.REDIS_URL}?prefix=pwcelery-{os.urandom(4).hex()}"
    config.configure(storage=url)
    backend = config.get_storage()
    yield backend
    PROCESS_LOOP.run(backend.close())
    config.reset()


class Ticker:
    """Sends ``pyworkflow.tick`` every ``interval`` like Celery Beat does."""

    def __init__(self, app: Any, interval: float = 0.2) -> None:
        self.app, self.interval = app, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.app.send_task("pyworkflow.tick", queue="pyworkflow.workflows")

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


class Subprocess:
    """A celery worker or beat process, killable as a whole (its pool children too)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pyworkflow.celery.app", *args],
            cwd=ROOT,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A broker for one test alone (the in-process worker does not listen to it)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def crash_app(own_broker: RedisServer, markers: Path, tmp_path: Path) -> Iterator[Any]:
    """``start()`` sends to ``own_broker``; the test and its subprocesses share a SQLite file."""
    import pyworkflow.celery.factory as factory

    previous = factory._installed
    config.configure(storage=f"sqlite:///{tmp_path}/runs.db")
    app = create_app("pyworkflow-crash-tests", settings=Settings(broker_url=own_broker.url, lease_ttl=2.0))
    yield app
    factory._installed = previous
    PROCESS_LOOP.run(config.get_storage().close())
    config.reset()


@pytest.fixture
def spawn(own_broker: RedisServer, markers: Path, tmp_path: Path) -> Iterator[Callable[..., Subprocess]]:
    """Start worker/beat subprocesses on ``own_broker`` and the SQLite file in tmp_path."""
    started: list[Subprocess] = []

    def run(kind: str, *extra: str, **env_overrides: str) -> Subprocess:
        env = {
            **os.environ,
            "PYWORKFLOW_BROKER_URL": own_broker.url,
            "PYWORKFLOW_STORAGE_URL": f"sqlite:///{tmp_path}/runs.db",
            "PYWORKFLOW_IMPORTS": "tests.celery_workflows",
            "PYWORKFLOW_TEST_MARKERS": str(markers),
            "PYWORKFLOW_LEASE_TTL": "2",
            "PYWORKFLOW_TICK_INTERVAL": "0.2",
            "PYTHONPATH": str(ROOT),
            **env_overrides,
        }
        args = {
            "worker": [
                "worker",
                "-Q",
                "pyworkflow.workflows,pyworkflow.steps",
                "--pool=prefork",
                "-c",
                "2",
                "--loglevel=INFO",
                "-n",
                f"w{len(started)}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
            "beat": ["beat", "--loglevel=INFO", "-s", str(tmp_path / f"beat-{len(started)}")],
        }[kind]
        proc = Subprocess([*args, *extra], env, tmp_path / f"{kind}-{len(started)}.log")
        started.append(proc)
        return proc

    yield run
    for proc in started:
        proc.stop()
