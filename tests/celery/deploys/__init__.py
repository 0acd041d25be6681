"""Three deploys of the same two workflows, for tests/celery/test_deploys.py: each module
is imported by a worker subprocess of its own (``PYWORKFLOW_IMPORTS``), never by the test
process, as one release of an application would be."""
