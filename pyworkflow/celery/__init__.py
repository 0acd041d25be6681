"""PyWorkflow on Celery: ``create_app()`` for a new app, ``install(app)`` for yours."""

from pyworkflow.celery.factory import create_app, install, installed_app
from pyworkflow.celery.settings import Settings

__all__ = ["Settings", "create_app", "install", "installed_app"]
