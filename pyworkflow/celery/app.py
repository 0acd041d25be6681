"""The ready app: ``celery -A pyworkflow.celery.app worker`` / ``... beat``.

Configured from ``PYWORKFLOW_*`` variables (see :mod:`pyworkflow.celery.settings`). An
unusable setting stops the ``celery`` command at once with one line and status 1 (Celery
would print an exception raised while loading the app as a wall of traceback).
"""

from pyworkflow.celery.factory import create_app
from pyworkflow.errors import ConfigurationError

try:
    app = create_app()
except ConfigurationError as exc:
    raise SystemExit(f"pyworkflow: ConfigurationError: {exc}") from None
