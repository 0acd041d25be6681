"""Stands in for ``pyworkflow.retry`` in the CLI tests, to prove the batch wiring before
the real function exists: imported with ``--import tests.cli.fake_operations``, it gives
the ``pyworkflow`` package a ``retry_async`` that refuses unknown runs and runs that did
not fail, and records the others in a file named by ``CLI_FAKE_RETRY_LOG``."""

from __future__ import annotations

import os

import pyworkflow
from pyworkflow import config
from pyworkflow.errors import RunNotFoundError


async def retry_async(run_id: str) -> bool:
    run = await config.get_storage().get_run(run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    if run.status != "failed":
        return False
    with open(os.environ["CLI_FAKE_RETRY_LOG"], "a") as log:
        log.write(run_id + "\n")
    return True


if getattr(pyworkflow, "retry_async", None) is None:
    pyworkflow.retry_async = retry_async  # type: ignore[attr-defined]
