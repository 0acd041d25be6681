"""The ready app: ``celery -A pyworkflow.celery.app worker`` / ``... beat``.

Configured from ``PYWORKFLOW_*`` variables (see :mod:`pyworkflow.celery.settings`).
"""

from pyworkflow.celery.factory import create_app

app = create_app()
