"""Errors raised by PyWorkflow.

Every error a user can meet derives from :class:`PyWorkflowError`::

    PyWorkflowError
    ├── ConfigurationError            bad setting, unknown storage URL, missing driver
    ├── WorkflowNotFoundError         a name no registered workflow has
    ├── SerializationError            a value that cannot be encoded as typed JSON
    │                                 (also a TypeError and a ValueError, like json.dumps)
    ├── NonDeterminismError           replay asked for another call than the log holds
    ├── WorkflowTimeoutError          a run outlived its ``max_duration``
    ├── StepTimeoutError              a step attempt outlived its ``timeout`` (retryable)
    ├── StepCrashedError              a step's worker died more often than it may retry
    ├── StepFailedError               a recorded step failure whose type cannot be rebuilt
    ├── IdempotencyConflictError      one idempotency key, two different workflows
    ├── SignalTimeoutError            a signal wait timed out (also a TimeoutError)
    ├── RunNotRetryableError          retry() of a run that is neither failed nor blocked
    ├── ScheduleNotFoundError         a schedule id no schedule has (also a LookupError)
    ├── ChildWorkflowError            a child run failed or was cancelled
    ├── RunFailedError                waiting for a result of a run that failed
    └── StorageError                  anything a storage backend refuses
        ├── RunNotFoundError
        ├── SequenceConflictError     another writer appended first; nothing was written
        ├── LeaseLostError            the writer's lease was taken over; nothing was written
        ├── StorageUnavailableError   the storage could not be reached (transient: retry)
        └── CorruptedStorageError     a record or log that cannot be read back

    RetryableError, FatalError        raised by user steps to steer retries

Control-flow signals that user code must not swallow derive from ``BaseException``
and live in :mod:`pyworkflow.engine`.

Ids go on attributes; every error pickles (``__reduce__``) because errors cross process
boundaries in Celery.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


class PyWorkflowError(Exception):
    """Base class of every PyWorkflow error."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        self._attrs = attrs
        for key, value in attrs.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._attrs))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[PyWorkflowError], message: str, attrs: dict[str, Any]) -> PyWorkflowError:
    err = cls.__new__(cls)
    PyWorkflowError.__init__(err, message, **attrs)
    return err


class ConfigurationError(PyWorkflowError):
    """A setting, URL or environment variable is wrong or a needed driver is missing."""


class WorkflowNotFoundError(PyWorkflowError):
    """No registered workflow has this name."""

    def __init__(self, name: str, hint: str = "") -> None:
        msg = f"no workflow named {name!r} is registered"
        super().__init__(msg + (f"; {hint}" if hint else ""), name=name)


class SerializationError(PyWorkflowError, TypeError, ValueError):
    """A value cannot be encoded as (or decoded from) typed JSON, or breaks the value
    policy (see :mod:`pyworkflow.serialization`).

    Also a ``TypeError`` and a ``ValueError``, what ``json.dumps`` raises for the same
    values (a type it cannot encode, a float out of range), so code catching those
    catches this too."""


class NonDeterminismError(PyWorkflowError):
    """Replay reached a durable call that differs from what the run's log recorded."""


class CorruptedHistoryError(PyWorkflowError):
    """A run's log holds an event the replay cannot read (``run_id``, ``seq``); the run
    fails once with this error instead of retrying forever."""


class WorkflowTimeoutError(PyWorkflowError):
    """The run exceeded its ``max_duration``."""


class StepTimeoutError(PyWorkflowError):
    """A step attempt exceeded its ``timeout``; counts as a retryable failure."""


class StepCrashedError(PyWorkflowError):
    """A step's worker died during more attempts than the step may make."""


class StepFailedError(PyWorkflowError):
    """Re-raised on replay for a recorded step failure whose exception type is not importable."""

    def __init__(self, message: str, error_type: str = "", **attrs: Any) -> None:
        super().__init__(message, error_type=error_type, **attrs)


class IdempotencyConflictError(PyWorkflowError):
    """An idempotency key already names a run of a different workflow."""


class ChildWorkflowError(PyWorkflowError):
    """A child run ended without a result (failed or cancelled): raised in the parent at
    ``await handle.result()`` / ``run_child``. ``run_id`` is the child's, ``error_type``
    and ``error_message`` its recorded error."""


class RunNotRetryableError(PyWorkflowError):
    """``retry(run_id)`` of a run that is neither failed nor blocked."""


class ScheduleNotFoundError(PyWorkflowError, LookupError):
    """A schedule function named a schedule that does not exist."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id!r} does not exist", schedule_id=schedule_id)


class SignalTimeoutError(PyWorkflowError, TimeoutError):
    """Raised inside a workflow when ``wait_for_signal(name, timeout=...)`` times out
    without a ``default``; the workflow may catch it. Also a ``TimeoutError``."""


class RunFailedError(PyWorkflowError):
    """The run whose result was awaited failed; ``error`` holds type, message, traceback."""

    def __init__(self, run_id: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        super().__init__(
            f"run {run_id!r} failed: {error.get('type', '?')}: {error.get('message', '')}",
            run_id=run_id,
            error=error,
        )


class StorageError(PyWorkflowError):
    """A storage backend refused an operation."""


class StorageUnavailableError(StorageError):
    """The storage could not be reached (connection refused or cut, a timeout): a
    transient fault, worth retrying. The driver's own error is its ``__cause__``."""


class RunNotFoundError(StorageError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist", run_id=run_id)


class RunFinishedError(StorageError):
    """The run has finished (completed, failed or cancelled): it takes no more messages."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id!r} has finished ({status}); it takes no more messages", run_id=run_id, status=status
        )


class SequenceConflictError(StorageError):
    """The log's last sequence number is not the one the writer expected."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id!r}: append expected last seq {expected} but the log is at {actual}; "
            "another writer got there first and nothing was written",
            run_id=run_id,
            expected=expected,
            actual=actual,
        )


class LeaseLostError(StorageError):
    """The writer no longer holds the run's lease (it expired and was taken over)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id!r}: the lease of this writer was lost (expired and taken over); nothing was written",
            run_id=run_id,
        )


class CorruptedStorageError(StorageError):
    """A stored record or event log cannot be read back."""


class RetryableError(Exception):
    """Raise from a step to ask for a retry, optionally after ``retry_after``.

    ``retry_after`` accepts what :func:`pyworkflow.sleep` accepts: seconds, a duration
    string such as ``"30s"``, a ``timedelta`` or a ``datetime``.
    """

    def __init__(self, message: str = "", retry_after: float | str | timedelta | datetime | None = None) -> None:
        if retry_after is not None and not isinstance(retry_after, datetime):
            from pyworkflow.durations import parse_duration

            # refused here, in the step that raises it: an ordinary failure of that step
            parse_duration(retry_after, what="RetryableError(retry_after=...)")
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.retry_after))


class FatalError(Exception):
    """Raise from a step to fail it at once: it is never retried."""


class EncryptionError(CorruptedStorageError):
    """A value stored encrypted cannot be decrypted: no key is configured, or none of the
    configured keys (``PYWORKFLOW_ENCRYPTION_KEY``) opens it. Names the run (``run_id``)
    and what was read (``what``), never a key; nothing is decoded into garbage.

    A record that cannot be read back, so a :class:`CorruptedStorageError` (retrying
    cannot fix it; listings skip the run), though the stored data is intact: the right
    key reads it again."""
