"""Replay checks over stored runs: how many runs per second can ``pyworkflow replay`` (the
deploy gate) check against the current code?

    .venv/bin/python benchmarks/replay_check.py [--runs 1000] [--repeats 3]

Fills a SQLite store with ``--runs`` completed runs (three steps and a sleep each, run
in-process on a virtual clock), then replays them all: in-process through
``pyworkflow.testing.replay`` (export + replay per run), and through the installed
``pyworkflow replay --limit N`` command (wall time, Python start-up included). Prints the
median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.replay_tasks import three_steps  # noqa: E402
from pyworkflow.storage.sqlite import SQLiteStorageBackend  # noqa: E402
from pyworkflow.testing import LocalRuntime, VirtualClock, export_run, replay  # noqa: E402


async def fill(path: Path, runs: int) -> list[str]:
    storage = SQLiteStorageBackend(str(path))
    rt = LocalRuntime(storage, clock=VirtualClock())
    ids = []
    for i in range(runs):
        run_id = await rt.start(three_steps, i)
        await rt.run_until_complete(run_id)
        ids.append(run_id)
    await storage.close()
    return ids


async def replay_all(path: Path, ids: list[str]) -> float:
    storage = SQLiteStorageBackend(str(path))
    started = time.perf_counter()
    for run_id in ids:
        await replay(three_steps, await export_run(run_id, storage=storage))
    elapsed = time.perf_counter() - started
    await storage.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pwreplay-"))
    db = work / "runs.db"
    ids = asyncio.run(fill(db, args.runs))
    cli = shutil.which("pyworkflow", path=str(Path(sys.executable).parent)) or "pyworkflow"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    in_process, command = [], []
    for _ in range(args.repeats):
        in_process.append(asyncio.run(replay_all(db, ids)))
        started = time.perf_counter()
        done = subprocess.run(
            [cli, "--storage", f"sqlite:///{db}", "--import", "benchmarks.replay_tasks", "replay", "--limit",
             str(args.runs)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        command.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"pyworkflow replay failed: {done.stdout}{done.stderr}")
    shutil.rmtree(work, ignore_errors=True)
    ip, cm = statistics.median(in_process), statistics.median(command)
    print(f"{'replay of ' + str(args.runs) + ' stored runs (3 steps, 1 sleep)':<48} {'seconds':>8} {'runs/s':>8}")
    print(f"{'in-process: export_run + testing.replay':<48} {ip:>8.2f} {args.runs / ip:>8.0f}")
    print(f"{'pyworkflow replay --limit N (whole command)':<48} {cm:>8.2f} {args.runs / cm:>8.0f}")


if __name__ == "__main__":
    main()
