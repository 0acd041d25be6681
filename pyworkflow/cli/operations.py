"""``pyworkflow runs``: changing runs — signal, cancel, pause, unpause, retry, prune.

Each acts through a public function (``send_signal_async``, ``cancel``, ``retry``) or the
storage contract's ``prune_runs``, never by writing storage directly. The batch forms
select runs by filter and take ``--dry-run``.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import click

from pyworkflow.cli import features, output
from pyworkflow.cli.context import Cli, CliError, cli_of
from pyworkflow.cli.params import DURATION, JSON, SINCE, STATUS
from pyworkflow.cli.runs import json_option, runs
from pyworkflow.clock import utcnow
from pyworkflow.errors import PyWorkflowError, RunNotFoundError
from pyworkflow.storage.base import TERMINAL_STATUSES, RunStatus, StorageBackend, WorkflowRun

# -- signal ----------------------------------------------------------------------------------


@runs.command("signal")
@click.argument("run_id")
@click.argument("name")
@click.argument("payload", type=JSON, required=False)
@click.option("--idempotency-key", metavar="KEY", help="The same key twice delivers one signal.")
@json_option
@click.pass_context
def signal(ctx: click.Context, run_id: str, name: str, payload: Any, idempotency_key: str | None) -> None:
    """Send signal NAME with an optional JSON PAYLOAD to a run."""
    from pyworkflow.signals import send_signal_async

    cli = cli_of(ctx)

    async def main() -> str:
        try:
            return await send_signal_async(
                run_id, name, payload, idempotency_key=idempotency_key, storage=cli.storage()
            )
        except RunNotFoundError:
            raise CliError(f"no run {run_id!r} in {cli.shown_url}") from None
        except PyWorkflowError:
            raise
        except (TypeError, ValueError) as exc:  # a malformed name or key: the caller's input
            raise click.UsageError(str(exc)) from None

    message_id = cli.run(main)
    if cli.json:
        output.emit_json({"run_id": run_id, "name": name, "message_id": message_id})
    else:
        click.echo(f"sent signal {name!r} to run {run_id} (message {message_id})")


# -- selecting runs for the batch forms --------------------------------------------------------


async def select_runs(
    storage: StorageBackend,
    *,
    status: str | None,
    workflow: str | None,
    since: datetime | None,
    limit: int | None,
) -> list[WorkflowRun]:
    """Every run matching the filters (at most ``limit``), newest first, page by page."""
    found: list[WorkflowRun] = []
    cursor = None
    while limit is None or len(found) < limit:
        size = 500 if limit is None else min(500, limit - len(found))
        page = await storage.list_runs(
            status=status, workflow_name=workflow, created_after=since, limit=size, cursor=cursor
        )
        found += page.runs
        cursor = page.next_cursor
        if cursor is None:
            break
    return found


def _batch_options(fn: Any) -> Any:
    decorators: list[Callable[[Any], Any]] = [
        click.argument("run_ids", nargs=-1, metavar="[RUN]..."),
        click.option("--status", type=STATUS, help="Every run with this status."),
        click.option("--workflow", metavar="NAME", help="Every run of this workflow."),
        click.option("--since", type=SINCE, help="Every run created after this (2h, 3d, or an ISO time)."),
        click.option("--limit", type=click.IntRange(1), help="At most this many runs (newest first)."),
        click.option("--dry-run", is_flag=True, help="Only list the runs it would act on."),
        json_option,
        click.pass_context,
    ]
    for decorator in reversed(decorators):
        fn = decorator(fn)
    return fn


def _batch(
    ctx: click.Context,
    key: str,
    verb: str,
    run_ids: tuple[str, ...],
    status: str | None,
    workflow: str | None,
    since: datetime | None,
    limit: int | None,
    dry_run: bool,
    *,
    refused: str,
    options: dict[str, Any] | None = None,
) -> None:
    """Apply the function ``key`` to the runs named, or to every run the filters select.
    A function returning ``False`` refused the run: ``refused`` says why."""
    cli = cli_of(ctx)
    filtered = status is not None or workflow is not None or since is not None
    if run_ids and filtered:
        raise click.UsageError("name runs or select them with --status/--workflow/--since, not both")
    if not run_ids and not filtered:
        raise click.UsageError("name a run, or select runs with --status, --workflow or --since")
    cli.import_workflows()  # as a worker would: the function may look the run's workflow up
    operation = features.lookup(key)

    async def main() -> tuple[list[str], list[dict[str, Any]]]:
        storage = cli.storage()
        if run_ids:
            targets = list(dict.fromkeys(run_ids))
            if len(targets) == 1:
                await cli.get_run(targets[0])  # one unknown run: one clear line
        else:
            selected = await select_runs(storage, status=status, workflow=workflow, since=since, limit=limit)
            targets = [r.run_id for r in selected]
        if dry_run:
            return targets, []
        outcomes: list[dict[str, Any]] = []
        show = not cli.json and len(targets) > 1 and sys.stderr.isatty()
        with click.progressbar(length=len(targets), label=verb, file=sys.stderr, hidden=not show) as bar:
            for run_id in targets:
                try:
                    done = await operation(run_id, **(options or {}))
                except PyWorkflowError as exc:
                    outcomes.append({"run_id": run_id, "ok": False, "error": str(exc)})
                except (TypeError, ValueError) as exc:  # an option the function refuses
                    raise click.UsageError(str(exc)) from None
                else:
                    error = f"run {run_id!r} {refused}" if done is False else None
                    outcomes.append({"run_id": run_id, "ok": error is None, "error": error})
                bar.update(1)
        return targets, outcomes

    targets, outcomes = cli.run(main)
    failed = [o for o in outcomes if not o["ok"]]
    if cli.json:
        output.emit_json({"dry_run": dry_run, "runs": targets, "results": outcomes, "failed": len(failed)})
    elif dry_run:
        for run_id in targets:
            click.echo(run_id)
        click.echo(f"dry run: would {verb.lower()} {len(targets)} run(s)")
    elif len(targets) == 1 and failed:
        raise CliError(failed[0]["error"])
    else:
        for o in failed:
            click.echo(f"{o['run_id']}: {o['error']}", err=True)
        click.echo(f"{verb.lower()}: {len(outcomes) - len(failed)} run(s) done, {len(failed)} refused")
    if failed:
        ctx.exit(1)


@runs.command("cancel")
@click.option("--reason", metavar="TEXT", help="Why, recorded with the cancellation.")
@_batch_options
def cancel(
    ctx: click.Context,
    reason: str | None,
    run_ids: tuple[str, ...],
    status: str | None,
    workflow: str | None,
    since: datetime | None,
    limit: int | None,
    dry_run: bool,
) -> None:
    """Cancel runs: the workflow sees CancelledError where it waits and may clean up."""
    options = {"reason": reason} if reason is not None else None
    refused = "has already finished"
    _batch(
        ctx, "cancel", "Cancelling", run_ids, status, workflow, since, limit, dry_run, refused=refused, options=options
    )


def _simple_batch(key: str, verb: str, refused: str, help_text: str) -> None:
    """``pyworkflow runs <key>``: the function ``key`` applied to runs named or selected."""

    def command(
        ctx: click.Context,
        run_ids: tuple[str, ...],
        status: str | None,
        workflow: str | None,
        since: datetime | None,
        limit: int | None,
        dry_run: bool,
    ) -> None:
        _batch(ctx, key, verb, run_ids, status, workflow, since, limit, dry_run, refused=refused)

    command.__doc__ = help_text
    runs.command(key)(_batch_options(command))


_simple_batch(
    "pause",
    "Pausing",
    "has already finished",
    "Pause runs: each finishes the step it runs, then holds at its next durable call.",
)
_simple_batch("unpause", "Unpausing", "has already finished", "Let paused runs go on from where they were held.")
_simple_batch(
    "retry",
    "Retrying",
    "cannot be retried (only failed or blocked runs can)",
    "Retry failed or blocked runs.",
)


# -- prune -----------------------------------------------------------------------------------

#: At most this many ``prune_runs`` calls for one progress bar (backends without a
#: query of their own list every run of a status per call).
_PRUNE_STEPS = 20


async def _prune_candidates(storage: StorageBackend, statuses: list[str], cutoff: datetime) -> list[WorkflowRun]:
    """The runs ``prune_runs(older_than=cutoff, statuses=...)`` would delete now. A run
    last updated before ``cutoff`` was created before it too: ``created_before`` keeps
    the listing to them, through the ``(status, created_at)`` index."""
    found: list[WorkflowRun] = []
    for status in statuses:
        cursor = None
        while True:
            page = await storage.list_runs(status=status, created_before=cutoff, limit=500, cursor=cursor)
            found += [r for r in page.runs if r.updated_at < cutoff]
            cursor = page.next_cursor
            if cursor is None:
                break
    return found


async def _prune(cli: Cli, older_than: timedelta, statuses: list[str], dry_run: bool) -> dict[str, Any]:
    storage = cli.storage()
    cutoff = utcnow() - older_than
    body: dict[str, Any] = {"dry_run": dry_run, "cutoff": cutoff.isoformat(), "statuses": statuses}
    if cli.json and not dry_run:  # no bar to feed: one call
        return {**body, "deleted": await storage.prune_runs(older_than=cutoff, statuses=statuses)}
    candidates = await _prune_candidates(storage, statuses, cutoff)
    body["matched"] = len(candidates)
    body["by_status"] = dict(Counter(r.status.value for r in candidates))
    if dry_run:
        return body
    # prune_runs in steps of rising cutoffs, each deleting a share of the candidates, so
    # the bar moves; the last step, at the real cutoff, takes whatever is left.
    times = sorted(r.updated_at for r in candidates)
    step = max(500, -(-len(times) // _PRUNE_STEPS))
    cutoffs = [times[i] for i in range(step, len(times), step)] + [cutoff]
    deleted = 0
    with click.progressbar(length=len(times), label="Pruning", file=sys.stderr, hidden=not sys.stderr.isatty()) as bar:
        for moment in cutoffs:
            count = await storage.prune_runs(older_than=moment, statuses=statuses)
            deleted += count
            bar.update(count)
    return {**body, "deleted": deleted}


@runs.command("prune")
@click.option("--older-than", type=DURATION, required=True, help="Last updated longer ago than this (30d, 12h).")
@click.option(
    "--status",
    "statuses",
    type=STATUS,
    multiple=True,
    help="Only runs with this status (repeatable; default: completed, failed, cancelled, continued).",
)
@click.option("--dry-run", is_flag=True, help="Only count the runs it would delete.")
@json_option
@click.pass_context
def prune(ctx: click.Context, older_than: timedelta, statuses: tuple[str, ...], dry_run: bool) -> None:
    """Delete old runs with their events, messages and timers."""
    cli = cli_of(ctx)
    wanted = sorted({s.lower() for s in statuses} or {s.value for s in TERMINAL_STATUSES})
    unfinished = [s for s in wanted if not RunStatus(s).is_terminal]
    if unfinished:
        click.echo(f"note: {', '.join(unfinished)} runs have not finished: pruning them deletes live runs", err=True)
    report = cli.run(lambda: _prune(cli, older_than, wanted, dry_run))
    if cli.json:
        output.emit_json(report)
        return
    cutoff = output.when(datetime.fromisoformat(report["cutoff"]))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.get("by_status", {}).items())) or "none"
    if dry_run:
        click.echo(f"dry run: would delete {report['matched']} run(s) last updated before {cutoff} UTC ({counts})")
    else:
        click.echo(f"deleted {report['deleted']} run(s) last updated before {cutoff} UTC ({', '.join(wanted)})")
