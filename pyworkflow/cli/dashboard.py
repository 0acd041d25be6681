"""``pyworkflow dashboard``: serve the web dashboard (:mod:`pyworkflow.dashboard`) over
the storage of the global ``--storage`` flag or ``PYWORKFLOW_STORAGE_URL``.

It binds 127.0.0.1 by default. Any other address needs ``PYWORKFLOW_DASHBOARD_TOKEN``
(every request must then carry it): without one the command refuses to start (exit 2).
Without the ``web`` extra (Starlette, Jinja2, uvicorn) it says how to install it (exit 1).
"""

from __future__ import annotations

import importlib
import os
import socket

import click

from pyworkflow.cli.context import CliError, cli_of
from pyworkflow.errors import ConfigurationError


class UnsafeBindError(CliError):
    """A non-loopback address without an access token, or a token too short (exit 2)."""

    exit_code = 2


def _missing_web_extra() -> str | None:
    for module in ("starlette", "jinja2", "uvicorn"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, or a one-line error naming them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (not loopback: needs a token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True, help="Port to listen on.")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int) -> None:
    """Serve the web dashboard: runs, timelines, schedules; cancel, retry and signal.

    Any address but a loopback one needs PYWORKFLOW_DASHBOARD_TOKEN: every request must
    then carry it (Authorization: Bearer, the login form, or ?token= once)."""
    missing = _missing_web_extra()
    if missing is not None:
        raise CliError(
            f"the dashboard needs the web extra ({missing} is not installed): pip install 'pyworkflow-celery[web]'"
        )
    from pyworkflow.dashboard import TOKEN_VARIABLE, create_app
    from pyworkflow.dashboard.security import check_bind, check_token, is_loopback, loopback_hosts

    try:
        token = check_token(os.environ.get(TOKEN_VARIABLE))
        check_bind(host, token)
    except ConfigurationError as exc:
        raise UnsafeBindError(str(exc)) from None
    cli = cli_of(ctx)
    if cli.modules():
        cli.import_workflows()
    storage = cli.storage()
    # Without a token a local dashboard answers to local host names only: a page of another
    # site whose name was rebound to 127.0.0.1 must not drive it (DNS rebinding).
    allowed = loopback_hosts(host) if token is None and is_loopback(host) else None
    app = create_app(storage=storage, token=token, allowed_hosts=allowed)
    sock = _listen(host, port)
    import uvicorn

    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
    click.echo(
        f"serving the dashboard of {cli.shown_url} at http://{shown}:{bound[1]}/"
        + (" (access token required)" if token else "")
        + " - Ctrl-C to stop",
        err=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none"))

    async def serve() -> None:
        await server.serve(sockets=[sock])

    try:
        cli.run(serve)
    finally:
        sock.close()
