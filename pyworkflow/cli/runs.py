"""``pyworkflow runs``: reading runs — list, show, events, result, export.

Everything here reads storage through the storage contract (``list_runs``, ``get_run``,
``get_events``, ``get_messages``) and the replay state machine
(:func:`pyworkflow.history.fold`); nothing writes.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from pyworkflow.cli import output
from pyworkflow.cli.context import Cli, CliError, NotFinishedError, cli_of
from pyworkflow.cli.params import CURSOR, SINCE, STATUS
from pyworkflow.errors import PyWorkflowError
from pyworkflow.events import Event, EventType
from pyworkflow.history import fold
from pyworkflow.storage.base import RunPage, StorageBackend, WorkflowRun

DEFAULT_LIMIT = 50


def json_option(fn: Any) -> Any:
    """``--json`` on a command as well as on the group: ``pyworkflow runs list --json``."""

    def set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            cli_of(ctx).json = True

    return click.option(
        "--json", "as_json", is_flag=True, expose_value=False, callback=set_json, help="Print JSON for scripts."
    )(fn)


@click.group()
def runs() -> None:
    """Inspect and manage workflow runs."""


# -- list ------------------------------------------------------------------------------------


async def list_page(
    storage: StorageBackend,
    *,
    status: str | None = None,
    workflow: str | None = None,
    since: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> RunPage:
    """One page of ``runs list``: newest first, keyset-paged by ``(created_at, run_id)``."""
    return await storage.list_runs(
        status=status, workflow_name=workflow, created_after=since, limit=limit, cursor=cursor
    )


@runs.command("list")
@click.option("--status", type=STATUS, help="Only runs with this status.")
@click.option("--workflow", metavar="NAME", help="Only runs of this workflow.")
@click.option("--since", type=SINCE, help="Only runs created after this: a duration back (2h, 3d) or an ISO time.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=DEFAULT_LIMIT, show_default=True, help="Page size.")
@click.option("--cursor", type=CURSOR, help="Continue after a page: the next cursor printed with it.")
@click.option("--parent", metavar="RUN", help="Only the child runs this run started.")
@json_option
@click.pass_context
def list_runs(
    ctx: click.Context,
    status: str | None,
    workflow: str | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
    parent: str | None,
) -> None:
    """List runs, newest first, one page at a time."""
    cli = cli_of(ctx)

    async def main() -> RunPage:
        storage = cli.storage()
        if parent is not None:
            await cli.get_run(parent)  # an unknown parent is an error, not an empty list
            return await storage.list_children(
                parent, status=status, workflow_name=workflow, created_after=since, limit=limit, cursor=cursor
            )
        return await list_page(storage, status=status, workflow=workflow, since=since, limit=limit, cursor=cursor)

    page = cli.run(main)
    if cli.json:
        output.emit_json({"runs": [output.run_json(r) for r in page.runs], "next_cursor": page.next_cursor})
        return
    if not page.runs:
        click.echo("no runs match")
        return
    output.table(
        ["RUN ID", "WORKFLOW", "STATUS", "CREATED (UTC)", "UPDATED (UTC)", "ERROR"],
        (
            [
                r.run_id,
                output.cut(r.workflow_name, 40),
                r.status.value,
                output.when(r.created_at),
                output.when(r.updated_at),
                output.cut(output.error_line(r.error), 60),
            ]
            for r in page.runs
        ),
    )
    if page.next_cursor:
        click.echo(f"more: pyworkflow runs list --cursor {shlex.quote(page.next_cursor)} (with the same filters)")


@runs.command("unreadable")
@click.option("--limit", type=click.IntRange(1, 10_000), default=DEFAULT_LIMIT, show_default=True, help="At most.")
@json_option
@click.pass_context
def unreadable(ctx: click.Context, limit: int) -> None:
    """Runs whose stored record cannot be read back (corrupted, or encrypted with another
    key): listings and the tick skip them; every other run goes on."""
    cli = cli_of(ctx)

    async def main() -> list[str]:
        return await cli.storage().list_unreadable_runs(limit=limit)

    run_ids = cli.run(main)
    if cli.json:
        output.emit_json({"runs": run_ids})
        return
    for run_id in run_ids:
        click.echo(run_id)
    click.echo(f"{len(run_ids)} unreadable run(s)" if run_ids else "no unreadable runs")


# -- show ------------------------------------------------------------------------------------


def _published_state(events: list[Event]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for event in events:
        if event.type == EventType.STATE_SET and isinstance(event.data.get("key"), str):
            state[event.data["key"]] = event.data.get("value")
    return state


def _calls(run_id: str, events: list[Event]) -> list[dict[str, Any]]:
    history = fold(run_id, events)
    return [
        {
            "call_id": call_id,
            "kind": rec.kind.value,
            "name": rec.name,
            "state": rec.state.value,
            "attempt": rec.attempt,
            "wake_at": rec.wake_at.isoformat() if rec.wake_at else None,
        }
        for call_id, rec in sorted(history.calls.items())
    ]


def _chain(run_id: str, events: list[Event], current: str | None) -> dict[str, Any] | None:
    """The run's place in a continue-as-new chain, from its log (``None``: not in one)."""
    started = events[0].data.get("continued") if events else None
    following = next((e.data.get("run_id") for e in reversed(events) if e.type == EventType.WORKFLOW_CONTINUED), None)
    if not isinstance(started, dict) and following is None:
        return None
    started = started if isinstance(started, dict) else {}
    return {
        "first_run_id": started.get("first_run_id", run_id),
        "index": started.get("index", 0),
        "continued_from": started.get("from"),
        "continued_as": following,
        "current_run_id": current,
    }


def _chain_fields(run_id: str, chain: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if chain is None:
        return []
    current = chain["current_run_id"]
    return [
        ("chain", f"run #{chain['index']} of the chain begun by {chain['first_run_id']}"),
        ("continued from", chain["continued_from"]),
        ("continued as", chain["continued_as"]),
        ("chain's current run", current if current != run_id else None),
    ]


@runs.command("show")
@click.argument("run_id")
@json_option
@click.pass_context
def show(ctx: click.Context, run_id: str) -> None:
    """Show one run: its record, its durable calls and published state."""
    cli = cli_of(ctx)

    async def main() -> tuple[WorkflowRun, list[Event], int, str | None, list[WorkflowRun]]:
        from pyworkflow.continuation import latest_run

        run = await cli.get_run(run_id)
        storage = cli.storage()
        events = await storage.get_events(run_id)
        pending = await storage.get_messages(run_id)
        current = await latest_run(storage, run_id) if run.status == "continued" else run
        children = (await storage.list_children(run_id, limit=1000)).runs
        return run, events, len(pending), current.run_id if current is not None else None, children

    run, events, pending, current, children = cli.run(main)
    chain = _chain(run_id, events, current)
    history_error = None
    try:
        calls = _calls(run_id, events)
    except PyWorkflowError as exc:  # a log the replay cannot read: show the rest
        calls, history_error = [], str(exc)
    last = events[-1] if events else None
    if cli.json:
        output.emit_json(
            {
                "run": output.run_json(run),
                "parent_run_id": run.parent_run_id,
                "children": [
                    {"run_id": c.run_id, "workflow": c.workflow_name, "status": c.status.value} for c in children
                ],
                "event_count": len(events),
                "last_event": output.event_json(last) if last else None,
                "pending_messages": pending,
                "chain": chain,
                "calls": calls,
                "state": _published_state(events),
                "history_error": history_error,
            }
        )
        return
    output.fields(
        [
            ("run", run.run_id),
            ("workflow", run.workflow_name),
            ("status", run.status.value),
            ("created", output.when(run.created_at) + " UTC"),
            ("updated", output.when(run.updated_at) + " UTC"),
            ("completed", output.when(run.completed_at)),
            ("wake at", output.when(run.wake_at)),
            ("deadline", output.when(run.deadline)),
            ("idempotency key", run.idempotency_key),
            ("input", output.compact(run.input, 200)),
            ("result", output.compact(run.result, 200) if run.result is not None else None),
            ("error", output.error_line(run.error) or None),
            ("events", f"{len(events)}" + (f" (last: {last.type} at {output.when(last.timestamp)})" if last else "")),
            ("pending messages", pending),
            ("parent", run.parent_run_id),
            ("children", ", ".join(f"{c.run_id} ({c.status.value})" for c in children) or None),
        ]
        + _chain_fields(run_id, chain)
    )
    state = _published_state(events)
    if state:
        click.echo("\npublished state:")
        output.fields((f"  {k}", output.compact(v, 100)) for k, v in state.items())
    if history_error:
        click.echo(f"\ncalls: the log cannot be folded: {history_error}")
    elif calls:
        click.echo()
        output.table(
            ["CALL", "KIND", "NAME", "STATE", "ATTEMPT", "WAKE AT (UTC)"],
            (
                [
                    c["call_id"],
                    c["kind"],
                    output.cut(c["name"], 40),
                    c["state"],
                    c["attempt"] or "-",
                    output.when(datetime.fromisoformat(c["wake_at"])) if c["wake_at"] else "-",
                ]
                for c in calls
            ),
        )


# -- events ----------------------------------------------------------------------------------


def _event_line(event: Event) -> str:
    return f"{event.seq:>5}  {output.when(event.timestamp)}  {event.type:<20}  {output.event_summary(event)}".rstrip()


@runs.command("events")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until the run finishes (or Ctrl-C).")
@click.option("--after", type=click.IntRange(0), default=0, help="Only events after this seq.")
@click.option(
    "--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True, help="Seconds between polls."
)
@json_option
@click.pass_context
def events(ctx: click.Context, run_id: str, follow: bool, after: int, interval: float) -> None:
    """Print a run's event log. With --json: one object, or with --follow one event per
    line (JSON Lines)."""
    cli = cli_of(ctx)
    if not follow:

        async def read() -> list[Event]:
            await cli.get_run(run_id)
            return await cli.storage().get_events(run_id, after_seq=after)

        found = cli.run(read)
        if cli.json:
            output.emit_json({"run_id": run_id, "events": [output.event_json(e) for e in found]})
            return
        click.echo(f"{'SEQ':>5}  {'TIME (UTC)':<19}  {'TYPE':<20}  DETAILS")
        for event in found:
            click.echo(_event_line(event))
        return

    async def follow_log() -> None:
        storage = cli.storage()
        seen = after
        if not cli.json:
            click.echo(f"{'SEQ':>5}  {'TIME (UTC)':<19}  {'TYPE':<20}  DETAILS")
        while True:
            # The run first, then the log: a run seen finished has all its events written
            # (the last append records the end and the events together).
            run = await cli.get_run(run_id)
            for event in await storage.get_events(run_id, after_seq=seen):
                seen = event.seq
                if cli.json:
                    output.emit_json(output.event_json(event), lines=True)
                else:
                    click.echo(_event_line(event))
            sys.stdout.flush()  # a pipe (| jq) sees each event as it comes
            if run.status.is_terminal:
                return
            await asyncio.sleep(interval)

    cli.run(follow_log)


# -- result ----------------------------------------------------------------------------------


@runs.command("result")
@click.argument("run_id")
@click.option(
    "--wait", type=click.FloatRange(0), default=0, metavar="SECONDS", help="Wait this long for the run to finish."
)
@json_option
@click.pass_context
def result(ctx: click.Context, run_id: str, wait: float) -> None:
    """Print a run's result. Exit code 1 when the run failed or was cancelled (its error on
    stderr), 3 when it has not finished. A run that continued as new is followed to its
    chain's current run (``--json`` names it)."""
    cli = cli_of(ctx)

    async def main() -> WorkflowRun:
        from pyworkflow.continuation import latest_run

        deadline = time.monotonic() + wait
        pause = 0.02
        while True:
            run = await cli.get_run(run_id)
            if run.status == "continued":
                run = await latest_run(cli.storage(), run_id) or run
            if run.status.is_terminal or time.monotonic() >= deadline:
                return run
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.5)

    run = cli.run(main)
    body: dict[str, Any] = {"run_id": run.run_id, "status": run.status.value}
    if run.status == "completed":
        if cli.json:
            output.emit_json({**body, "result": run.result})
        else:
            output.emit_json(run.result)
        return
    if run.status.is_terminal:
        if cli.json:
            output.emit_json({**body, "error": run.error})
            ctx.exit(1)
        raise CliError(f"run {run_id!r} {run.status.value}: {output.error_line(run.error) or 'no error recorded'}")
    if cli.json:
        output.emit_json({**body, "wake_at": run.wake_at.isoformat() if run.wake_at else None})
        ctx.exit(NotFinishedError.exit_code)
    hint = f" after waiting {wait:g}s" if wait else "; wait for it with --wait SECONDS"
    raise NotFinishedError(f"run {run_id!r} has not finished (status {run.status.value}){hint}")


# -- export ----------------------------------------------------------------------------------


async def history_document(cli: Cli, run_id: str) -> dict[str, Any]:
    """A run and its log as ``runs export`` writes them: ``{"format":
    "pyworkflow.history/1", "run": {...}, "events": [...]}``."""
    run = await cli.get_run(run_id)
    events = await cli.storage().get_events(run_id)
    return {
        "format": output.HISTORY_FORMAT,
        "run": output.run_json(run),
        "events": [output.event_json(e) for e in events],
    }


@runs.command("export")
@click.argument("run_id")
@click.option(
    "--output",
    "-o",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default stdout).",
)
@json_option
@click.pass_context
def export(ctx: click.Context, run_id: str, path: Path | None) -> None:
    """Export a run's record and event log as JSON (format pyworkflow.history/1), for
    replay tests."""
    cli = cli_of(ctx)
    document = cli.run(lambda: history_document(cli, run_id))
    if path is None:
        output.emit_json(document)
        return
    import json

    try:
        path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    if cli.json:
        output.emit_json({"run_id": run_id, "path": str(path), "events": len(document["events"])})
    else:
        click.echo(f"wrote run {run_id} ({len(document['events'])} events) to {path}")
