"""The web dashboard: runs, their timelines, schedules, and the actions of the CLI.

Serve it with the CLI (``pip install 'pyworkflow-celery[web]'``)::

    pyworkflow --storage sqlite:///pyworkflow.db dashboard        # http://127.0.0.1:8787/

or mount it in your own ASGI server (Starlette, FastAPI …)::

    from pyworkflow.dashboard import create_app

    api.mount("/workflows", create_app(storage="postgresql://app@db/app"))

It reads runs through the storage contract and acts only through the public functions
(:func:`pyworkflow.cancel_async`, :func:`pyworkflow.retry_async`,
:func:`pyworkflow.send_signal_async`), like the CLI. Forms carry a CSRF token. Served on
any address other than a loopback one it needs an access token
(``PYWORKFLOW_DASHBOARD_TOKEN``; see :mod:`pyworkflow.dashboard.security`). Routes are
listed in :mod:`pyworkflow.dashboard.app`; how a run's log becomes a timeline in
:mod:`pyworkflow.dashboard.timeline`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.base import StorageBackend

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute

TOKEN_VARIABLE = "PYWORKFLOW_DASHBOARD_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def create_app(
    storage: StorageBackend | str | None = None,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    title: str = "PyWorkflow",
) -> Starlette:
    """The dashboard as an ASGI application (Starlette), to serve or to mount.

    ``storage``: a backend or a storage URL; by default the configured storage
    (``pyworkflow.configure`` or ``PYWORKFLOW_STORAGE_URL``), read at each request.
    ``token``: an access token every request must carry (``Authorization: Bearer``, the
    ``/login`` form, or ``?token=`` once, which sets a cookie); by default
    ``PYWORKFLOW_DASHBOARD_TOKEN``, and none when that is unset or empty.
    ``allowed_hosts``: the ``Host`` names to answer (others get 400); ``None`` answers
    any (the server it is mounted in decides). ``extra_routes``: more routes served
    behind the same token (``/metrics``, say).

    Raises :class:`~pyworkflow.errors.ConfigurationError` when Starlette or Jinja2 is
    missing (the ``web`` extra) or the token is shorter than 16 characters.

    Example::

        app = create_app(storage="sqlite:///pyworkflow.db")
        # uvicorn.run(app, host="127.0.0.1", port=8787)
    """
    try:
        from pyworkflow.dashboard.app import create_app as make
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs Starlette and Jinja2 ({exc}); install them with: pip install 'pyworkflow-celery[web]'"
        ) from None
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE)
    return make(storage, token=token, allowed_hosts=allowed_hosts, extra_routes=extra_routes, title=title)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "TOKEN_VARIABLE", "create_app"]
