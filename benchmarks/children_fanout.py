"""Fan-out of 100 child workflows on Celery, against 100 raw Celery tasks in the same run.

    .venv/bin/python benchmarks/children_fanout.py                       # Redis and PostgreSQL storage, 10 rounds
    .venv/bin/python benchmarks/children_fanout.py --storage sqlite --rounds 5
    .venv/bin/python benchmarks/children_fanout.py --children 20 --tick 0.2

What runs where
===============
* Broker: a private ``redis-server`` on a free port (``--save "" --appendonly no``), db 0.
* Storage: Redis (127.0.0.1:6379/15 with a ``bench-fan-<random>`` prefix, its keys
  deleted at the end), PostgreSQL (``--postgres``, default
  ``postgresql://postgres@127.0.0.1:5432/test``, in a schema ``bench_fan_<random>``
  dropped at the end) or SQLite (a temp file); ``--storage`` picks (repeatable).
* Worker: one subprocess ``python -m celery -A pyworkflow.celery.app worker
  --pool=prefork -c 2 -Q pyworkflow.workflows,pyworkflow.steps --without-mingle
  --without-gossip`` per storage, which imports this module (``PYWORKFLOW_IMPORTS``): the
  workflows below and the raw task, a ``shared_task`` registered on PyWorkflow's own app.
  So both sides go through the same app, broker, queue (``pyworkflow.workflows``, with
  the priority of a wake-up, as the children's activations), worker and pool.
* Beat: a subprocess ticking every ``--tick`` s (``PYWORKFLOW_TICK_INTERVAL``, default
  1 s, as deployed): the tick is part of how runs move, so it runs during both rows.

Rows (per round, one after the other, nothing else of the benchmark running meanwhile)
======================================================================================
raw Celery: N tasks
    ``t0 = time.time()``; N ``apply_async()`` of a task whose body RPUSHes
    ``time.time()`` to a key on the storage Redis (no result backend); the benchmark
    BLPOPs N times. Time = the last body's time - t0: send → every side effect in.
PyWorkflow: N children
    ``t0 = time.time()``; ``start(parent, N)``, where ``parent`` runs ``await
    asyncio.gather(*[run_child(child, i) for i in range(N)])`` and each child runs one
    trivial inline step. ``children completed``: the last child's ``completed_at`` - t0;
    ``parent completed``: the parent's ``completed_at`` - t0 (what ``wait_for_result``
    sees, less its polling); ``client``: until ``wait_for_result(poll=0.002)`` returned.
    The parent's activations (``workflow.resumed`` events + 1) are counted too.

Each round's ratio is parent completed / raw time of the same round (paired, so load that
drifts between rounds cancels out); the table quotes medians and p90 over ``--rounds``
rounds, after ``--warmup`` rounds that are not counted. Every wait has a deadline;
subprocesses are killed by process group on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.harness must import
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import STORAGE_REDIS, CeleryBench, run_main  # noqa: E402

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MODULE = "benchmarks.children_fanout"
RAW_TASK = "bench.fanout.raw"
PARENT = "bench.fanout.parent"
CHILD = "bench.fanout.child"

# -- what the worker runs ------------------------------------------------------------------
# Defined only when imported as benchmarks.children_fanout (by the worker, and by the
# script itself, below): run as __main__, a second definition under the same name would clash.

if __name__ != "__main__":
    import asyncio

    from celery import shared_task

    from pyworkflow import run_child, step, workflow

    @step(name="bench.fanout.bump")
    async def bump(i: int) -> int:
        return i + 1

    @workflow(name=CHILD)
    async def child(i: int) -> int:
        return await bump(i)

    @workflow(name=PARENT)
    async def parent(n: int) -> int:
        results = await asyncio.gather(*[run_child(child, i) for i in range(n)])
        return sum(results)

    _raw_client: Any = None
    _raw_pid = -1
    _raw_lock = threading.Lock()

    @shared_task(name=RAW_TASK, ignore_result=True)
    def raw(key: str) -> None:
        """The raw task: the time its body ran, RPUSHed to ``key`` (no result backend)."""
        global _raw_client, _raw_pid
        if _raw_pid != os.getpid():
            with _raw_lock:
                import redis

                _raw_client, _raw_pid = redis.Redis.from_url(os.environ["BENCH_STAMP_URL"]), os.getpid()
        _raw_client.rpush(key, repr(time.time()))


# -- the benchmark ---------------------------------------------------------------------------


class Bench(CeleryBench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "fan")
        self.schema = f"bench_fan_{self.token}"
        self.broker: Any = None
        self.postgres_used = False

    # -- setup / teardown ------------------------------------------------------------

    def setup(self) -> None:
        import redis

        from benchmarks.celery_e2e import _pings, free_port, wait_until

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.procs.spawn("broker", [*argv, "--dir", str(self.workdir)], dict(os.environ))
        self.broker = redis.Redis(port=port)
        wait_until(lambda: _pings(self.broker), 10, "private redis-server up", 0.05)
        self.broker_url = f"redis://127.0.0.1:{port}/0"
        self.stamps = redis.Redis.from_url(STORAGE_REDIS)
        if not _pings(self.stamps):
            raise SystemExit(f"Redis {STORAGE_REDIS} (raw tasks' side effects, Redis storage) is not reachable")
        from pyworkflow.celery.settings import priority_for

        app = self.configure_workers(self.broker_url, MODULE)
        self.raw_task = app.tasks[RAW_TASK]
        self.wake_priority = priority_for(self.broker_url, "wake")

    def storage_url(self, kind: str) -> str:
        if kind != "postgres":
            return super().storage_url(kind)
        self.postgres_used = True
        joiner = "&" if "?" in self.args.postgres else "?"
        return f"{self.args.postgres}{joiner}schema={self.schema}"

    def remove_own(self) -> None:
        from benchmarks.celery_e2e import log

        if self.postgres_used:
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.args.postgres, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                log(f"dropped PostgreSQL schema {self.schema}")

    # -- the rows --------------------------------------------------------------------------

    def raw_round(self, key: str) -> dict[str, float]:
        n = self.args.children
        t0 = time.time()
        for _ in range(n):
            self.raw_task.apply_async(args=[key], queue="pyworkflow.workflows", priority=self.wake_priority)
        stamps = []
        deadline = time.monotonic() + self.args.deadline
        while len(stamps) < n:
            answer = self.stamps.blpop([key], timeout=1)
            if answer is not None:
                stamps.append(float(answer[1]))
            elif time.monotonic() > deadline:
                self.procs.check_alive()
                raise TimeoutError(f"raw tasks: {len(stamps)} of {n} side effects in {self.args.deadline:g} s")
        return {"raw": (max(stamps) - t0) * 1000, "raw client": (time.time() - t0) * 1000}

    def fanout_round(self) -> dict[str, float]:
        from pyworkflow import start, wait_for_result
        from pyworkflow.children import child_run_id

        n = self.args.children
        t0 = time.time()
        run_id = start(parent, n)
        try:
            result = wait_for_result(run_id, timeout=self.args.deadline, poll=0.002)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.stuck(run_id)}") from None
        client = (time.time() - t0) * 1000
        if result != sum(i + 1 for i in range(n)):
            raise RuntimeError(f"parent {run_id} returned {result!r}")
        done = self.run(self.storage.get_run(run_id))
        kids = [self.run(self.storage.get_run(child_run_id(run_id, call))) for call in range(1, n + 1)]
        if any(k is None or k.status != "completed" for k in kids):
            raise RuntimeError(f"parent {run_id}: not every child completed")
        events = self.run(self.storage.get_events(run_id))
        return {
            "children": (max(k.completed_at.timestamp() for k in kids) - t0) * 1000,
            "parent": (done.completed_at.timestamp() - t0) * 1000,
            "client": client,
            "activations": 1 + sum(e.type == "workflow.resumed" for e in events),
        }

    def stuck(self, run_id: str) -> str:
        """Where a parent that did not finish in time stands: its record, its log, its
        inbox and its children."""
        from collections import Counter

        from pyworkflow.children import child_run_id

        run = self.run(self.storage.get_run(run_id))
        events = self.run(self.storage.get_events(run_id))
        pending = self.run(self.storage.get_messages(run_id))
        kids = [self.run(self.storage.get_run(child_run_id(run_id, c))) for c in range(1, self.args.children + 1)]
        return (
            f"parent: status {run.status}, wake_at {run.wake_at}, updated_at {run.updated_at}\n"
            f"parent's log: {dict(Counter(str(e.type) for e in events))}; last: "
            f"{[(e.seq, str(e.type)) for e in events[-3:]]}\n"
            f"parent's pending messages: {len(pending)} {dict(Counter(m.kind for m in pending))}\n"
            f"children: {dict(Counter('missing' if k is None else str(k.status) for k in kids))}"
        )

    def rounds(self, kind: str) -> None:
        from benchmarks.celery_e2e import log

        a = self.args
        url = self.use_storage(kind)
        self.phase(f"{kind}: worker and beat start")
        worker = self.spawn("worker", f"w-{kind}", url)
        beat = self.spawn("beat", f"beat-{kind}", url)
        try:
            self.wait_ping()
            for r in range(a.warmup + a.rounds):
                counted = r >= a.warmup
                what = f"round {r - a.warmup + 1}" if counted else f"warm-up {r + 1}"
                self.phase(f"{kind}, {what}")
                figures = {**self.raw_round(f"{self.prefix}:raw:{kind}:{r}"), **self.fanout_round()}
                figures["ratio"] = figures["parent"] / figures["raw"]
                log(
                    f"  raw {figures['raw']:.0f} ms; children {figures['children']:.0f} ms, parent "
                    f"{figures['parent']:.0f} ms ({figures['ratio']:.1f}x), client {figures['client']:.0f} ms, "
                    f"{figures['activations']:.0f} parent activations"
                )
                if counted:
                    for name, value in figures.items():
                        self.results.setdefault((kind, name), []).append(value)
        finally:
            self.procs.stop(beat)
            self.procs.stop(worker)

    # -- the report --------------------------------------------------------------------------

    def report(self, argv: list[str]) -> str:
        import platform

        from benchmarks.celery_e2e import _cpu_model, _package_version, _redis_version, pct

        a = self.args
        n = a.children
        out = [
            f"## Fan-out of {n} children on Celery, against {n} raw Celery tasks",
            "",
            f"Command: `{' '.join(argv)}`",
            f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{_redis_version(self.broker)} (private broker); {_package_version()}",
            f"Worker: prefork -c {a.concurrency}, beat ticking every {a.tick:g} s; {a.rounds} rounds per storage "
            f"after {a.warmup} warm-up round(s); times from t0 (just before the first send / start()).",
            "",
        ]
        labels = {
            "raw": f"raw Celery: {n} tasks, last side effect",
            "raw client": f"raw Celery: {n} tasks, client got the last",
            "children": f"PyWorkflow: all {n} children completed",
            "parent": "PyWorkflow: parent completed (recorded)",
            "client": "PyWorkflow: parent completed (client, 2 ms poll)",
            "ratio": "parent completed / raw, paired per round",
            "activations": "parent's activations",
        }
        for kind in a.storage:
            if (kind, "raw") not in self.results:
                continue
            out.append(f"### storage: {kind}\n")
            out.append("| row | median | p90 | each round |")
            out.append("| --- | ---: | ---: | --- |")
            for row, label in labels.items():
                values = self.results[(kind, row)]
                unit = "×" if row == "ratio" else ("" if row == "activations" else " ms")
                fmt = "{:.1f}" if row == "ratio" else "{:.0f}"
                each = ", ".join(fmt.format(v) for v in values)
                med, p90 = statistics.median(values), pct(values, 90)
                out.append(f"| {label} | {fmt.format(med)}{unit} | {fmt.format(p90)}{unit} | {each} |")
            out.append("")
        out.append("Load average (1/5/15 min) before each phase:\n")
        out.append("| phase | load average |")
        out.append("| --- | --- |")
        out += [f"| {name} | {load} |" for name, load in self.loads]
        return "\n".join(out)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--storage", choices=["redis", "postgres", "sqlite"], action="append", help="default: redis, postgres"
    )
    p.add_argument("--postgres", default=DEFAULT_POSTGRES, help=f"PostgreSQL URL (default {DEFAULT_POSTGRES})")
    p.add_argument("--children", type=int, default=100, help="children per parent, and raw tasks per round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tick", type=float, default=1.0, help="PYWORKFLOW_TICK_INTERVAL of beat")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--deadline", type=float, default=120.0, help="seconds any one round may take")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with the worker/beat logs")
    args = p.parse_args(argv)
    args.storage = args.storage or ["redis", "postgres"]
    if min(args.children, args.rounds, args.concurrency) < 1 or args.warmup < 0:
        p.error("--children, --rounds and --concurrency must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks.celery_e2e import log

    argv = sys.argv if argv is None else argv
    args = parse(argv[1:])
    bench = Bench(args)

    def body() -> str:
        bench.setup()
        log(f"workdir {bench.workdir}, broker {bench.broker_url}, storage {', '.join(args.storage)}")
        for kind in args.storage:
            bench.rounds(kind)
        return bench.report([Path(sys.executable).name, *argv])

    return run_main(bench, body)


if __name__ == "__main__":
    # Run the module as benchmarks.children_fanout, so the workflows are defined once here
    # and under the same names as in the worker.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.children_fanout import main as _main

    sys.exit(_main())
