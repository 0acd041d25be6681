"""Real parts for the Celery tests: every broker test runs on both brokers — a
redis-server of our own, and a vhost of our own on the shared RabbitMQ — with an
in-process worker for most tests, worker and beat subprocesses where a test kills or
restarts them."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

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

    kind = "redis"

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


class RabbitVhost:
    """A vhost of our own on the shared RabbitMQ, which tests never stop. ``stop()``
    deletes the vhost: its queues and messages are gone and its clients disconnected,
    what a restart does to a broker that keeps nothing on disk; ``start()`` creates it
    again. A vhost named ``pwtest-<unix time>-…`` older than a day is a leftover of a
    killed session and is deleted by the next one."""

    kind = "amqp"
    _swept = False

    def __init__(self, _workdir: Path | None = None) -> None:
        self.vhost = f"pwtest-{int(time.time())}-{os.urandom(4).hex()}"
        self.created = False

    @property
    def url(self) -> str:
        user, password = services.RABBITMQ_USER, services.RABBITMQ_PASSWORD
        return f"amqp://{user}:{password}@{services.RABBITMQ_HOST}:{services.RABBITMQ_PORT}/{self.vhost}"

    @staticmethod
    def ctl(*args: str) -> str:
        done = subprocess.run(
            [*shlex.split(services.RABBITMQCTL), "-q", *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}".strip())
        return done.stdout

    def start(self) -> None:
        services.require_rabbitmq()
        try:
            self._sweep()
            self.ctl("add_vhost", self.vhost)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            services.unavailable(f"cannot make a RabbitMQ vhost with {services.RABBITMQCTL!r}: {exc}")
        self.created = True
        self.ctl("set_permissions", "-p", self.vhost, services.RABBITMQ_USER, ".*", ".*", ".*")

    def stop(self) -> None:
        if self.created:
            self.ctl("delete_vhost", self.vhost)
            self.created = False

    def _sweep(self) -> None:
        if RabbitVhost._swept:
            return
        RabbitVhost._swept = True
        for name in self.ctl("list_vhosts", "name").split():
            found = re.fullmatch(r"pwtest-(\d+)-[0-9a-f]+", name)
            if found and time.time() - int(found.group(1)) > 86400:
                self.ctl("delete_vhost", name)


class Broker(Protocol):
    kind: str

    @property
    def url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


BROKERS: dict[str, Callable[[Path], Broker]] = {"redis": RedisServer, "amqp": RabbitVhost}
BROKER_IDS = ["redis_broker", "amqp_broker"]


@pytest.fixture(scope="session", params=list(BROKERS), ids=BROKER_IDS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker of the in-process worker: each test that uses it runs once per broker."""
    server = BROKERS[request.param](tmp_path_factory.mktemp("broker"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("markers")
    os.environ["PYWORKFLOW_TEST_MARKERS"] = str(path)
    return path


@pytest.fixture(scope="session")
def celery_app(broker: Broker, markers: Path) -> Any:
    import tests.celery_workflows  # noqa: F401 - registers the workflows

    settings = Settings(broker_url=broker.url, lease_ttl=5.0, countdown_hint=10.0, tick_interval=0.2)
    return create_app("pyworkflow-tests", settings=settings)


@contextlib.contextmanager
def in_process_worker(app: Any, concurrency: int = 4) -> Iterator[Any]:
    """A real worker in a thread of this process (threads pool, the app's settings)."""
    from celery.contrib.testing.worker import start_worker
    from celery.worker import state

    with start_worker(
        app, pool="threads", concurrency=concurrency, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30
    ) as w:
        yield w
        # what start_worker does on exit, plus waking the event loop: on AMQP it may
        # otherwise sleep up to 10 s in its poll before it sees the flag
        state.should_terminate = 0
        hub = getattr(w, "hub", None)
        if hub is not None:
            hub.call_soon(lambda: None)  # thread-safe: wakes the poll


@pytest.fixture(scope="session")
def worker(celery_app: Any) -> Iterator[Any]:
    with in_process_worker(celery_app) as w:
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


@pytest.fixture(params=list(BROKERS), ids=BROKER_IDS)
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test alone (the in-process worker does not listen to it), once
    per broker kind."""
    server = BROKERS[request.param](tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def crash_app(own_broker: Broker, markers: Path, tmp_path: Path) -> Iterator[Any]:
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
def spawn(own_broker: Broker, markers: Path, tmp_path: Path) -> Iterator[Callable[..., Subprocess]]:
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
