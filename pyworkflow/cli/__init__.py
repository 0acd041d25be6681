"""The ``pyworkflow`` command.

    pyworkflow runs list --status failed --since 2h
    pyworkflow runs show RUN          pyworkflow runs events RUN --follow
    pyworkflow runs result RUN        pyworkflow runs signal RUN approval '{"ok": true}'
    pyworkflow runs export RUN -o run.json
    pyworkflow runs prune --older-than 30d --dry-run
    pyworkflow start process_order '["ORD-1"]' --import myapp.workflows
    pyworkflow doctor

Storage and broker come from ``--storage`` / ``--broker`` or ``PYWORKFLOW_STORAGE_URL`` /
``PYWORKFLOW_BROKER_URL``; workflow modules from ``--import`` and ``PYWORKFLOW_IMPORTS``.
Tables for people by default, ``--json`` for scripts. A failure is one line on stderr,
never a traceback, and never a password: exit 1 for runtime errors, 2 for usage errors
(see :mod:`pyworkflow.cli.context` for every code).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from pyworkflow.cli.context import Cli, CliError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.option(
    "--storage", metavar="URL", help="Storage URL [default: $PYWORKFLOW_STORAGE_URL or sqlite:///pyworkflow.db]"
)
@click.option("--broker", metavar="URL", help="Celery broker URL [default: $PYWORKFLOW_BROKER_URL]")
@click.option(
    "--import",
    "imports",
    metavar="MODULE",
    multiple=True,
    help="Module holding workflows (repeatable; adds to $PYWORKFLOW_IMPORTS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="pyworkflow-celery", prog_name="pyworkflow")
@click.pass_context
def cli(ctx: click.Context, storage: str | None, broker: str | None, imports: tuple[str, ...], as_json: bool) -> None:
    """Operate PyWorkflow: inspect and manage runs, start workflows, check a deployment."""
    obj = ctx.ensure_object(Cli)
    obj.storage_url, obj.broker_url, obj.imports, obj.json = storage, broker, list(imports), as_json
    obj.apply_environment()


def _register() -> None:
    from pyworkflow.cli import operations  # noqa: F401 - adds signal, cancel, retry, prune to runs
    from pyworkflow.cli.dashboard import dashboard
    from pyworkflow.cli.doctor import doctor
    from pyworkflow.cli.replay import replay
    from pyworkflow.cli.runs import runs
    from pyworkflow.cli.schedules import schedules
    from pyworkflow.cli.start import start

    for command in (runs, start, schedules, replay, doctor):
        cli.add_command(command)
    cli.add_command(dashboard)


_register()


def _one_line(message: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else "failed"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    ctx_obj = Cli()
    code = 0
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name="pyworkflow", obj=ctx_obj, standalone_mode=False
        )
        code = result if isinstance(result, int) else 0
    except click.exceptions.NoArgsIsHelpError as exc:  # a group alone: its help, not one line
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        code = exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "pyworkflow"
        click.echo(
            f"{where}: error: {_one_line(exc.format_message(), ctx_obj.secrets())} (see '{where} --help')", err=True
        )
        code = exc.exit_code
    except click.ClickException as exc:  # CliError, BadParameter outside parsing, FileError
        click.echo(f"pyworkflow: error: {_one_line(exc.format_message(), ctx_obj.secrets())}", err=True)
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):  # Ctrl-C (click turns it into Abort)
        code = 130
    except BrokenPipeError:
        # `pyworkflow runs list | head`: the reader has what it wanted; nothing more to flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        click.echo(f"pyworkflow: error: {type(exc).__name__}: {_one_line(str(exc), ctx_obj.secrets())}", err=True)
        code = 1
    sys.stdout.flush()
    return code


__all__ = ["CliError", "cli", "main"]
