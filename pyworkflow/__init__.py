"""PyWorkflow: durable async workflows on Celery.

from pyworkflow import workflow, step, sleep

@step(max_retries=5, retry_delay="exponential")
async def charge(order_id: str) -> dict: ...

@workflow(name="process_order", max_duration="1h")
async def process_order(order_id: str) -> dict:
    payment = await charge(order_id)
    await sleep("1d")
    return payment
"""

import importlib
from typing import TYPE_CHECKING, Any

from pyworkflow.children import ChildHandle, run_child, start_child
from pyworkflow.client import get_run, get_run_async, start, start_async, wait_for_result, wait_for_result_async
from pyworkflow.config import configure
from pyworkflow.continuation import WorkflowInfo, continue_as_new, workflow_info
from pyworkflow.control import (
    cancel,
    cancel_async,
    pause,
    pause_async,
    retry,
    retry_async,
    unpause,
    unpause_async,
)
from pyworkflow.errors import (
    ChildWorkflowError,
    FatalError,
    NonDeterminismError,
    PyWorkflowError,
    RetryableError,
    RunFailedError,
    RunFinishedError,
    RunNotFoundError,
    RunNotRetryableError,
    ScheduleNotFoundError,
    SerializationError,
    SignalTimeoutError,
    WorkflowTimeoutError,
)
from pyworkflow.interceptors import Interceptor, add_interceptor, remove_interceptor
from pyworkflow.observability import configure_logging, get_logger
from pyworkflow.primitives import now, random, sleep, step, uuid4, workflow
from pyworkflow.replay import StepInfo, current_step
from pyworkflow.signals import (
    get_state,
    get_state_async,
    send_signal,
    send_signal_async,
    set_state,
    wait_for_signal,
)
from pyworkflow.storage.base import RunStatus
from pyworkflow.versioning import deprecate_patch, patched
from pyworkflow.webhooks import Webhook, create_webhook

__version__ = "0.1.0"

#: Exported names whose modules load on first use: schedules bring croniter and their
#: models, which a process that never schedules should not keep on its heap (every full
#: garbage-collection pass walks what is loaded).
_LAZY = {
    name: "pyworkflow.schedules"
    for name in (
        "Schedule",
        "ScheduleInfo",
        "backfill_schedule",
        "backfill_schedule_async",
        "create_schedule",
        "create_schedule_async",
        "delete_schedule",
        "delete_schedule_async",
        "get_schedule",
        "get_schedule_async",
        "list_schedules",
        "list_schedules_async",
        "pause_schedule",
        "pause_schedule_async",
        "resume_schedule",
        "resume_schedule_async",
        "trigger_schedule",
        "trigger_schedule_async",
    )
}

if TYPE_CHECKING:
    from pyworkflow.schedules import (
        Schedule,
        ScheduleInfo,
        backfill_schedule,
        backfill_schedule_async,
        create_schedule,
        create_schedule_async,
        delete_schedule,
        delete_schedule_async,
        get_schedule,
        get_schedule_async,
        list_schedules,
        list_schedules_async,
        pause_schedule,
        pause_schedule_async,
        resume_schedule,
        resume_schedule_async,
        trigger_schedule,
        trigger_schedule_async,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyworkflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ChildHandle",
    "ChildWorkflowError",
    "FatalError",
    "Interceptor",
    "NonDeterminismError",
    "PyWorkflowError",
    "RetryableError",
    "RunFailedError",
    "RunFinishedError",
    "RunNotFoundError",
    "RunNotRetryableError",
    "RunStatus",
    "Schedule",
    "ScheduleInfo",
    "ScheduleNotFoundError",
    "SerializationError",
    "SignalTimeoutError",
    "StepInfo",
    "Webhook",
    "WorkflowInfo",
    "WorkflowTimeoutError",
    "add_interceptor",
    "backfill_schedule",
    "backfill_schedule_async",
    "cancel",
    "cancel_async",
    "configure",
    "configure_logging",
    "continue_as_new",
    "create_schedule",
    "create_schedule_async",
    "create_webhook",
    "current_step",
    "delete_schedule",
    "delete_schedule_async",
    "deprecate_patch",
    "get_logger",
    "get_run",
    "get_run_async",
    "get_schedule",
    "get_schedule_async",
    "get_state",
    "get_state_async",
    "list_schedules",
    "list_schedules_async",
    "now",
    "patched",
    "pause",
    "pause_async",
    "pause_schedule",
    "pause_schedule_async",
    "random",
    "remove_interceptor",
    "resume_schedule",
    "resume_schedule_async",
    "retry",
    "retry_async",
    "run_child",
    "send_signal",
    "send_signal_async",
    "set_state",
    "sleep",
    "start",
    "start_async",
    "start_child",
    "step",
    "trigger_schedule",
    "trigger_schedule_async",
    "unpause",
    "unpause_async",
    "uuid4",
    "wait_for_result",
    "wait_for_result_async",
    "wait_for_signal",
    "workflow",
    "workflow_info",
]
