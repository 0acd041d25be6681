"""``pyworkflow schedules``: list, show, pause, resume, trigger, backfill and delete
schedules, through the public schedule functions (see :mod:`pyworkflow.cli.features`);
in a version without them each subcommand says so and exits 2."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import click

from pyworkflow.cli import features, output
from pyworkflow.cli.context import Cli, cli_of
from pyworkflow.cli.params import SINCE
from pyworkflow.cli.runs import json_option


def plain(value: Any) -> Any:
    """A schedule (pydantic model, dataclass, mapping …) as JSON data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _call(cli: Cli, key: str, *args: Any, **kwargs: Any) -> Any:
    """The schedule function behind ``key`` on the command's storage: runs that trigger and
    backfill start are recorded due at once, and the next tick of a beat starts them (no
    broker is needed here)."""
    cli.import_workflows()  # schedules name workflows: their modules register them
    fn = features.lookup(key)
    return plain(cli.run(lambda: fn(*args, storage=cli.storage(), **kwargs)))


def _show(cli: Cli, value: Any, done: str | None = None) -> None:
    if cli.json:
        output.emit_json(value)
    elif done is not None:
        click.echo(done)
    elif isinstance(value, dict):
        output.fields((k, output.compact(v, 100) if isinstance(v, dict | list) else v) for k, v in value.items())
    else:
        click.echo(output.compact(value, 1000))


@click.group()
def schedules() -> None:
    """Manage schedules (cron and interval starts)."""


@schedules.command("list")
@json_option
@click.pass_context
def list_schedules(ctx: click.Context) -> None:
    """List schedules."""
    cli = cli_of(ctx)
    found = _call(cli, "schedules.list")
    if cli.json:
        output.emit_json({"schedules": found})
        return
    rows = [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []
    if not rows:
        click.echo("no schedules")
        return
    headers = [h for h in _COLUMNS if any(h in row for row in rows)]

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "every" and value is not None:
            return f"{value:g}s"
        return "-" if value is None else output.cut(str(value), 40)

    output.table([h.upper() for h in headers], ([cell(r, h) for h in headers] for r in rows))


#: The columns of ``schedules list`` (``--json`` gives every field).
_COLUMNS = (
    "schedule_id",
    "workflow",
    "cron",
    "every",
    "timezone",
    "paused",
    "next_run_at",
    "fired",
    "skipped",
    "missed",
)


@schedules.command("show")
@click.argument("schedule_id")
@json_option
@click.pass_context
def show_schedule(ctx: click.Context, schedule_id: str) -> None:
    """Show one schedule."""
    cli = cli_of(ctx)
    _show(cli, _call(cli, "schedules.show", schedule_id))


def _simple(key: str, verb: str, doc: str) -> None:
    @schedules.command(key.split(".", 1)[1], help=doc)
    @click.argument("schedule_id")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, schedule_id: str) -> None:
        cli = cli_of(ctx)
        _show(cli, _call(cli, key, schedule_id), f"{verb} schedule {schedule_id}")


_simple("schedules.pause", "paused", "Pause a schedule: no new slots start until it is resumed.")
_simple("schedules.resume", "resumed", "Resume a paused schedule.")
_simple("schedules.trigger", "triggered", "Start one run of a schedule now.")
_simple("schedules.delete", "deleted", "Delete a schedule (its runs stay).")


@schedules.command("backfill")
@click.argument("schedule_id")
@click.option("--start", "start", type=SINCE, required=True, help="First slot time (ISO time or a duration back).")
@click.option("--end", "end", type=SINCE, required=True, help="Last slot time (ISO time or a duration back).")
@json_option
@click.pass_context
def backfill(ctx: click.Context, schedule_id: str, start: datetime, end: datetime) -> None:
    """Start the runs of a schedule's slots between --start and --end."""
    if end < start:
        raise click.BadParameter("must not be before --start", param_hint="'--end'")
    cli = cli_of(ctx)
    _show(cli, _call(cli, "schedules.backfill", schedule_id, start=start, end=end), f"backfilled {schedule_id}")
