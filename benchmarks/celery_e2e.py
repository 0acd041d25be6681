"""End-to-end Celery benchmark: PyWorkflow against raw Celery, same broker, same flags.

    .venv/bin/python benchmarks/celery_e2e.py                 # Redis storage, 3 repetitions
    .venv/bin/python benchmarks/celery_e2e.py --storage sqlite --runs 1
    .venv/bin/python benchmarks/celery_e2e.py --broker amqp://guest:guest@127.0.0.1:5672/bench

What runs where
===============
* Broker: a private ``redis-server`` on a free port (``--save "" --appendonly no``), db 0;
  or ``--broker URL`` (``amqp://…`` for RabbitMQ; give it a vhost of its own: the
  benchmark purges the queues it uses there, ``bench.raw``, ``pyworkflow.workflows`` and
  ``pyworkflow.steps``).
* Storage: Redis ``127.0.0.1:6379/15`` with a unique ``bench-<random>`` prefix (its keys
  are deleted at the end), or ``--storage sqlite`` (a temp file). The raw baseline counts
  completions with one ``INCR`` per task on that same Redis db 15 (same prefix), so both
  sides pay one storage write to be counted; it has no result backend (neither has
  PyWorkflow), its round trip replies by RPUSH on that Redis.
* Workers: subprocesses ``python -m celery -A <app> worker --pool=prefork -c 2 -Q <queue>
  --without-mingle --without-gossip --loglevel=WARNING``; beat a subprocess (wake phases).
  PyWorkflow uses the real app ``pyworkflow.celery.app`` configured by ``PYWORKFLOW_*``;
  raw Celery the plain app ``benchmarks.e2e_tasks:raw_app`` with PyWorkflow's settings
  (JSON, acks_late, reject_on_worker_lost, prefetch multiplier 1, same transport options,
  no result backend; on AMQP its queue has the same ``x-max-priority``).

Figures
=======
1a raw drained tasks/s: enqueue N empty tasks, then start the worker; rate =
   (N-1) / (last completion - first completion), so worker start-up is not counted (the
   time from spawning the worker to the last completion is printed too).
1b raw round trip: p50/p99 of sequential ``apply_async()`` of a task that RPUSHes its
   reply to a key on the storage Redis, which the benchmark waits for with BLPOP (no
   result backend, no polling).
2a PyWorkflow runs/s: enqueue N 3-step inline runs with ``start()``, then start the
   worker; rate = (N-1) / (last ``completed_at`` - first ``completed_at``), the same
   first-to-last rule as 1a. Ratio to 1a.
2b latency at idle: sequential runs with the worker running: ``completed_at -
   created_at`` of the run record, and wall clock from calling ``start()`` to the return
   of ``wait_for_result(poll=0.002)`` (the default 20 ms poll would add ~10 ms on
   average). p50 compared with 1b.
2c wake lateness: N runs ``await sleep("2s")`` then one step, beat ticking every second;
   lateness = ``sleep.completed`` event timestamp - ``wake_at`` of ``sleep.created``.
   Once with the countdown hint (default), once with ``PYWORKFLOW_COUNTDOWN_HINT=0``.
   Idle probe (first repetition): while sleeping runs are all suspended,
   ``inspect().active()`` must show 0 tasks on the worker (no slot held by a sleep).
2d wake lateness behind a burst (``--burst``, default 2,000; 0 skips it): N runs
   ``await sleep("8s")`` (``--burst-sleep``); once all are suspended, a burst of new
   3-step runs is recorded in storage, and ``--burst-lead`` (1 s) before the first
   sleeper is due their first activations are published back to back (what many clients
   calling ``start()`` at once do): a backlog the workers need seconds to drain while the
   sleepers come due. Lateness as
   2c; what counts is that wake-ups (and the ticks) go ahead of the new runs. Printed
   with it: how many burst runs were still unfinished when the first sleeper was due.
   Run with the countdown hint on and with it off (tick only), like 2c.

Every figure is measured ``--runs`` times and the median is printed. Subprocesses are
killed by process group on exit, Ctrl-C or failure; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STORAGE_REDIS = "redis://127.0.0.1:6379/15"
TASKS_MODULE = "benchmarks.e2e_tasks"
PW_QUEUES = "pyworkflow.workflows,pyworkflow.steps"


# -- small helpers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:g}s")
        time.sleep(interval)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- subprocesses ----------------------------------------------------------------------------


class Processes:
    """Every subprocess we start, each in a session of its own, killed as a group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path, Any]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = self.workdir / f"{name}.log"
        handle = path.open("ab")
        proc = subprocess.Popen(
            argv, cwd=self.workdir, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((proc, path, handle))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
        """SIGTERM the main process (a warm shutdown for Celery: it stops its own pool),
        SIGKILL the whole group after ``grace`` s."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # pool children left behind by a parent that died first
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for i, (p, _, handle) in enumerate(self.procs):
            if p is proc:
                handle.close()
                del self.procs[i]
                break

    def stop_all(self) -> None:
        for proc, _, _ in list(reversed(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=10.0)

    def check_alive(self) -> None:
        for proc, path, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{path.name[:-4]} exited with {proc.returncode}; log:\n{tail(path)}")

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("*.log"))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the benchmark -----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="pyworkflow-e2e-"))
        self.procs = Processes(self.workdir)
        self.prefix = f"bench-{secrets.token_hex(4)}"
        self.loads: list[tuple[str, str]] = []
        self.results: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self.broker_proc: subprocess.Popen[bytes] | None = None
        self.counter: Any = None
        self.storage_url = ""
        self.sqlite_path: Path | None = None

    # -- setup / teardown ------------------------------------------------------------

    def start_broker(self) -> None:
        from pyworkflow.celery.settings import broker_kind

        self.broker: Any = None  # a redis client on a Redis broker
        if self.args.broker:
            self.broker_url = self.args.broker
            self.broker_kind = broker_kind(self.broker_url)
            if self.broker_kind == "redis":
                import redis

                self.broker = redis.Redis.from_url(self.broker_url)
                if not _pings(self.broker):
                    raise SystemExit(f"broker {self.broker_url} is not reachable")
            elif self.broker_kind == "amqp":
                from kombu import Connection

                with Connection(self.broker_url, connect_timeout=5) as conn:
                    conn.ensure_connection(max_retries=1)
                    props = conn.connection.server_properties
                    self.broker_version = f"{_text(props.get('product'))} {_text(props.get('version'))}"
            else:
                raise SystemExit(f"--broker {self.broker_url}: only redis:// and amqp:// brokers are supported")
            return
        self.broker_kind = "redis"
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        self.broker_port = free_port()
        self.broker_proc = self.procs.spawn(
            "broker",
            [
                binary,
                "--port",
                str(self.broker_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            dict(os.environ),
        )
        import redis

        self.broker = redis.Redis(port=self.broker_port)
        wait_until(lambda: _pings(self.broker), 10, "private redis-server up", 0.05)
        self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0"

    def configure(self) -> None:
        import redis

        self.counter = redis.Redis.from_url(STORAGE_REDIS)
        if not _pings(self.counter):
            raise SystemExit(f"storage Redis {STORAGE_REDIS} is not reachable")
        if self.args.storage == "redis":
            self.storage_url = f"{STORAGE_REDIS}?prefix={self.prefix}"
        else:
            self.sqlite_path = self.workdir / "runs.db"
            self.storage_url = f"sqlite:///{self.sqlite_path}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYWORKFLOW_BROKER_URL": self.broker_url,
            "PYWORKFLOW_STORAGE_URL": self.storage_url,
            "PYWORKFLOW_IMPORTS": TASKS_MODULE,
            "PYWORKFLOW_TICK_INTERVAL": f"{self.args.tick:g}",
            "BENCH_BROKER_URL": self.broker_url,
            "BENCH_COUNTER_URL": STORAGE_REDIS,
        }
        for name in ("PYWORKFLOW_COUNTDOWN_HINT", "BENCH_RESULT_URL"):
            self.env.pop(name, None)
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("PYWORKFLOW_", "BENCH_"))})
        os.environ.pop("PYWORKFLOW_COUNTDOWN_HINT", None)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        # Only now: both apps read their broker from the environment at import.
        import pyworkflow.celery.app as pw_app_module
        from benchmarks import e2e_tasks
        from pyworkflow import config

        self.tasks = e2e_tasks
        self.pw_app = pw_app_module.app
        self.storage = config.get_storage()
        self.run(self.storage.get_run("bench-warm-up"))  # connects; SQLite creates its schema

    def cleanup(self) -> None:
        self.procs.stop_all()
        with contextlib.suppress(Exception):
            from pyworkflow.loop import PROCESS_LOOP

            PROCESS_LOOP.run(self.storage.close(), timeout=10)
        if self.counter is not None:
            with contextlib.suppress(Exception):
                keys = list(self.counter.scan_iter(match=f"{self.prefix}:*", count=1000))
                for i in range(0, len(keys), 1000):
                    self.counter.delete(*keys[i : i + 1000])
                log(f"deleted {len(keys)} storage keys with prefix {self.prefix}:")
        if self.args.keep_logs:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes ---------------------------------------------------------------------

    def worker(self, app: str, queues: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool=prefork",
            "-c",
            str(self.args.concurrency),
            "-Q",
            queues,
            "--without-mingle",
            "--without-gossip",
            "--loglevel=WARNING",
            "-n",
            f"{name}@%h",
        ]
        self.worker_argv = argv
        return self.procs.spawn(name, argv, {**self.env, **env})

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pyworkflow.celery.app",
            "beat",
            "--loglevel=WARNING",
            "-s",
            str(self.workdir / f"{name}-schedule"),
        ]
        return self.procs.spawn(name, argv, dict(self.env))

    def wait_ping(self, app: Any, timeout: float = 60.0) -> None:
        wait_until(lambda: (self.procs.check_alive(), app.control.ping(timeout=0.5))[1], timeout, "worker ping", 0.1)

    def purge_broker(self) -> None:
        """Empty queues and unacked sets on the broker (no worker running); kombu's
        binding sets stay, so publishers need not declare again. On a broker of our own
        everything goes, on one given with ``--broker`` only the benchmark's queues."""
        if self.broker_proc is None:
            self.purge_queues_only()
            return
        keys = [k for k in self.broker.scan_iter(count=1000) if not k.startswith(b"_kombu.binding.")]
        if keys:
            self.broker.delete(*keys)

    def phase(self, name: str) -> None:
        load = loadavg()
        self.loads.append((name, load))
        log(f"{name}: load average {load}")

    def record(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)

    # -- storage reads ---------------------------------------------------------------------

    def run(self, coro: Any, timeout: float | None = 300) -> Any:
        from pyworkflow.loop import PROCESS_LOOP

        return PROCESS_LOOP.run(coro, timeout)

    def fetch(self, fn: Callable[[str], Any], ids: Iterable[str], concurrency: int = 16) -> list[Any]:
        async def all_of() -> list[Any]:
            sem = asyncio.Semaphore(concurrency)

            async def one(run_id: str) -> Any:
                async with sem:
                    return await fn(run_id)

            return await asyncio.gather(*(one(i) for i in ids))

        return self.run(all_of())  # type: ignore[no-any-return]

    def count(self, status: str) -> int:
        """Runs in ``status``, read cheaply (an index size / one COUNT), for progress polls."""
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=5)) as db:
                return int(db.execute("SELECT count(*) FROM runs WHERE status = ?", (status,)).fetchone()[0])
        from pyworkflow.storage.redis import KEYS

        return int(self.counter.zcard(KEYS["by_status"].format(p=self.prefix, status=status)))

    def wait_runs(self, base_completed: int, n: int, timeout: float, what: str) -> float:
        """Poll until ``n`` more runs completed; return the time.time() it was seen."""
        base_failed = self.count("failed")

        def done() -> bool:
            self.procs.check_alive()
            failed = self.count("failed") - base_failed
            if failed:
                raise RuntimeError(f"{what}: {failed} run(s) failed")
            return self.count("completed") - base_completed >= n

        wait_until(done, timeout, what, 0.05)
        return time.time()

    # -- 1. raw Celery ----------------------------------------------------------------------

    def raw(self, rep: int) -> None:
        a, tasks = self.args, self.tasks
        self.phase(f"1a raw drain (rep {rep})")
        self.purge_broker()
        key = f"{self.prefix}:raw-drain:{rep}"
        t0 = time.perf_counter()
        for _ in range(a.raw_tasks):
            tasks.drain.apply_async(args=[key, a.raw_tasks], queue=tasks.RAW_QUEUE)
        enqueue_s = time.perf_counter() - t0
        spawned = time.time()
        worker = self.worker(f"{TASKS_MODULE}:raw_app", tasks.RAW_QUEUE, f"raw{rep}")
        try:
            wait_until(
                lambda: (self.procs.check_alive(), int(self.counter.get(key) or 0) >= a.raw_tasks)[1],
                a.deadline,
                "raw drain",
                0.01,
            )
            # the task that counted last stamps its time right after its INCR
            last = float(wait_until(lambda: self.counter.get(f"{key}:last"), 10, "raw drain: last stamp"))
            first = float(self.counter.get(f"{key}:first"))
            rate = (a.raw_tasks - 1) / (last - first)
            self.record("raw_drain_rate", rate)
            self.record("raw_drain_wall", last - spawned)
            self.record("raw_enqueue_rate", a.raw_tasks / enqueue_s)
            log(
                f"  raw drain: {rate:.0f} tasks/s ({a.raw_tasks} in {last - first:.2f}s; "
                f"{last - spawned:.2f}s from worker spawn)"
            )

            self.phase(f"1b raw round trip (rep {rep})")
            reply = f"{self.prefix}:raw-echo:{rep}"

            def round_trip(i: int) -> None:
                tasks.echo.apply_async(args=[reply, i])
                answer = self.counter.blpop([reply], timeout=10)
                assert answer is not None and int(answer[1]) == i, f"round trip {i}: {answer!r}"

            for i in range(a.warmup):
                round_trip(i)
            rtts = []
            for i in range(a.latency_runs):
                t = time.perf_counter()
                round_trip(i)
                rtts.append((time.perf_counter() - t) * 1000)
            self.record("raw_rtt_p50", pct(rtts, 50))
            self.record("raw_rtt_p99", pct(rtts, 99))
            log(f"  raw round trip: p50 {pct(rtts, 50):.2f} ms, p99 {pct(rtts, 99):.2f} ms")
        finally:
            self.procs.stop(worker)

    # -- 2. PyWorkflow ------------------------------------------------------------------------

    def pyworkflow(self, rep: int) -> None:
        from pyworkflow import start, wait_for_result

        a, tasks = self.args, self.tasks
        self.phase(f"2a PyWorkflow throughput (rep {rep})")
        self.purge_broker()
        base = self.count("completed")
        t0 = time.perf_counter()
        ids = [start(tasks.three_steps, i) for i in range(a.pw_runs)]
        enqueue_s = time.perf_counter() - t0
        spawned = time.time()
        worker = self.worker("pyworkflow.celery.app", PW_QUEUES, f"pw{rep}")
        beat = None
        try:
            self.wait_runs(base, a.pw_runs, a.deadline, "PyWorkflow throughput")
            runs = self.fetch(self.storage.get_run, ids)
            done = sorted(r.completed_at.timestamp() for r in runs)
            assert all(r.status == "completed" for r in runs)
            rate = (len(done) - 1) / (done[-1] - done[0])
            self.record("pw_rate", rate)
            self.record("pw_wall", done[-1] - spawned)
            self.record("pw_enqueue_rate", a.pw_runs / enqueue_s)
            log(
                f"  PyWorkflow: {rate:.0f} runs/s ({a.pw_runs} in {done[-1] - done[0]:.2f}s; "
                f"{done[-1] - spawned:.2f}s from worker spawn; start() {a.pw_runs / enqueue_s:.0f}/s)"
            )

            self.phase(f"2b PyWorkflow latency (rep {rep})")
            for i in range(a.warmup):
                wait_for_result(start(tasks.three_steps, i), timeout=30, poll=0.002)
            walls, lat_ids = [], []
            for i in range(a.latency_runs):
                t = time.perf_counter()
                run_id = start(tasks.three_steps, i)
                assert wait_for_result(run_id, timeout=30, poll=0.002) == i + 3
                walls.append((time.perf_counter() - t) * 1000)
                lat_ids.append(run_id)
            runs = self.fetch(self.storage.get_run, lat_ids)
            recs = [(r.completed_at - r.created_at).total_seconds() * 1000 for r in runs]
            for q in (50, 99):
                self.record(f"pw_rec_p{q}", pct(recs, q))
                self.record(f"pw_wall_p{q}", pct(walls, q))
            log(
                f"  latency: record p50 {pct(recs, 50):.2f} ms p99 {pct(recs, 99):.2f} ms; "
                f"wall p50 {pct(walls, 50):.2f} ms p99 {pct(walls, 99):.2f} ms"
            )

            beat = self.beat(f"beat{rep}")
            self.wake(rep, "hint", worker)
            if rep == 1 and not a.skip_probe:
                self.idle_probe()
            if a.burst:
                self.burst_wake(rep, "hint")
            self.procs.stop(worker)
            self.purge_queues_only()
            worker = self.worker("pyworkflow.celery.app", PW_QUEUES, f"pw{rep}-tick", PYWORKFLOW_COUNTDOWN_HINT="0")
            self.wait_ping(self.pw_app)
            for i in range(a.warmup):
                wait_for_result(start(tasks.three_steps, i), timeout=30, poll=0.002)
            self.wake(rep, "tick", worker)
            if a.burst:
                self.burst_wake(rep, "tick")
        finally:
            self.procs.stop(worker)
            if beat is not None:
                self.procs.stop(beat)

    def purge_queues_only(self) -> None:
        """Drop leftover (no-op) wake-ups restored by the stopped worker; beat may run."""
        queues = [*PW_QUEUES.split(","), self.tasks.RAW_QUEUE]
        if self.broker_kind == "amqp":
            from kombu import Connection

            with Connection(self.broker_url) as conn:
                for queue in queues:
                    channel = conn.channel()  # a missing queue (404) closes its channel
                    try:
                        channel.queue_purge(queue)
                    except Exception as exc:  # noqa: BLE001 - not declared yet
                        if getattr(exc, "reply_code", None) != 404:
                            raise
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
            return
        for queue in queues:  # kombu keeps one list per priority step: name, name\x06\x163 …
            keys = list(self.broker.scan_iter(match=f"{queue}*", count=1000))
            if keys:
                self.broker.delete(*keys)
        self.broker.delete("unacked", "unacked_index")

    def wake(self, rep: int, mode: str, worker: subprocess.Popen[bytes]) -> None:
        from pyworkflow import start

        a, tasks = self.args, self.tasks
        self.phase(f"2c wake lateness, {mode} (rep {rep})")
        base = self.count("completed")
        published = self.published()
        t0 = time.perf_counter()
        ids = []
        for i in range(a.sleepers):
            if a.sleeper_rate > 0:  # pace the starts: i-th run at t0 + i / rate
                time.sleep(max(0.0, t0 + i / a.sleeper_rate - time.perf_counter()))
            ids.append(start(tasks.sleep_then_step, a.sleep))
        start_s = time.perf_counter() - t0
        self.wait_runs(base, a.sleepers, a.deadline, f"wake phase ({mode})")
        time.sleep(0.5)  # let the last hints/tick wake-ups (no-ops now) be published too
        now_published = self.published()
        messages = None if now_published is None or published is None else now_published - published
        logs = self.fetch(self.storage.get_events, ids)
        late, lag = [], []
        for events in logs:
            started = next(e for e in events if e.type == "workflow.started")
            created = next(e for e in events if e.type == "sleep.created")
            completed = next(e for e in events if e.type == "sleep.completed")
            wake_at = datetime.fromisoformat(created.data["wake_at"])
            late.append((completed.timestamp - wake_at).total_seconds() * 1000)
            lag.append((created.timestamp - started.timestamp).total_seconds() * 1000)
        assert min(late) >= 0, f"a run woke {min(late):.1f} ms early"
        for q in (50, 99):
            self.record(f"wake_{mode}_p{q}", pct(late, q))
            self.record(f"wake_{mode}_lag_p{q}", pct(lag, q))
        self.record(f"wake_{mode}_max", max(late))
        self.record(f"wake_{mode}_start_rate", a.sleepers / start_s)
        if messages is not None:
            self.record(f"wake_{mode}_messages", messages / a.sleepers)
        log(
            f"  lateness ({mode}): p50 {pct(late, 50):.1f} ms p99 {pct(late, 99):.1f} ms max {max(late):.1f} ms "
            f"(started {a.sleepers} in {start_s:.2f}s; first activation lag p50 {pct(lag, 50):.0f} ms "
            f"p99 {pct(lag, 99):.0f} ms"
            + ("" if messages is None else f"; {messages / a.sleepers:.2f} broker messages per run")
            + ")"
        )

    def burst_wake(self, rep: int, mode: str) -> None:
        """2d: sleepers come due while a burst of new runs waits in the broker."""
        from pyworkflow import start
        from pyworkflow.engine import create_run
        from pyworkflow.registry import get_workflow

        a, tasks = self.args, self.tasks
        self.phase(f"2d wake lateness behind a burst of {a.burst} new runs, {mode} (rep {rep})")
        base, base_suspended = self.count("completed"), self.count("suspended")
        t0 = time.perf_counter()
        ids = [start(tasks.sleep_then_step, a.burst_sleep) for _ in range(a.sleepers)]

        def all_asleep() -> bool:
            self.procs.check_alive()
            return bool(self.count("suspended") - base_suspended >= a.sleepers)

        wait_until(all_asleep, a.deadline, "burst phase: sleepers suspended", 0.05)
        asleep_s = time.perf_counter() - t0
        # the burst: recorded first, then every first activation published back to back
        definition = get_workflow("bench.three_steps")
        sem = asyncio.Semaphore(16)

        async def record(i: int) -> str:
            async with sem:
                run, _ = await create_run(self.storage, definition, (i,), {})
                return run.run_id

        async def record_all() -> list[str]:
            return await asyncio.gather(*(record(i) for i in range(a.burst)))

        burst_ids: list[str] = self.run(record_all())
        # publish it --burst-lead seconds before the first sleeper is due: a fresh backlog
        first_due = min(r.wake_at.timestamp() for r in self.fetch(self.storage.get_run, ids))
        time.sleep(max(0.0, first_due - a.burst_lead - time.time()))
        t, publishing_at = time.perf_counter(), time.time()
        runtime = self.pw_app.pyworkflow
        for run_id in burst_ids:
            runtime.send_activation(run_id, new=True)
        published_at, publish_s = time.time(), time.perf_counter() - t
        self.wait_runs(base, a.sleepers + a.burst, a.deadline, f"burst phase ({mode})")
        logs = self.fetch(self.storage.get_events, ids)
        late, due = [], []
        for events in logs:
            created = next(e for e in events if e.type == "sleep.created")
            completed = next(e for e in events if e.type == "sleep.completed")
            wake_at = datetime.fromisoformat(created.data["wake_at"])
            due.append(wake_at.timestamp())
            late.append((completed.timestamp - wake_at).total_seconds() * 1000)
        burst_done = sorted(r.completed_at.timestamp() for r in self.fetch(self.storage.get_run, burst_ids))
        first_due = min(due)
        backlog = sum(1 for x in burst_done if x > first_due)
        for q in (50, 99):
            self.record(f"burst_{mode}_p{q}", pct(late, q))
        self.record(f"burst_{mode}_max", max(late))
        self.record(f"burst_{mode}_backlog", backlog)
        self.record(f"burst_{mode}_drain_s", burst_done[-1] - published_at)
        if first_due < publishing_at:
            self.notes.append(
                f"2d ({mode}, rep {rep}): the first sleeper was due {publishing_at - first_due:.2f} s before the "
                "burst was published; raise --burst-sleep"
            )
        log(
            f"  lateness behind a burst ({mode}): p50 {pct(late, 50):.1f} ms p99 {pct(late, 99):.1f} ms "
            f"max {max(late):.1f} ms; {a.sleepers} asleep in {asleep_s:.2f}s; {a.burst} runs published in "
            f"{publish_s:.2f}s, {backlog} unfinished when the first sleeper was due, the last done "
            f"{burst_done[-1] - published_at:.2f}s after publishing"
        )

    def published(self) -> int | None:
        """Messages published on the broker so far (kombu's Redis transport publishes
        with one LPUSH each): start(), countdown hints, tick wake-ups, ticks. ``None`` on
        RabbitMQ, which counts publishes only in its management plugin."""
        if self.broker_kind != "redis":
            return None
        stats = self.broker.info("commandstats")
        return int(stats.get("cmdstat_lpush", {}).get("calls", 0))

    def idle_probe(self) -> None:
        """While sleeping runs are all suspended, the worker runs nothing: 0 active tasks."""
        from pyworkflow import start, wait_for_result
        from pyworkflow.storage.base import RunStatus

        a, tasks = self.args, self.tasks
        self.phase("idle probe")
        n, seconds = a.probe_runs, 8.0
        ids = [start(tasks.sleep_then_step, f"{seconds:g}s") for _ in range(n)]
        started = time.monotonic()

        def all_suspended() -> bool:
            runs = self.fetch(self.storage.get_run, ids)
            return all(r.status == RunStatus.SUSPENDED for r in runs)

        wait_until(all_suspended, seconds - 2, "probe runs suspended", 0.05)
        # other runs still go through while those sleep ...
        t = time.perf_counter()
        others = [start(tasks.three_steps, i) for i in range(50)]
        for run_id in others:
            wait_for_result(run_id, timeout=30, poll=0.005)
        others_s = time.perf_counter() - t
        # ... and once they are done the worker runs nothing (limit=1: one worker answers)
        samples = []
        for _ in range(3):
            inspect = self.pw_app.control.inspect(timeout=1.0, limit=1)
            active, scheduled = inspect.active() or {}, inspect.scheduled() or {}
            samples.append((sum(map(len, active.values())), sum(map(len, scheduled.values())), len(active)))
            time.sleep(0.1)
        asleep = time.monotonic() - started < seconds
        for run_id in ids:
            wait_for_result(run_id, timeout=60)
        active_max = max(s[0] for s in samples)
        self.probe = {
            "active": active_max,
            "scheduled": max(s[1] for s in samples),
            "workers": max(s[2] for s in samples),
            "others_s": others_s,
            "others_during_sleep": asleep,
        }
        log(f"  idle probe: {self.probe}")

    # -- diagnosis ------------------------------------------------------------------------------

    def diagnose(self) -> None:
        """In this process, no Celery: ``create_run`` + ``activate`` of ``bench.three_steps``,
        one at a time, on the benchmark's storage and on ``memory://`` (the engine alone);
        storage calls, wall and CPU time per run."""

        from pyworkflow.engine import activate, create_run
        from pyworkflow.registry import get_workflow
        from pyworkflow.storage import storage_from_url

        self.phase("diagnose (in-process activations)")
        n = self.args.diagnose_runs
        definition = get_workflow("bench.three_steps")
        self.diagnosis: list[dict[str, Any]] = []

        async def measure(url: str) -> dict[str, Any]:
            storage = storage_from_url(url)
            calls: dict[str, int] = {}
            spent = [0.0]
            for name in _STORAGE_METHODS:
                original = getattr(storage, name)

                async def counted(*args: Any, __fn: Any = original, __name: str = name, **kwargs: Any) -> Any:
                    t = time.perf_counter()
                    try:
                        return await __fn(*args, **kwargs)
                    finally:
                        calls[__name] = calls.get(__name, 0) + 1
                        spent[0] += time.perf_counter() - t

                setattr(storage, name, counted)
            try:
                for i in range(20):  # warm up: connections, scripts, caches
                    run, _ = await create_run(storage, definition, (i,), {})
                    await activate(storage, run.run_id, owner="diagnose")
                calls.clear()
                spent[0] = 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                ids = []
                for i in range(n):
                    run, _ = await create_run(storage, definition, (i,), {})
                    ids.append(run.run_id)
                start_wall, start_cpu = time.perf_counter() - wall, time.process_time() - cpu
                start_calls, start_storage = sum(calls.values()), spent[0]
                calls.clear()
                spent[0] = 0.0
                wall, cpu = time.perf_counter(), time.process_time()
                for run_id in ids:
                    outcome = await activate(storage, run_id, owner="diagnose")
                    assert outcome.status == "completed", outcome
                act_wall, act_cpu = time.perf_counter() - wall, time.process_time() - cpu
                return {
                    "storage": url.split("?")[0]
                    if url != self.storage_url
                    else f"{self.args.storage} (as benchmarked)",
                    "start_calls": start_calls / n,
                    "start_wall": start_wall / n * 1000,
                    "start_cpu": start_cpu / n * 1000,
                    "start_storage": start_storage / n * 1000,
                    "calls": {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
                    "act_calls": sum(calls.values()) / n,
                    "act_wall": act_wall / n * 1000,
                    "act_cpu": act_cpu / n * 1000,
                    "act_storage": spent[0] / n * 1000,
                }
            finally:
                await storage.close()

        for url in (self.storage_url, "memory://"):
            result = self.run(measure(url), timeout=600)
            self.diagnosis.append(result)
            log(f"  {result}")
        if self.args.storage == "redis":

            async def pings() -> float:
                import redis.asyncio as aioredis

                client = aioredis.Redis.from_url(STORAGE_REDIS)
                try:
                    await client.ping()
                    t = time.perf_counter()
                    for _ in range(500):
                        await client.ping()
                    return (time.perf_counter() - t) / 500 * 1000
                finally:
                    await client.aclose()

            self.ping_ms = self.run(pings())

    # -- report ---------------------------------------------------------------------------------

    def report(self, argv: list[str]) -> str:
        a = self.args
        med = {k: statistics.median(v) for k, v in self.results.items()}
        each = {k: " / ".join(_fmt(x) for x in v) for k, v in self.results.items()}
        out = []
        out.append("# PyWorkflow end-to-end Celery benchmark\n")
        out.append(f"- command: `{' '.join(shlex.quote(x) for x in argv)}`")
        out.append(f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), {platform.platform()}")
        import celery
        import kombu
        import redis

        broker_version = _redis_version(self.broker) if self.broker_kind == "redis" else self.broker_version
        out.append(
            f"- Python {platform.python_version()}, Celery {celery.__version__}, kombu {kombu.__version__}, "
            f"redis-py {redis.__version__}, broker {broker_version}, "
            f"storage Redis {_redis_version(self.counter)}"
        )
        out.append(f"- pyworkflow under test: {_package_version()}")
        storage = self.storage_url if a.storage == "redis" else f"sqlite (temp file {self.sqlite_path})"
        if self.broker_proc is not None:
            broker = f"private redis-server 127.0.0.1:{self.broker_port} (db 0)"
        else:
            from kombu.utils.url import maybe_sanitize_url

            broker = f"`{maybe_sanitize_url(self.broker_url)}`"
        out.append(f"- broker: {broker}; storage: {storage}")
        out.append(
            f"- worker: `celery -A <app> worker --pool=prefork -c {a.concurrency} -Q <queue> "
            f"--without-mingle --without-gossip --loglevel=WARNING`; PyWorkflow app "
            f"`pyworkflow.celery.app`, tick {a.tick:g}s"
        )
        out.append(
            "- raw Celery app: JSON serializer/accept, task_acks_late, task_reject_on_worker_lost, "
            "worker_prefetch_multiplier=1, visibility_timeout 3600, unacked_restore_throttle 1 (as "
            "PyWorkflow's), no result backend; drain task = one INCR on storage Redis db 15 (+ a SET for "
            "the first and last); echo task = one RPUSH there, awaited by BLPOP"
        )
        out.append(f"- each figure: median of {a.runs} repetition(s) (the values of each after the median)\n")

        tick_target = a.tick * 1000 + 100
        rows: list[tuple[str, str, str, str, str]] = []

        def row(label: str, key: str, unit: str, target: str = "", ok: bool | None = None) -> None:
            if key not in med:
                return
            verdict = "" if ok is None else ("yes" if ok else "**no**")
            rows.append((label, f"{_fmt(med[key])} {unit}", each[key], target, verdict))

        row(f"1a raw Celery drained ({a.raw_tasks} empty tasks, first→last)", "raw_drain_rate", "tasks/s")
        row("1a   … from spawning the worker to the last task", "raw_drain_wall", "s")
        row("1b raw apply_async() → reply (RPUSH/BLPOP) round trip p50", "raw_rtt_p50", "ms")
        row("1b raw apply_async() → reply (RPUSH/BLPOP) round trip p99", "raw_rtt_p99", "ms")
        if "pw_rate" in med and "raw_drain_rate" in med:
            ratio = med["pw_rate"] / med["raw_drain_rate"]
            goal = THROUGHPUT_GOALS.get(a.storage, 0.5)
            self.results["pw_ratio"] = [
                p / r for p, r in zip(self.results["pw_rate"], self.results["raw_drain_rate"], strict=False)
            ]
            each["pw_ratio"] = " / ".join(f"{x:.0%}" for x in self.results["pw_ratio"])
            row(f"2a PyWorkflow 3-step inline runs ({a.pw_runs}, first→last)", "pw_rate", "runs/s")
            rows.append(
                (
                    "2a   … ratio to raw drained tasks/s",
                    f"{ratio:.0%}",
                    each["pw_ratio"],
                    f"≥ {goal:.0%}",
                    "yes" if ratio >= goal else "**no**",
                )
            )
            row("2a   … from spawning the worker to the last run", "pw_wall", "s")
            row("2a   … start() enqueue rate (script, sequential)", "pw_enqueue_rate", "runs/s")
        if "pw_rate" in med and "raw_drain_rate" not in med:
            row(f"2a PyWorkflow 3-step inline runs ({a.pw_runs}, first→last)", "pw_rate", "runs/s")
        if "pw_rec_p50" in med and "raw_rtt_p50" not in med:
            row("2b start→completed, record (completed_at − created_at) p50", "pw_rec_p50", "ms")
            row("2b start() → wait_for_result() wall clock p50", "pw_wall_p50", "ms")
        if "pw_rec_p50" in med and "raw_rtt_p50" in med:
            raw = med["raw_rtt_p50"]
            row(
                "2b start→completed, record (completed_at − created_at) p50",
                "pw_rec_p50",
                "ms",
                f"≤ 3× raw = {3 * raw:.2f} ms",
                med["pw_rec_p50"] <= 3 * raw,
            )
            row("2b start→completed, record p99", "pw_rec_p99", "ms")
            row(
                "2b start() → wait_for_result() wall clock p50",
                "pw_wall_p50",
                "ms",
                f"≤ 3× raw = {3 * raw:.2f} ms",
                med["pw_wall_p50"] <= 3 * raw,
            )
            row("2b start() → wait_for_result() wall clock p99", "pw_wall_p99", "ms")
            rows.append(
                (
                    "2b   … p50 ratio to raw round trip (record / wall)",
                    f"{med['pw_rec_p50'] / raw:.1f}× / {med['pw_wall_p50'] / raw:.1f}×",
                    "",
                    "≤ 3×",
                    "",
                )
            )
        for mode, label in (("hint", "countdown hint on (default)"), ("tick", "COUNTDOWN_HINT=0, tick only")):
            if f"wake_{mode}_p99" in med:
                row(f"2c wake lateness, {label}, p50", f"wake_{mode}_p50", "ms")
                row(
                    f"2c wake lateness, {label}, p99",
                    f"wake_{mode}_p99",
                    "ms",
                    f"≤ {tick_target:g} ms",
                    med[f"wake_{mode}_p99"] <= tick_target,
                )
                row(f"2c wake lateness, {label}, max", f"wake_{mode}_max", "ms")
                row(f"2c   … {a.sleepers} sleepers started at (runs/s)", f"wake_{mode}_start_rate", "runs/s")
                row("2c   … first-activation lag p50 (sleep.created − workflow.started)", f"wake_{mode}_lag_p50", "ms")
                row("2c   … first-activation lag p99", f"wake_{mode}_lag_p99", "ms")
                row("2c   … broker messages published per sleeper run", f"wake_{mode}_messages", "")
        for mode, label in (("hint", "countdown hint on (default)"), ("tick", "COUNTDOWN_HINT=0, tick only")):
            if f"burst_{mode}_p99" in med:
                what = f"{a.sleepers} sleepers behind a burst of {a.burst} new runs"
                row(f"2d wake lateness, {what}, {label}, p50", f"burst_{mode}_p50", "ms")
                row(
                    f"2d wake lateness, {what}, {label}, p99",
                    f"burst_{mode}_p99",
                    "ms",
                    f"≤ {tick_target:g} ms",
                    med[f"burst_{mode}_p99"] <= tick_target,
                )
                row(f"2d wake lateness, {what}, {label}, max", f"burst_{mode}_max", "ms")
                row("2d   … burst runs unfinished when the first sleeper was due", f"burst_{mode}_backlog", "")
                row("2d   … burst drained (publish → last run done)", f"burst_{mode}_drain_s", "s")
        out.append("| figure | median | each repetition | target | met |")
        out.append("| --- | ---: | --- | --- | --- |")
        out += [f"| {' | '.join(r)} |" for r in rows]
        probe = getattr(self, "probe", None)
        if probe is not None:
            out.append("")
            out.append(
                f"No worker slot held while sleeping (checked with `inspect().active()`): {a.probe_runs} runs "
                f"sleeping 8 s, all suspended; {probe['workers']} worker(s) answered, active tasks = "
                f"**{probe['active']}** (max of 3 samples); the worker's main process held {probe['scheduled']} "
                f"countdown-hint message(s) in `inspect().scheduled()` (not pool slots). In the same window 50 other "
                f"3-step runs completed in {probe['others_s'] * 1000:.0f} ms"
                + (
                    ", all while those runs still slept."
                    if probe["others_during_sleep"]
                    else " (the sleepers woke meanwhile)."
                )
            )
        diagnosis = getattr(self, "diagnosis", None)
        if diagnosis:
            out.append(
                f"\nIn-process cost of one 3-step run, no Celery (`--diagnose`, {a.diagnose_runs} runs one at a "
                "time, mean per run; CPU = this process only):\n"
            )
            out.append(
                "| storage | start: storage calls | start: wall / CPU ms | activation: storage calls "
                "| activation: wall / CPU ms | activation: ms inside storage calls |"
            )
            out.append("| --- | ---: | ---: | --- | ---: | ---: |")
            for d in diagnosis:
                breakdown = ", ".join(f"{k} {v:g}" for k, v in d["calls"].items())
                out.append(
                    f"| {d['storage']} | {d['start_calls']:g} | {d['start_wall']:.2f} / {d['start_cpu']:.2f} "
                    f"| {d['act_calls']:g} ({breakdown}) | {d['act_wall']:.2f} / {d['act_cpu']:.2f} "
                    f"| {d['act_storage']:.2f} |"
                )
            if getattr(self, "ping_ms", None):
                out.append(f"\nRedis PING round trip from redis.asyncio here: {self.ping_ms:.3f} ms.")
        out.append("\nLoad average (1/5/15 min) before each phase:\n")
        out.append("| phase | load average |")
        out.append("| --- | --- |")
        out += [f"| {name} | {load} |" for name, load in self.loads]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


#: Throughput goals as a share of raw Celery's drained rate, by storage (the issue's targets).
THROUGHPUT_GOALS = {"redis": 0.75, "sqlite": 0.85}

_STORAGE_METHODS = (
    "create_run",
    "get_run",
    "update_run",
    "append_events",
    "get_events",
    "begin_activation",
    "post_message",
    "get_messages",
    "get_timer",
    "claim_due_timers",
    "acquire_lease",
    "renew_lease",
    "release_lease",
    "recover_expired_leases",
)


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "?")


def _redis_version(client: Any) -> str:
    try:
        return f"Redis {client.info('server')['redis_version']}"
    except Exception:  # noqa: BLE001
        return "Redis ?"


def _package_version() -> str:
    import pyworkflow

    where = Path(pyworkflow.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (not a git checkout)"
    return f"{where} at commit {commit}" + (" with uncommitted changes in pyworkflow/" if dirty else "")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--storage", choices=["redis", "sqlite"], default="redis")
    p.add_argument(
        "--broker",
        help="broker URL, e.g. amqp://guest:guest@127.0.0.1:5672/bench (default: a private redis-server)",
    )
    p.add_argument("--runs", type=int, default=3, help="repetitions of every figure (medians are printed)")
    p.add_argument("--raw-tasks", type=int, default=2000)
    p.add_argument("--pw-runs", type=int, default=1000)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--sleepers", type=int, default=1000)
    p.add_argument("--sleep", default="2s", help="what each sleeper passes to sleep()")
    p.add_argument("--sleeper-rate", type=float, default=0.0, help="start sleepers at this many per s (0: at once)")
    p.add_argument("--burst", type=int, default=2000, help="2d: new runs published while sleepers wait (0: skip 2d)")
    p.add_argument("--burst-sleep", default="8s", help="2d: what each sleeper passes to sleep()")
    p.add_argument("--burst-lead", type=float, default=1.0, help="2d: publish the burst this long before a wake-up")
    p.add_argument("--diagnose", action="store_true", help="also time activations in-process (storage calls, CPU)")
    p.add_argument("--diagnose-runs", type=int, default=300)
    p.add_argument("--tick", type=float, default=1.0, help="PYWORKFLOW_TICK_INTERVAL")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--probe-runs", type=int, default=100)
    p.add_argument("--skip-probe", action="store_true")
    p.add_argument("--only", choices=["raw", "pyworkflow"], help="run one side only")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds any one wait may take")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with worker/beat logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = parse(argv[1:])
    bench = Bench(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell that starts us in the background ignores it, and Python then
    # would not turn it into KeyboardInterrupt
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(bench.procs.stop_all)
    try:
        bench.start_broker()
        bench.configure()
        log(f"workdir {bench.workdir}, storage {bench.storage_url}, broker {bench.broker_url}")
        for rep in range(1, args.runs + 1):
            if args.only in (None, "raw"):
                bench.raw(rep)
            if args.only in (None, "pyworkflow"):
                bench.pyworkflow(rep)
        if args.diagnose:
            bench.diagnose()
        print(bench.report([Path(sys.executable).name, *argv]))
        return 0
    except BaseException:
        for path in bench.procs.logs():
            if path.stat().st_size:
                log(f"--- {path.name} (last lines) ---\n{tail(path)}")
        raise
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
