"""What the Celery benchmarks that start their own workers share (signal_latency.py,
children_fanout.py): a work folder and the processes in it, the workers' environment, one
storage at a time in this process, Redis keys to remove at the end, and a ``main`` that
stops everything however the run ends."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The Redis db of Redis storage and of the raw tasks' side effects.
STORAGE_REDIS = "redis://127.0.0.1:6379/15"
QUEUES = "pyworkflow.workflows,pyworkflow.steps"


class CeleryBench:
    """A benchmark's state; ``name`` tags its work folder and key prefix."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        from benchmarks.celery_e2e import Processes

        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pyworkflow-{name}-"))
        self.procs = Processes(self.workdir)
        self.token = secrets.token_hex(4)
        self.prefix = f"bench-{name}-{self.token}"
        self.results: dict[tuple[str, str], list[float]] = {}
        self.loads: list[tuple[str, str]] = []
        self.stamps: Any = None
        self.storage: Any = None

    def configure_workers(self, broker_url: str, module: str) -> Any:
        """The workers' environment (this process takes its ``PYWORKFLOW_*`` part too) and
        the Celery app, imported only now: it reads its broker from the environment."""
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYWORKFLOW_BROKER_URL": broker_url,
            "PYWORKFLOW_IMPORTS": module,
            "PYWORKFLOW_TICK_INTERVAL": f"{self.args.tick:g}",
            "BENCH_STAMP_URL": STORAGE_REDIS,
        }
        self.env.pop("PYWORKFLOW_COUNTDOWN_HINT", None)
        self.env.pop("PYWORKFLOW_STORAGE_URL", None)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("PYWORKFLOW_", "BENCH_"))})
        import pyworkflow.celery.app as pw_app_module

        self.app = pw_app_module.app
        return self.app

    def storage_url(self, kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.workdir / 'runs.db'}"
        return f"{STORAGE_REDIS}?prefix={self.prefix}"

    def use_storage(self, kind: str) -> str:
        """Make ``kind`` this process's storage (closing the previous one); its URL."""
        from pyworkflow import config

        if self.storage is not None:
            self.run(self.storage.close())
            config.reset()
        url = self.storage_url(kind)
        config.configure(storage=url)
        self.storage = config.get_storage()
        self.run(self.storage.get_run("bench-warm-up"))  # connects; creates the schema
        return url

    def cleanup(self) -> None:
        """Stop the processes, close the storage, remove the keys under our prefix and the
        work folder (kept with ``--keep-logs``); :meth:`remove_own` in between."""
        from benchmarks.celery_e2e import log

        self.procs.stop_all()
        if self.storage is not None:
            with contextlib.suppress(Exception):
                self.run(self.storage.close(), timeout=10)
        if self.stamps is not None:
            with contextlib.suppress(Exception):
                deleted = delete_keys(self.stamps, f"{self.prefix}:*")
                log(f"deleted {deleted} Redis keys with prefix {self.prefix}:")
        self.remove_own()
        if self.args.keep_logs:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def remove_own(self) -> None:
        """What else the benchmark made (a broker db, a schema), once its processes stopped."""

    def run(self, coro: Any, timeout: float | None = 120) -> Any:
        from pyworkflow.loop import PROCESS_LOOP

        return PROCESS_LOOP.run(coro, timeout)

    def phase(self, name: str) -> None:
        from benchmarks.celery_e2e import loadavg, log

        load = loadavg()
        self.loads.append((name, load))
        log(f"{name}: load average {load}")

    def spawn(self, kind: str, name: str, storage_url: str) -> Any:
        env = {**self.env, "PYWORKFLOW_STORAGE_URL": storage_url}
        if kind == "worker":
            argv = [
                *("worker", "--pool=prefork", "-c", str(self.args.concurrency), "-Q", QUEUES),
                *("--without-mingle", "--without-gossip", "--loglevel=WARNING", "-n", f"{name}@%h"),
            ]
        else:
            argv = ["beat", "--loglevel=WARNING", "-s", str(self.workdir / f"{name}-schedule")]
        return self.procs.spawn(name, [sys.executable, "-m", "celery", "-A", "pyworkflow.celery.app", *argv], env)

    def wait_ping(self, timeout: float = 60.0) -> None:
        from benchmarks.celery_e2e import wait_until

        wait_until(
            lambda: (self.procs.check_alive(), self.app.control.ping(timeout=0.5))[1], timeout, "worker ping", 0.1
        )


def delete_keys(client: Any, match: str | None = None) -> int:
    """Delete the keys ``match`` names (every key without it), a thousand at a time."""
    keys = list(client.scan_iter(match=match, count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    return len(keys)


def run_main(bench: CeleryBench, body: Callable[[], str]) -> int:
    """Run ``body`` (it returns the report to print) with signals turned into a clean
    stop, the processes' last log lines shown on a failure, and cleanup in every case."""
    from benchmarks.celery_e2e import log, tail

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    atexit.register(bench.procs.stop_all)
    try:
        print(body())
        return 0
    except BaseException:
        for path in bench.procs.logs():
            if path.stat().st_size:
                log(f"--- {path.name} (last lines) ---\n{tail(path)}")
        raise
    finally:
        bench.cleanup()
