"""The dashboard's server time on big stores. A script, not a test: it prints Markdown.

    .venv/bin/python benchmarks/dashboard.py                          # SQLite and PostgreSQL
    .venv/bin/python benchmarks/dashboard.py --storage sqlite --runs 5000 --events 2000   # quick

Goals: a run's page of a 10,000-event run in at most 500 ms, the runs list on a store of
100,000 runs in at most 300 ms.

**The stores.** One run of ``--events`` events, written through ``append_events`` in
batches of 500 as an activation would write them: steps started and completed, every
10th step failing once and retried after a backoff, a sleep every 50 steps, a signal
wait and its signal every 100, published state every 25, and the run's end; timestamps
spread over two hours. Then ``--runs`` runs filled as ``benchmarks/cli_list.py`` fills
them (five workflows, statuses 80 % completed …, created over 30 days).

**What is timed**, median of ``--repeat`` (5) after one untimed request: the whole ASGI
request (routing, storage reads, the timeline, Jinja2, the response body) through httpx's
ASGI transport on a warm backend: no network, no browser. For the run page the parts
are timed alone too: ``get_events`` (decoding the log) and the timeline. A first view reads
the whole log; a view again (or the polled part of a run that moves) reads only the events
new since, from the dashboard's cache of long logs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cli_list  # noqa: E402
import httpx  # noqa: E402

from pyworkflow.clock import VirtualClock, utcnow  # noqa: E402
from pyworkflow.dashboard import create_app  # noqa: E402
from pyworkflow.dashboard.timeline import build  # noqa: E402
from pyworkflow.engine import create_run  # noqa: E402
from pyworkflow.events import Event, EventType, new_event  # noqa: E402
from pyworkflow.registry import get_workflow  # noqa: E402
from pyworkflow.storage.base import RunStatus, StorageBackend  # noqa: E402

RUN_GOAL_MS = 500.0
LIST_GOAL_MS = 300.0


def big_log(count: int, start: Any) -> list[tuple[str, dict[str, Any]]]:
    """``count`` events (type, data) after ``workflow.started``, ending the run."""
    out: list[tuple[str, dict[str, Any]]] = []
    call = 0
    state = 0
    while len(out) < count - 1:
        call += 1
        step = f"bench.step.{call % 7}"
        args = {"args": [call], "kwargs": {}}
        if call % 10 == 0:
            out.append((EventType.STEP_STARTED, {"call_id": call, "step": step, "attempt": 1, "args": args}))
            error = {"type": "builtins.TimeoutError", "message": "upstream timed out", "traceback": "Traceback ..."}
            out.append(
                (
                    EventType.STEP_RETRYING,
                    {"call_id": call, "step": step, "attempt": 1, "error": error, "resume_at": None},
                )
            )
            out.append((EventType.STEP_STARTED, {"call_id": call, "step": step, "attempt": 2, "args": args}))
            out.append((EventType.STEP_COMPLETED, {"call_id": call, "step": step, "attempt": 2, "result": call}))
        else:
            out.append((EventType.STEP_STARTED, {"call_id": call, "step": step, "attempt": 1, "args": args}))
            out.append((EventType.STEP_COMPLETED, {"call_id": call, "step": step, "attempt": 1, "result": call}))
        if call % 25 == 0:
            state += 1
            out.append((EventType.STATE_SET, {"index": state, "key": "progress", "value": call}))
        if call % 50 == 0:
            call += 1
            out.append((EventType.SLEEP_CREATED, {"call_id": call, "wake_at": None}))
            out.append((EventType.WORKFLOW_SUSPENDED, {"wake_at": None, "waiting_on": [call]}))
            out.append((EventType.WORKFLOW_RESUMED, {"reason": "wake_time_reached"}))
            out.append((EventType.SLEEP_COMPLETED, {"call_id": call}))
        if call % 100 == 0:
            call += 1
            out.append((EventType.SIGNAL_WAITING, {"call_id": call, "name": "tick", "timeout_at": None}))
            out.append((EventType.SIGNAL_RECEIVED, {"message": call, "name": "tick", "payload": call}))
    out = out[: count - 1]
    out.append((EventType.WORKFLOW_COMPLETED, {"result": {"calls": call}}))
    return out


async def make_big_run(storage: StorageBackend, count: int) -> str:
    start = utcnow() - timedelta(hours=2)
    definition = get_workflow("bench.cli.order")
    run, _ = await create_run(storage, definition, (1,), {}, clock=VirtualClock(start))
    spacing = timedelta(hours=2) / count
    body = big_log(count, start)
    events: list[Event] = []
    for i, (kind, data) in enumerate(body):
        at = start + spacing * (i + 1)
        if kind == EventType.STEP_RETRYING:
            data = {**data, "resume_at": (at + spacing * 2).isoformat()}
        elif kind == EventType.SLEEP_CREATED or kind == EventType.WORKFLOW_SUSPENDED:
            data = {**data, "wake_at": (at + spacing * 2).isoformat()}
        events.append(new_event(i + 2, kind.value, at, data))
    for first in range(0, len(events), 500):
        batch = events[first : first + 500]
        last = first + 500 >= len(events)
        changes: dict[str, Any] = (
            {"status": RunStatus.COMPLETED, "result": {"calls": 1}, "completed_at": batch[-1].timestamp}
            if last
            else {"status": RunStatus.RUNNING}
        )
        await storage.append_events(run.run_id, batch, run_changes=changes)
    return run.run_id


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    result = await fn()  # untimed: caches warm, statements prepared
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = await fn()
        samples.append(time.perf_counter() - started)
    return median_ms(samples), result


def ok(ms: float, goal: float) -> str:
    return "yes" if ms <= goal else "NO"


async def measure(target: cli_list.Target, args: argparse.Namespace) -> list[str]:
    lines = [f"### {target.name}\n"]
    storage = target.backend()
    try:
        started = time.perf_counter()
        run_id = await make_big_run(storage, args.events)
        lines.append(f"A run of {args.events:,} events written in {time.perf_counter() - started:.1f} s.")
        took = await cli_list.populate(storage, args.runs, target.concurrency)
        lines.append(f"{args.runs:,} more runs filled in {took:.1f} s; load average {cli_list.load()}.\n")
        target.prepare()
        app = create_app(storage=storage)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:

            async def get(url: str, **params: Any) -> httpx.Response:
                response = await http.get(url, params=params)
                assert response.status_code == 200, (url, response.status_code, response.text[:300])
                return response

            lines.append(f"| run page, {args.events:,}-event run | median ms | ≤ {RUN_GOAL_MS:.0f} ms |")
            lines.append("|---|---:|:---:|")
            dash = app.state.dashboard

            async def first_view(url: str) -> httpx.Response:
                dash.forget_events()  # the log read from storage, as on a first view
                return await get(url)

            page_ms, page = await timed(lambda: first_view(f"/runs/{run_id}"), args.repeat)
            again_ms, _ = await timed(lambda: get(f"/runs/{run_id}"), args.repeat)
            events_ms, events = await timed(lambda: storage.get_events(run_id), args.repeat)
            build_ms, _ = await timed(lambda: asyncio.sleep(0, build(events, now=utcnow())), args.repeat)
            live_ms, _ = await timed(lambda: get(f"/runs/{run_id}/live"), args.repeat)
            poll_ms, _ = await timed(lambda: get(f"/runs/{run_id}/poll", after=args.events), args.repeat)
            log_ms, _ = await timed(lambda: get(f"/runs/{run_id}/events"), args.repeat)
            lines += [
                f"| `GET /runs/{{id}}` (whole request, {len(page.content) // 1024} KiB of HTML) | {page_ms:.1f} "
                f"| {ok(page_ms, RUN_GOAL_MS)} |",
                f"| … of which `get_events` ({len(events):,} events decoded) | {events_ms:.1f} | |",
                f"| … of which the timeline (`timeline.build`) | {build_ms:.1f} | |",
                f"| `GET /runs/{{id}}` again (the log cached: only new events read) | {again_ms:.1f} "
                f"| {ok(again_ms, RUN_GOAL_MS)} |",
                f"| `GET /runs/{{id}}/live` (the polled part, log cached) | {live_ms:.1f} "
                f"| {ok(live_ms, RUN_GOAL_MS)} |",
                f"| `GET /runs/{{id}}/poll` (nothing new) | {poll_ms:.1f} | |",
                f"| `GET /runs/{{id}}/events` (first 500 of the log) | {log_ms:.1f} | |",
                "",
                f"| runs list on {args.runs:,} runs, 50 per page | runs | median ms | ≤ {LIST_GOAL_MS:.0f} ms |",
                "|---|---:|---:|:---:|",
            ]
            deep = (await storage.list_runs(limit=min(50_000, args.runs // 2))).next_cursor
            shapes: list[tuple[str, dict[str, Any]]] = [
                ("`GET /` (no filter)", {}),
                ("`?status=failed`", {"status": "failed"}),
                ("`?workflow=bench.cli.rare`", {"workflow": "bench.cli.rare"}),
                ("`?status=failed&workflow=bench.cli.report`", {"status": "failed", "workflow": "bench.cli.report"}),
                (
                    "`?status=failed&workflow=bench.cli.audit` (none)",
                    {"status": "failed", "workflow": "bench.cli.audit"},
                ),
                ("`?since=1d`", {"since": "1d"}),
            ]
            if deep:
                shapes.append((f"`?cursor=` ({min(50_000, args.runs // 2):,} runs deep)", {"cursor": deep}))
            for label, params in shapes:
                ms, response = await timed(lambda params=params: get("/", **params), args.repeat)  # type: ignore[misc]
                found = response.text.count("data-run=")
                lines.append(f"| {label} | {found} | {ms:.1f} | {ok(ms, LIST_GOAL_MS)} |")
            counts_samples = []
            for _ in range(3):
                app.state.dashboard._counts = None  # count again, not from the 60 s cache
                started = time.perf_counter()
                counts = (await get("/api/counts")).json()
                counts_samples.append(time.perf_counter() - started)
            lines.append(
                f"| `GET /api/counts` (every run counted, loaded after the page; cached 60 s) | {counts['total']:,} "
                f"| {median_ms(counts_samples):.0f} | (not a goal) |"
            )
    finally:
        await storage.close()
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--storage", default="sqlite,postgres", help="sqlite, postgres, or both (comma-separated)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="PostgreSQL writer tasks while filling")
    parser.add_argument("--pg-url", default=cli_list.DEFAULT_PG_URL)
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    print(f"# The dashboard: a {args.events:,}-event run and {args.runs:,} runs\n")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {cli_list.load()} at the start.\n")
    for name in args.storage.split(","):
        target: cli_list.Target = (
            cli_list.SQLiteTarget()
            if name.strip() == "sqlite"
            else cli_list.PostgresTarget(args.pg_url, args.concurrency)
        )
        try:
            print("\n".join(asyncio.run(measure(target, args))), flush=True)
        finally:
            print(target.cleanup(args.keep) + "\n")


if __name__ == "__main__":
    main()
