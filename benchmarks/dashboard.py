"""The dashboard's server time on big stores. A script, not a test: it prints Markdown.

    .venv/bin/python benchmarks/dashboard.py                          # SQLite and PostgreSQL
    .venv/bin/python benchmarks/dashboard.py --storage sqlite --runs 5000 --events 2000   # quick
    .venv/bin/python benchmarks/dashboard.py --storage sqlite,postgres,redis --counts-only

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

**Counts** (``/api/counts``, runs by status and by workflow): ``count_runs`` against the
baseline of the dashboard's count before it, every run paged through ``list_runs`` 1,000
at a time (:func:`paged_counts`, kept here), median of ``--repeat`` after one untimed
call, on the same store in the same process; the two must agree or the script stops.
``--counts-only`` skips the big run and the pages. ``redis`` in ``--storage`` adds a Redis
store (``--redis-url``, a unique key prefix, its keys deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections import Counter
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
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


class RedisTarget(cli_list.Target):
    """A Redis store under a key prefix of its own (the database may hold other keys:
    ``count_runs`` walks them all with SCAN, so their number is printed)."""

    name = "Redis"

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.prefix = f"bench_dash_{secrets.token_hex(4)}"
        self.url = f"{base_url}?prefix={self.prefix}"
        self.concurrency = concurrency

    def backend(self) -> StorageBackend:
        from pyworkflow.storage.redis import RedisStorageBackend

        return RedisStorageBackend(self.base_url, prefix=self.prefix)

    def keys(self) -> str:
        import redis

        with redis.Redis.from_url(self.base_url) as client:
            return f"{client.dbsize():,} keys in the database"

    def cleanup(self, keep: bool) -> str:
        if keep:
            return f"kept prefix {self.prefix} ({self.url})"
        import redis

        deleted = 0
        with redis.Redis.from_url(self.base_url) as client:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}:*", count=10_000):
                batch.append(key)
                if len(batch) == 10_000:
                    deleted += client.delete(*batch)
                    batch = []
            if batch:
                deleted += client.delete(*batch)
        return f"deleted the {deleted:,} keys of prefix {self.prefix}"


async def paged_counts(storage: StorageBackend) -> tuple[dict[str, int], dict[str, int], int]:
    """The baseline: how the dashboard counted before ``count_runs``, every run paged
    through ``list_runs`` (1,000 a page, the loop given to other requests between pages)."""
    by_status: Counter[str] = Counter()
    by_workflow: Counter[str] = Counter()
    cursor, total = None, 0
    while True:
        page = await storage.list_runs(limit=1000, cursor=cursor)
        for run in page.runs:
            by_status[run.status.value] += 1
            by_workflow[run.workflow_name] += 1
        total += len(page.runs)
        cursor = page.next_cursor
        await asyncio.sleep(0)
        if cursor is None:
            return {s.value: by_status[s.value] for s in RunStatus}, dict(by_workflow), total


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


async def measure_counts(storage: StorageBackend, app: Any, args: argparse.Namespace) -> list[str]:
    """The counts table: the paging baseline, ``count_runs`` and ``GET /api/counts``."""
    paged_ms, (by_status, by_workflow, paged_total) = await timed(lambda: paged_counts(storage), args.repeat)
    count_ms, counts = await timed(storage.count_runs, args.repeat)
    if (counts.by_status, counts.by_workflow, counts.total) != (by_status, by_workflow, paged_total):
        raise SystemExit(f"count_runs disagrees with paging: {counts} != {(by_status, by_workflow, paged_total)}")
    day_ago = utcnow() - timedelta(days=1)
    recent_ms, recent = await timed(lambda: storage.count_runs(created_after=day_ago), args.repeat)
    dash = app.state.dashboard
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:

        async def api() -> dict[str, Any]:
            dash._counts = None  # count again, not from the 60 s cache
            response = await http.get("/api/counts")
            assert response.status_code == 200, response.text[:300]
            return dict(response.json())

        api_ms, shown = await timed(api, args.repeat)
    assert shown["total"] == counts.total and shown["by_workflow"] == counts.by_workflow

    def row(label: str, total: int, ms: float, compared: bool = True) -> str:
        return f"| {label} | {total:,} | {ms:,.1f} | {f'{paged_ms / ms:,.0f}×' if compared else '—'} |"

    return [
        f"| counts by status and workflow, {counts.total:,} runs | runs counted | median ms | faster than paging |",
        "|---|---:|---:|---:|",
        row("baseline: paging `list_runs`, 1,000 a page (the dashboard before)", paged_total, paged_ms),
        row("`count_runs()`", counts.total, count_ms),
        row("`count_runs(created_after=1 day ago)` (the last day only)", recent.total, recent_ms, compared=False),
        row("`GET /api/counts` (`count_runs`, the 60 s cache emptied)", shown["total"], api_ms),
    ]


async def measure(target: cli_list.Target, args: argparse.Namespace) -> list[str]:
    lines = [f"### {target.name}\n"]
    storage = target.backend()
    try:
        if not args.counts_only:
            started = time.perf_counter()
            run_id = await make_big_run(storage, args.events)
            lines.append(f"A run of {args.events:,} events written in {time.perf_counter() - started:.1f} s.")
        took = await cli_list.populate(storage, args.runs, target.concurrency)
        lines.append(f"{args.runs:,} more runs filled in {took:.1f} s; load average {cli_list.load()}.")
        if isinstance(target, RedisTarget):
            lines.append(f"Redis: {target.keys()}.")
        lines.append("")
        target.prepare()
        app = create_app(storage=storage)
        if args.counts_only:
            lines += await measure_counts(storage, app, args)
            return [*lines, ""]
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
            lines.append("")
        lines += await measure_counts(storage, app, args)
    finally:
        await storage.close()
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument(
        "--storage", default="sqlite,postgres", help="sqlite, postgres, redis, or several (comma-separated)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16, help="PostgreSQL and Redis writer tasks while filling")
    parser.add_argument("--pg-url", default=cli_list.DEFAULT_PG_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--counts-only", action="store_true", help="time the counts only, not the pages")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    names = [name.strip() for name in args.storage.split(",")]
    unknown = set(names) - {"sqlite", "postgres", "redis"}
    if unknown:
        parser.error(f"--storage: unknown {', '.join(sorted(unknown))}; use sqlite, postgres or redis")
    big_run = "" if args.counts_only else f"a {args.events:,}-event run and "
    print(f"# The dashboard: {big_run}{args.runs:,} runs\n")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {cli_list.load()} at the start.\n")
    for name in names:
        target: cli_list.Target
        if name == "sqlite":
            target = cli_list.SQLiteTarget()
        elif name == "postgres":
            target = cli_list.PostgresTarget(args.pg_url, args.concurrency)
        else:
            target = RedisTarget(args.redis_url, args.concurrency)
        try:
            print("\n".join(asyncio.run(measure(target, args))), flush=True)
        finally:
            print(target.cleanup(args.keep) + "\n")


if __name__ == "__main__":
    main()
