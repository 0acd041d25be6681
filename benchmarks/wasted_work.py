"""Wasted work under worker kills: how many activations run per workflow run, and how many
of them do nothing (``busy``, ``finished``, ``not_due``, ``missing``, ``lost``)?

    .venv/bin/python benchmarks/wasted_work.py [--runs 100] [--kills 20] [--storage sqlite|redis]

A worker (prefork, 2 processes) and a beat run on a private ``redis-server`` broker with
default settings. ``--runs`` runs of a workflow with three steps and two short sleeps
start at once; the worker's whole process group is SIGKILLed every 1-3 s (``--kills``
times) and restarted at once, as a supervisor would. When every run has completed, the
workers' logs are read for each activation's outcome (Celery logs a task's return value
at INFO), and the tick's and start guard's sends are counted from their log lines.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.crash_recovery import Fleet, free_port, storage_url, wait_until  # noqa: E402

OUTCOME = re.compile(r"Task pyworkflow\.activate\[[^\]]+\] succeeded in [0-9.e-]+s: '(\w+)'")
WOKE = re.compile(r"count=(\d+).*event='tick_woke_runs'|event='tick_woke_runs'.*count=(\d+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--storage", default="sqlite", choices=["sqlite", "redis"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    import shutil
    import subprocess

    workdir = Path(tempfile.mkdtemp(prefix="pwwaste-"))
    port = free_port()
    broker = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWORKFLOW_")}
    env.update(
        PYWORKFLOW_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        PYWORKFLOW_STORAGE_URL=storage_url(args.storage, workdir),
        PYWORKFLOW_IMPORTS="benchmarks.waste_tasks",
        PYTHONPATH=str(ROOT),
    )
    os.environ.update({k: env[k] for k in ("PYWORKFLOW_BROKER_URL", "PYWORKFLOW_STORAGE_URL")})
    import pyworkflow
    from benchmarks.waste_tasks import three_steps

    fleet = Fleet(workdir, env)
    started = time.monotonic()
    try:
        fleet.spawn("beat", "beat", "--loglevel=INFO", "-s", str(workdir / "beat-schedule"))
        worker = fleet.spawn(
            "w0", "worker", "-Q", "pyworkflow.workflows,pyworkflow.steps", "--pool=prefork", "-c", "2",
            "--loglevel=INFO", "-n", "w0@%h", "--without-mingle", "--without-gossip",
        )  # fmt: skip
        run_ids = [pyworkflow.start(three_steps, f"r{i}-{uuid.uuid4().hex[:4]}") for i in range(args.runs)]
        for kill in range(args.kills):
            time.sleep(rng.uniform(1.0, 3.0))
            fleet.kill(worker)
            worker = fleet.spawn(
                f"w{kill + 1}", "worker", "-Q", "pyworkflow.workflows,pyworkflow.steps", "--pool=prefork", "-c", "2",
                "--loglevel=INFO", "-n", f"w{kill + 1}@%h", "--without-mingle", "--without-gossip",
            )  # fmt: skip

        def all_done() -> bool:
            runs = [pyworkflow.get_run(r) for r in run_ids]
            return all(r is not None and r.status.is_terminal for r in runs)

        wait_until(all_done, 600, "every run to finish")
        elapsed = time.monotonic() - started
    finally:
        fleet.stop_all()
        broker.terminate()
        broker.wait(10)

    outcomes: collections.Counter[str] = collections.Counter()
    woken = 0
    for log in workdir.glob("w*.log"):
        text = log.read_text(errors="replace")
        outcomes.update(OUTCOME.findall(text))
        for a, b in WOKE.findall(text):
            woken += int(a or b)
    statuses = collections.Counter(str(pyworkflow.get_run(r).status) for r in run_ids)  # type: ignore[union-attr]
    total = sum(outcomes.values())
    useful = sum(outcomes[k] for k in ("completed", "failed", "suspended", "cancelled", "paused"))
    print(f"runs {args.runs} ({dict(statuses)}), kills {args.kills}, storage {args.storage}, {elapsed:.0f} s")
    print(f"{'outcome':<12} {'activations':>11} {'per run':>8}")
    for name in ("completed", "suspended", "failed", "busy", "finished", "not_due", "missing", "lost"):
        print(f"{name:<12} {outcomes[name]:>11} {outcomes[name] / args.runs:>8.2f}")
    print(f"{'all':<12} {total:>11} {total / args.runs:>8.2f}")
    print(f"{'no-ops':<12} {total - useful:>11} {(total - useful) / args.runs:>8.2f}")
    print(f"tick sends (claimed timers + start guard): {woken}")
    print("(outcomes of activations a killed worker was running are not logged)")


if __name__ == "__main__":
    main()
