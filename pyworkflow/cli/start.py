"""``pyworkflow start``: start a run of a registered workflow, on the Celery workers
(through :func:`pyworkflow.start_async`) or, with ``--local``, in this process."""

from __future__ import annotations

from typing import Any

import click

from pyworkflow.cli import output
from pyworkflow.cli.context import Cli, CliError, cli_of
from pyworkflow.cli.params import JSON
from pyworkflow.cli.runs import json_option
from pyworkflow.errors import SerializationError, WorkflowNotFoundError
from pyworkflow.registry import WorkflowDefinition, get_workflow
from pyworkflow.storage.base import WorkflowRun, redact_url


def _arguments(definition: WorkflowDefinition, args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments decoded to the workflow's annotations, as a replay reads them."""
    positional = [] if args is None else args if isinstance(args, list) else [args]
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise click.BadParameter(f"must be a JSON object, got {output.compact(kwargs)}", param_hint="'--kwargs'")
    try:
        decoded, named = definition.signature.decode_args({"args": positional, "kwargs": kwargs})
        definition.signature.check_call(decoded, named)
    except (SerializationError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    return decoded, named


def _definition(cli: Cli, name: str) -> WorkflowDefinition:
    modules = cli.import_workflows()
    try:
        return get_workflow(name)
    except WorkflowNotFoundError as exc:
        where = f"imported {', '.join(modules)}" if modules else "no workflow modules imported"
        raise CliError(f"{exc} ({where}); name the module with --import or PYWORKFLOW_IMPORTS") from None


@click.command("start")
@click.argument("workflow")
@click.argument("args", type=JSON, required=False)
@click.option("--kwargs", type=JSON, help="Keyword arguments, a JSON object.")
@click.option("--idempotency-key", metavar="KEY", help="A key already used returns that run and starts nothing.")
@click.option("--local", is_flag=True, help="Run it in this process until it completes, fails or suspends.")
@json_option
@click.pass_context
def start(ctx: click.Context, workflow: str, args: Any, kwargs: Any, idempotency_key: str | None, local: bool) -> None:
    """Start a run of WORKFLOW. ARGS is a JSON array of positional arguments (any other
    JSON value is the one argument); --kwargs takes a JSON object. With --local, the exit
    code is 1 when the run fails."""
    cli = cli_of(ctx)
    definition = _definition(cli, workflow)
    positional, named = _arguments(definition, args, kwargs)

    async def main() -> WorkflowRun:
        storage = cli.storage(create=True)
        if local:
            from pyworkflow.local import LocalRuntime

            run_id = await LocalRuntime(storage).start(
                definition.name, *positional, idempotency_key=idempotency_key, **named
            )
        else:
            run_id = await _send(cli, definition.name, positional, named, idempotency_key)
        return await cli.get_run(run_id)

    run = cli.run(main)
    body: dict[str, Any] = {
        "run_id": run.run_id,
        "workflow": run.workflow_name,
        "status": run.status.value,
        "local": local,
    }
    if run.status == "completed":
        body["result"] = run.result
    elif run.error is not None:
        body["error"] = run.error
    failed = local and run.status in ("failed", "cancelled")
    if cli.json:
        output.emit_json(body)
        if failed:
            ctx.exit(1)
        return
    if not local:
        click.echo(f"started run {run.run_id} of {run.workflow_name} ({run.status.value})")
        return
    click.echo(f"run {run.run_id} of {run.workflow_name}: {run.status.value}")
    if run.status == "completed":
        click.echo(f"result: {output.compact(run.result, 500)}")
    elif run.error is not None:
        click.echo(f"error: {output.error_line(run.error)}")
    elif run.status == "suspended":
        click.echo(f"it waits (wake at {output.when(run.wake_at)}); workers and beat on this storage carry it on")
    if failed:
        ctx.exit(1)


async def _send(cli: Cli, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], idempotency_key: str | None) -> str:
    """``pyworkflow.start_async``: the run is recorded, then its activation is sent."""
    from kombu.exceptions import OperationalError

    from pyworkflow import start_async

    try:
        return await start_async(name, *args, idempotency_key=idempotency_key, **kwargs)
    except OperationalError as exc:
        from pyworkflow.celery.factory import installed_app

        broker = redact_url(str(installed_app().conf.broker_url or ""))
        raise CliError(
            f"the run was recorded but its activation could not be sent to the broker {broker!r} ({exc}); "
            "the tick sends it once the broker is back (PYWORKFLOW_START_GUARD)"
        ) from None
