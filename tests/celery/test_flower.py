"""Flower, started as its own process against the broker the worker uses, shows runs
under their workflow's name and dispatched steps under their step's name (the tasks'
shadow names); its HTTP API answers 401 unless a login is configured and sent or
``FLOWER_UNAUTHENTICATED_API`` is set (what DISTRIBUTED.md says)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import pytest

from pyworkflow import start, wait_for_result
from tests.celery.conftest import ROOT, Broker, Subprocess, free_port, wait_until
from tests.celery.flower_workflows import DISPATCHED_STEP, IMPORTS, WORKFLOW, process_order


class Flower:
    """A ``celery flower`` process on a free port of 127.0.0.1."""

    def __init__(self, proc: Subprocess, port: int) -> None:
        self.proc, self.url = proc, f"http://127.0.0.1:{port}"

    def get(self, path: str, login: str | None = None) -> tuple[int, Any]:
        """``(status, decoded JSON or the body's text)``; ``(0, reason)`` while nothing listens."""
        request = Request(self.url + path)
        if login is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            with urlopen(request, timeout=5) as response:
                body = response.read()
                if response.headers.get_content_type() == "application/json":
                    return response.status, json.loads(body)
                return response.status, body.decode(errors="replace")
        except HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode(errors="replace")
        except (URLError, ConnectionError, TimeoutError) as exc:
            return 0, str(exc)

    def wait_up(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            assert self.proc.proc.poll() is None, f"Flower exited; see {self.proc.log}:\n{_tail(self.proc.log)}"
            return self.get("/healthcheck")[0] == 200

        wait_until(up, timeout, f"Flower answering on {self.url}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


@pytest.fixture
def flower(own_broker: Broker, tmp_path: Path) -> Iterator[Callable[..., Flower]]:
    """Start Flower subprocesses on ``own_broker``: ``flower(FLOWER_X="...")``. No
    ``FLOWER_*`` variable of the calling environment reaches them, only those given."""
    started: list[Subprocess] = []

    def run(**flower_env: str) -> Flower:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        env.update(PYWORKFLOW_BROKER_URL=own_broker.url, PYTHONPATH=str(ROOT), **flower_env)
        port = free_port()
        args = ["flower", f"--port={port}", "--address=127.0.0.1", "--logging=warning"]
        proc = Subprocess(args, env, tmp_path / f"flower-{len(started)}.log")
        started.append(proc)
        return Flower(proc, port)

    yield run
    for proc in started:
        proc.stop()


def test_flower_shows_the_workflow_and_the_dispatched_step_by_name(
    crash_app: Any, spawn: Callable[..., Subprocess], flower: Callable[..., Flower]
) -> None:
    # No task_send_sent_event on the app that calls start(): Celery's task-sent event
    # names the task itself (the shadow name is only in the message's headers), and when
    # it reaches Flower after the worker's task-received event, it replaces the name.
    worker = spawn("worker", "-E", PYWORKFLOW_IMPORTS=IMPORTS)  # -E: task events from the first task on
    api = flower(FLOWER_UNAUTHENTICATED_API="true")
    api.wait_up()

    def worker_seen() -> bool:
        assert worker.proc.poll() is None, f"the worker exited; see {worker.log}:\n{_tail(worker.log)}"
        status, alive = api.get("/api/workers?status=1")
        assert status == 200, alive
        return any(alive.values())  # a heartbeat reached Flower: its event receiver is consuming

    wait_until(worker_seen, 60, "Flower receiving the worker's events")

    run_id = start(process_order, "ORD-7")
    assert wait_for_result(run_id, timeout=60) == "ORD-7:5kg"

    seen: dict[str, Any] = {}

    def ours() -> dict[str, dict[str, Any]]:
        status, tasks = api.get("/api/tasks")
        assert status == 200, tasks
        seen["all"] = {uuid: (t["name"], t["state"], t.get("args")) for uuid, t in tasks.items()}
        return {uuid: task for uuid, task in tasks.items() if run_id in (task.get("args") or "")}

    def finished(name: str, times: int) -> Callable[[], bool]:
        return lambda: sum(t["name"] == name and t["state"] == "SUCCESS" for t in ours().values()) >= times

    # the run's start and the wake-up its step's end sends, both under the workflow's name
    for name, times in ((WORKFLOW, 2), (DISPATCHED_STEP, 1)):
        try:
            wait_until(finished(name, times), 30, f"Flower showing {name} succeeded {times} time(s)")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; Flower's tasks: {seen.get('all')}; run {run_id}") from None

    tasks = ours()
    # every activation of the run under the workflow's name (its start, and the wake-up its
    # step's completion sends), the dispatched step under its own; never a bare activate
    assert {t["name"] for t in tasks.values()} == {WORKFLOW, DISPATCHED_STEP}, tasks
    assert sum(t["name"] == DISPATCHED_STEP for t in tasks.values()) == 1, tasks
    assert all(t["worker"].startswith("w0@") for t in tasks.values()), tasks

    # and Flower's filter by name finds the run by its workflow
    status, by_name = api.get(f"/api/tasks?taskname={WORKFLOW}")
    assert status == 200 and len(by_name) >= 2, by_name
    assert {t["args"] for t in by_name.values()} == {f"['{run_id}']"}, by_name


@pytest.mark.parametrize("own_broker", ["redis"], indirect=True)
def test_flower_api_answers_401_without_a_login_or_flower_unauthenticated_api(
    own_broker: Broker, flower: Callable[..., Flower]
) -> None:
    bare = flower()
    guarded = flower(FLOWER_BASIC_AUTH="ops:s3cret")
    bare.wait_up()
    guarded.wait_up()

    for path in ("/api/tasks", "/api/workers"):
        status, body = bare.get(path)
        assert status == 401 and "FLOWER_UNAUTHENTICATED_API" in body, (path, status, body)
        assert guarded.get(path)[0] == 401, path  # a login is configured, none sent
        assert guarded.get(path, login="ops:wrong")[0] == 401, path
    status, tasks = guarded.get("/api/tasks", login="ops:s3cret")
    assert status == 200 and isinstance(tasks, dict), (status, tasks)
