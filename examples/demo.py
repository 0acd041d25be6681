"""``make demo``: the onboarding workflow on a real Celery worker, with no server.

Storage is the embedded default (SQLite, ``./pyworkflow.db``); the broker is kombu's
filesystem transport under ``./.pyworkflow/broker``. A worker subprocess runs the
activations and an embedded beat (``-B``) runs the tick that wakes the sleeping run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PYWORKFLOW_BROKER_URL", "filesystem://.pyworkflow/broker")
os.environ.setdefault("PYWORKFLOW_IMPORTS", "examples.onboarding")
os.environ.setdefault("PYWORKFLOW_TICK_INTERVAL", "0.5")
os.environ.setdefault("PYWORKFLOW_COUNTDOWN_HINT", "0")  # show the tick alone waking the run
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(ROOT))

from examples.onboarding import onboard_user  # noqa: E402
from pyworkflow import get_run, start, wait_for_result  # noqa: E402
from pyworkflow.config import get_storage  # noqa: E402
from pyworkflow.loop import PROCESS_LOOP  # noqa: E402


def main() -> None:
    # the worker runs where we run, so relative storage and broker paths mean the same files
    here = Path.cwd() / ".pyworkflow"
    here.mkdir(exist_ok=True)
    log = open(here / "demo-worker.log", "w")  # noqa: SIM115 - lives as long as the worker
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pyworkflow.celery.app",
            "worker",
            "-B",
            "-s",
            str(here / "beat-schedule"),
            "--pool=solo",
            "--loglevel=INFO",
            "-Q",
            "pyworkflow.workflows,pyworkflow.steps",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        print(
            f"worker started (pid {worker.pid}, log {log.name}); "
            f"storage {get_storage().url}, broker {os.environ['PYWORKFLOW_BROKER_URL']}"
        )
        run_id = start(onboard_user, "user-42", wait="3s")
        print(f"started run {run_id}")
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            run = get_run(run_id)
            if run is not None and run.status != seen:
                seen = run.status
                extra = f" until {run.wake_at:%H:%M:%S}" if run.status == "suspended" and run.wake_at else ""
                print(f"  {time.strftime('%H:%M:%S')} status: {run.status}{extra}")
                if run.status.is_terminal:
                    break
            time.sleep(0.1)
        result = wait_for_result(run_id, timeout=5)
        print(f"result: {result}")
        print("event timeline:")
        for event in PROCESS_LOOP.run(get_storage().get_events(run_id)):
            detail = event.data.get("step") or event.data.get("wake_at") or event.data.get("message") or ""
            print(f"  {event.seq:>2}  {event.timestamp:%H:%M:%S.%f}  {event.type:<20} {detail}")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()


if __name__ == "__main__":
    main()
