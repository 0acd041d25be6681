"""``pyworkflow replay``: replay stored histories against the code imported now and report
the runs that would diverge (through ``pyworkflow.testing.replay``, which takes the
``runs export`` document and raises :class:`~pyworkflow.errors.NonDeterminismError` on a
divergence)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click

from pyworkflow.cli import features, output
from pyworkflow.cli.context import cli_of
from pyworkflow.cli.operations import select_runs
from pyworkflow.cli.params import SINCE, STATUS
from pyworkflow.cli.runs import history_document, json_option
from pyworkflow.errors import NonDeterminismError


@click.command("replay")
@click.option("--workflow", metavar="NAME", help="Only runs of this workflow.")
@click.option("--status", type=STATUS, help="Only runs with this status.")
@click.option("--since", type=SINCE, help="Only runs created after this (2h, 3d, or an ISO time).")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="At most this many runs.")
@json_option
@click.pass_context
def replay(ctx: click.Context, workflow: str | None, status: str | None, since: datetime | None, limit: int) -> None:
    """Replay stored runs against the current code; report those that would diverge."""
    cli = cli_of(ctx)
    cli.import_workflows()
    check = features.lookup("replay")

    async def main() -> list[dict[str, Any]]:
        selected = await select_runs(cli.storage(), status=status, workflow=workflow, since=since, limit=limit)
        results = []
        hidden = cli.json or not sys.stderr.isatty()
        with click.progressbar(selected, label="Replaying", file=sys.stderr, hidden=hidden) as bar:
            for run in bar:
                outcome, detail = "ok", None
                try:
                    await check(None, await history_document(cli, run.run_id))
                except NonDeterminismError as exc:
                    outcome, detail = "diverged", str(exc)
                except Exception as exc:  # noqa: BLE001 - reported per run, the others go on
                    outcome, detail = "error", f"{type(exc).__name__}: {exc}"
                results.append(
                    {"run_id": run.run_id, "workflow": run.workflow_name, "outcome": outcome, "detail": detail}
                )
        return results

    results = cli.run(main)
    bad = [r for r in results if r["outcome"] != "ok"]
    if cli.json:
        diverged = sum(r["outcome"] == "diverged" for r in results)
        output.emit_json(
            {"checked": len(results), "diverged": diverged, "errors": len(bad) - diverged, "runs": results}
        )
    else:
        if bad:
            output.table(
                ["RUN ID", "WORKFLOW", "OUTCOME", "DETAIL"],
                ([r["run_id"], r["workflow"], r["outcome"], output.cut(r["detail"] or "", 100)] for r in bad),
            )
        click.echo(f"replayed {len(results)} run(s): {len(results) - len(bad)} ok, {len(bad)} would diverge or failed")
    if bad:
        ctx.exit(1)
