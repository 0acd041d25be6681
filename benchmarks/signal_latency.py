"""Signal → workflow resumed latency on Celery, against a raw Celery task in the same run.

    .venv/bin/python benchmarks/signal_latency.py                          # 200 runs, SQLite and Redis, 3 repeats
    .venv/bin/python benchmarks/signal_latency.py --storage sqlite --runs 100 --repeats 1
    .venv/bin/python benchmarks/signal_latency.py --broker redis://127.0.0.1:6379/12

What runs where
===============
* Broker: Redis on 127.0.0.1:6379, db 13 by default (``--broker``). The db must be empty
  when the benchmark starts (it refuses otherwise: other people's queues would mix with
  ours); everything in it is deleted at the end.
* Storage: SQLite (a temp file) and Redis (127.0.0.1:6379/15 with a ``bench-sig-<random>``
  prefix, its keys deleted at the end); ``--storage`` picks one.
* Worker: a subprocess ``python -m celery -A pyworkflow.celery.app worker --pool=prefork
  -c 2 -Q pyworkflow.workflows,pyworkflow.steps --without-mingle --without-gossip``, which
  imports this module (``PYWORKFLOW_IMPORTS``): the workflow below and the raw task, a
  ``shared_task`` registered on PyWorkflow's own app. So the raw task and the activations
  go through the same app, broker, queue (``pyworkflow.workflows``, with the priority of a
  wake-up), worker and pool; only the task body differs.
* Beat: a subprocess, only while the tick-only row is measured (``PYWORKFLOW_TICK_INTERVAL``
  ``--tick``, 1 s); no beat runs for the other rows.

Rows (each measured alone: nothing else of the benchmark runs meanwhile; ``--runs`` samples)
============================================================================================
raw Celery task
    ``t0 = time.time()``; ``apply_async()`` of a task whose body first reads
    ``time.time()`` and RPUSHes it to the storage Redis; the benchmark BLPOPs it.
    Latency = body time - t0: send → task body running.
signal → resumed (fast path)
    ``--runs`` runs of ``wait_for_signal("go")`` then ``now()`` are started and left
    suspended (no wake time: they wait for a message only). For each in turn: ``t0 =
    time.time()``; ``send_signal(run_id, "go")`` from this process, which has the Celery
    app configured, so the signal is recorded in the run's inbox and a direct activation
    message is sent. Latency = the ``now()`` value recorded in the log right after the
    wait (``value.recorded``) - t0: send → workflow code running again. The next signal
    is sent once the run completed.
signal → resumed (tick only)
    The same, sent with the fast path off (no Celery app and no ``PYWORKFLOW_BROKER_URL``
    in the sending code, as from a process without Celery): only beat's tick, every
    ``--tick`` s, finds the run due. Once beat ticks (a first signal went through),
    ``--tick-runs`` signals are sent at random times spread over ``--tick-runs × --tick /
    4`` seconds (independent of the tick's phase); expect p50 ≈ half a tick.

Each repetition (``--repeats``) restarts the worker; the table quotes the medians of the
repetitions' p50 and p99, and the median over the repetitions of each p50 divided by the
raw task's p50 of the same repetition (paired, so load that drifts between repetitions
cancels out); the goal for the fast path is ≤ 3×. Every wait has a deadline;
subprocesses are killed by process group on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.harness must import
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import STORAGE_REDIS, CeleryBench, delete_keys, run_main  # noqa: E402

DEFAULT_BROKER = "redis://127.0.0.1:6379/13"
MODULE = "benchmarks.signal_latency"
STAMP_TASK = "bench.signal.stamp"
WORKFLOW = "bench.signal.wait_go"

# -- what the worker runs ------------------------------------------------------------------
# Defined only when imported as benchmarks.signal_latency (by the worker, and by the script
# itself, below): run as __main__, a second definition under the same name would clash.

if __name__ != "__main__":
    from celery import shared_task

    from pyworkflow import now, wait_for_signal, workflow

    @workflow(name=WORKFLOW)
    async def wait_go() -> str:
        await wait_for_signal("go")
        return now().isoformat()  # recorded in the log the moment the code runs again

    _stamp_client: Any = None
    _stamp_pid = -1
    _stamp_lock = threading.Lock()

    @shared_task(name=STAMP_TASK, ignore_result=True)
    def stamp(key: str) -> None:
        """The raw task: the time its body starts, RPUSHed to ``key`` (no result backend)."""
        started = time.time()
        global _stamp_client, _stamp_pid
        if _stamp_pid != os.getpid():
            with _stamp_lock:
                import redis

                _stamp_client, _stamp_pid = redis.Redis.from_url(os.environ["BENCH_STAMP_URL"]), os.getpid()
        _stamp_client.rpush(key, repr(started))


# -- the benchmark ---------------------------------------------------------------------------


class Bench(CeleryBench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "sig")
        self.broker: Any = None

    # -- setup / teardown ------------------------------------------------------------

    def setup(self) -> None:
        import redis

        from benchmarks.celery_e2e import _pings

        self.broker = redis.Redis.from_url(self.args.broker)
        if not _pings(self.broker):
            raise SystemExit(f"broker {self.args.broker} is not reachable")
        if self.broker.dbsize():
            self.broker = None  # not ours: leave it alone at the end
            raise SystemExit(
                f"the broker db {self.args.broker} is not empty: another user's queues would mix with ours; "
                "pass an empty one with --broker redis://127.0.0.1:6379/<db>"
            )
        self.stamps = redis.Redis.from_url(STORAGE_REDIS)
        if not _pings(self.stamps):
            raise SystemExit(f"storage Redis {STORAGE_REDIS} is not reachable")
        from pyworkflow.celery.settings import priority_for

        app = self.configure_workers(self.args.broker, MODULE)
        self.stamp_task = app.tasks[STAMP_TASK]
        self.wake_priority = priority_for(self.args.broker, "wake")

    def remove_own(self) -> None:
        from benchmarks.celery_e2e import log

        if self.broker is not None:
            with contextlib.suppress(Exception):
                log(f"deleted {delete_keys(self.broker)} keys in the broker db {self.args.broker}")

    # -- the rows --------------------------------------------------------------------

    def record(self, storage: str, row: str, latencies: list[float]) -> None:
        from benchmarks.celery_e2e import log, pct

        p50, p99 = pct(latencies, 50), pct(latencies, 99)
        self.results.setdefault((storage, f"{row} p50"), []).append(p50)
        self.results.setdefault((storage, f"{row} p99"), []).append(p99)
        log(f"  {row}: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(latencies)} samples)")

    # -- the rows --------------------------------------------------------------------------

    def raw_once(self, key: str) -> float:
        t0 = time.time()
        self.stamp_task.apply_async(args=[key], queue="pyworkflow.workflows", priority=self.wake_priority)
        answer = self.stamps.blpop([key], timeout=30)
        if answer is None:
            self.procs.check_alive()
            raise TimeoutError("raw task: no stamp within 30 s")
        return (float(answer[1]) - t0) * 1000

    def start_waiting(self, n: int) -> list[str]:
        """``n`` runs of the workflow, each suspended on its signal wait."""
        from benchmarks.celery_e2e import wait_until
        from pyworkflow import RunStatus, start

        ids = [start(wait_go) for _ in range(n)]
        for run_id in ids:
            run = wait_until(
                lambda run_id=run_id: (lambda r: r if r is not None and r.status != RunStatus.PENDING else None)(
                    self.run(self.storage.get_run(run_id))
                ),
                60,
                f"run {run_id} suspended",
                0.005,
            )
            if run.status != RunStatus.SUSPENDED or run.wake_at is not None:
                raise RuntimeError(f"run {run_id} is {run.status} (wake_at {run.wake_at}), not waiting for a signal")
        return ids

    def resumed_at(self, run_id: str) -> float:
        """When the workflow code ran again after its wait: the ``now()`` in the log."""
        events = self.run(self.storage.get_events(run_id))
        values = [e.data["value"] for e in events if e.type == "value.recorded" and e.data.get("kind") == "now"]
        if len(values) != 1:
            raise RuntimeError(f"run {run_id}: expected one now() in the log, got {values}")
        return datetime.fromisoformat(values[0]).timestamp()

    def signal_fast(self, ids: list[str]) -> list[float]:
        from pyworkflow import send_signal, wait_for_result

        latencies = []
        for run_id in ids:
            t0 = time.time()
            send_signal(run_id, "go")
            result = wait_for_result(run_id, timeout=30, poll=0.005)
            at = self.resumed_at(run_id)
            assert datetime.fromisoformat(result).timestamp() == at
            latencies.append((at - t0) * 1000)
        return latencies

    def signal_tick_only(self, ids: list[str], spread: float | None = None) -> list[float]:
        from benchmarks.celery_e2e import wait_until
        from pyworkflow import RunStatus, send_signal

        spread = len(ids) * self.args.tick / 4 if spread is None else spread
        rng = random.Random(4711)
        offsets = sorted(rng.uniform(0, spread) for _ in ids)
        sent: dict[str, float] = {}
        with fast_path_off():
            begin = time.monotonic()
            for run_id, offset in zip(ids, offsets, strict=True):
                pause = begin + offset - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # the schedule of sends, not a synchronisation
                sent[run_id] = time.time()
                send_signal(run_id, "go")

        def all_done() -> bool:
            self.procs.check_alive()
            runs = [self.run(self.storage.get_run(run_id)) for run_id in ids]
            if any(r.status == RunStatus.FAILED for r in runs):
                raise RuntimeError("a run failed")
            return all(r.status == RunStatus.COMPLETED for r in runs)

        wait_until(all_done, 10 * self.args.tick + 60, "tick-only runs completed", 0.05)
        return [(self.resumed_at(run_id) - sent[run_id]) * 1000 for run_id in ids]

    def repetition(self, rep: int, kind: str) -> None:
        a = self.args
        url = self.use_storage(kind)
        self.phase(f"{kind}, repetition {rep}: worker start")
        worker = self.spawn("worker", f"w-{kind}-{rep}", url)
        beat = None
        try:
            self.wait_ping()
            # warm up both paths (connections, imports, the pool's processes)
            key = f"{self.prefix}:raw:{kind}:{rep}"
            for _ in range(a.warmup):
                self.raw_once(key)
            self.signal_fast(self.start_waiting(a.warmup))

            self.phase(f"{kind}, repetition {rep}: raw Celery task")
            self.record(kind, "raw", [self.raw_once(key) for _ in range(a.runs)])

            ids = self.start_waiting(a.runs)
            self.phase(f"{kind}, repetition {rep}: signal → resumed, fast path")
            self.record(kind, "fast", self.signal_fast(ids))

            if a.tick_runs:
                ids = self.start_waiting(a.tick_runs)
                beat = self.spawn("beat", f"beat-{kind}-{rep}", url)
                self.signal_tick_only(self.start_waiting(1), spread=0)  # until beat ticks
                self.phase(f"{kind}, repetition {rep}: signal → resumed, tick only")
                self.record(kind, "tick", self.signal_tick_only(ids))
        finally:
            if beat is not None:
                self.procs.stop(beat)
            self.procs.stop(worker)

    # -- the report --------------------------------------------------------------------------

    def report(self, argv: list[str]) -> str:
        import platform

        from benchmarks.celery_e2e import _cpu_model, _package_version, _redis_version

        a = self.args
        out = [
            "## Signal → resumed latency on Celery",
            "",
            f"Command: `{' '.join(argv)}`",
            f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{_redis_version(self.broker)} (broker {a.broker}); {_package_version()}",
            f"Worker: prefork -c {a.concurrency}; {a.runs} samples per row ({a.tick_runs} tick-only, tick "
            f"{a.tick:g} s) per repetition; medians of {a.repeats} repetition(s), each repetition's value after.",
            "",
        ]
        labels = {
            "raw": "raw Celery task: apply_async → body running",
            "fast": "signal → resumed (fast path)",
            "tick": f"signal → resumed (tick only, tick {a.tick:g} s)",
        }
        for kind in a.storage:
            med = {row: statistics.median(v) for (k, row), v in self.results.items() if k == kind}
            if "raw p50" not in med:
                continue
            raw_each = self.results[(kind, "raw p50")]
            out.append(f"### storage: {kind}\n")
            out.append("| row | p50 ms | p99 ms | p50 / raw p50 | each repetition: p50 / p99 ms |")
            out.append("| --- | ---: | ---: | ---: | --- |")
            for row, label in labels.items():
                if f"{row} p50" not in med:
                    continue
                each = ", ".join(
                    f"{p50:.2f} / {p99:.2f}"
                    for p50, p99 in zip(
                        self.results[(kind, f"{row} p50")], self.results[(kind, f"{row} p99")], strict=True
                    )
                )
                ratio = statistics.median(
                    p / r for p, r in zip(self.results[(kind, f"{row} p50")], raw_each, strict=True)
                )
                goal = ""
                if row == "fast":
                    goal = " (goal ≤ 3×: " + ("met" if ratio <= 3 else "NOT met") + ")"
                out.append(
                    f"| {label} | {med[f'{row} p50']:.2f} | {med[f'{row} p99']:.2f} | {ratio:.2f}×{goal} | {each} |"
                )
            out.append("")
        out.append("Load average (1/5/15 min) before each phase:\n")
        out.append("| phase | load average |")
        out.append("| --- | --- |")
        out += [f"| {name} | {load} |" for name, load in self.loads]
        return "\n".join(out)


@contextlib.contextmanager
def fast_path_off() -> Iterator[None]:
    """``send_signal`` here as from a process with no Celery app: no activation message,
    only the inbox (the tick finds the run due)."""
    import pyworkflow.celery.factory as factory

    installed, broker = factory._installed, os.environ.pop("PYWORKFLOW_BROKER_URL", None)
    factory._installed = None
    try:
        yield
    finally:
        factory._installed = installed
        if broker is not None:
            os.environ["PYWORKFLOW_BROKER_URL"] = broker


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--broker", default=DEFAULT_BROKER, help=f"an empty Redis db (default {DEFAULT_BROKER})")
    p.add_argument("--storage", choices=["sqlite", "redis"], action="append", help="default: both")
    p.add_argument("--runs", type=int, default=200, help="samples per row and repetition")
    p.add_argument("--tick-runs", type=int, default=40, help="samples of the tick-only row (0: skip it)")
    p.add_argument("--tick", type=float, default=1.0, help="PYWORKFLOW_TICK_INTERVAL for the tick-only row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the worker/beat logs")
    args = p.parse_args(argv)
    args.storage = args.storage or ["sqlite", "redis"]
    if min(args.runs, args.repeats, args.concurrency) < 1 or args.tick_runs < 0 or args.warmup < 1:
        p.error("--runs, --repeats, --concurrency and --warmup must be at least 1, --tick-runs at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks.celery_e2e import log

    argv = sys.argv if argv is None else argv
    args = parse(argv[1:])
    bench = Bench(args)

    def body() -> str:
        bench.setup()
        log(f"workdir {bench.workdir}, broker {args.broker}, storage {', '.join(args.storage)}")
        for rep in range(1, args.repeats + 1):
            for kind in args.storage:
                bench.repetition(rep, kind)
        return bench.report([Path(sys.executable).name, *argv])

    return run_main(bench, body)


if __name__ == "__main__":
    # Run the module as benchmarks.signal_latency, so the workflow is defined once here and
    # under the same name as in the worker.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.signal_latency import main as _main

    sys.exit(_main())
