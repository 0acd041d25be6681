"""Crash recovery with default settings: SIGKILL a worker mid-step, how long until the run
moves again?

    .venv/bin/python benchmarks/crash_recovery.py [--kills 10] [--storage sqlite|redis|postgres]

Each trial: a worker (prefork, 2 processes) and a beat run on a private ``redis-server``
broker; a run enters a step that blocks on its first execution; the worker's whole
process group is SIGKILLed (no cleanup: its lease stays behind) and a new worker starts
at once, as a supervisor would restart it. "Resumed" is the moment the interrupted step
starts again (a timestamp the step writes itself), so the figure is kill -> work resumes,
whatever the cause of the wait (lease expiry, tick, worker boot). Default settings:
``PYWORKFLOW_LEASE_TTL`` and ``PYWORKFLOW_TICK_INTERVAL`` are not set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


class Fleet:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env, self.procs = workdir, env, []  # type: ignore[var-annotated]

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pyworkflow.celery.app", *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(
            name, "worker", "-Q", "pyworkflow.workflows,pyworkflow.steps", "--pool=prefork", "-c", "2",
            "--loglevel=WARNING", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
        )  # fmt: skip

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(proc)


def storage_url(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir}/runs.db"
    if kind == "redis":
        return f"redis://127.0.0.1:6379/15?prefix=pwcrash-{uuid.uuid4().hex[:8]}"
    if kind == "postgres":
        return "postgresql://postgres@127.0.0.1:5432/test?schema=pwcrash"
    raise SystemExit(f"unknown storage {kind!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "redis", "postgres"])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pwcrash-"))
    port = free_port()
    broker = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    markers = workdir / "markers"
    markers.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_") or k == "PYWORKFLOW_TEST_MARKERS"}
    env.update(
        PYWORKFLOW_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        PYWORKFLOW_STORAGE_URL=storage_url(args.storage, workdir),
        PYWORKFLOW_IMPORTS="benchmarks.crash_tasks",
        BENCH_CRASH_MARKERS=str(markers),
        PYTHONPATH=str(ROOT),
    )
    os.environ.update({k: env[k] for k in ("PYWORKFLOW_BROKER_URL", "PYWORKFLOW_STORAGE_URL", "BENCH_CRASH_MARKERS")})
    import pyworkflow
    from benchmarks.crash_tasks import blocked_once, stamps
    from pyworkflow.celery.settings import Settings

    settings = Settings.from_env()
    fleet = Fleet(workdir, env)
    waits: list[float] = []
    try:
        fleet.spawn("beat", "beat", "--loglevel=WARNING", "-s", str(workdir / "beat-schedule"))
        worker = fleet.worker("w0")
        for trial in range(args.kills):
            tag = f"t{trial}-{uuid.uuid4().hex[:6]}"
            run_id = pyworkflow.start(blocked_once, tag)
            wait_until(lambda: len(stamps(tag)) >= 1, 60, "the step to start")  # noqa: B023
            killed = time.time()
            fleet.kill(worker)
            worker = fleet.worker(f"w{trial + 1}")
            resumed = wait_until(lambda: stamps(tag)[1:], 120, "the step to start again")  # noqa: B023
            assert pyworkflow.wait_for_result(run_id, timeout=60) == tag
            waits.append(resumed[0] - killed)
            print(f"kill {trial + 1}: resumed after {waits[-1]:.2f} s", flush=True)
    finally:
        fleet.stop_all()
        broker.terminate()
        broker.wait(10)
    print()
    print(f"crash recovery, {args.storage} storage, lease ttl {settings.lease_ttl:g} s (default), "
          f"tick {settings.tick_interval:g} s, {len(waits)} SIGKILLs mid-step")  # fmt: skip
    print("| kills | p50 | max | min |")
    print("| --- | --- | --- | --- |")
    print(f"| {len(waits)} | {statistics.median(waits):.2f} s | {max(waits):.2f} s | {min(waits):.2f} s |")


if __name__ == "__main__":
    main()
