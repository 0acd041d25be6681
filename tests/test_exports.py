import pyworkflow
import pyworkflow.testing

PUBLIC = [
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


def test_public_api_is_locked() -> None:
    assert pyworkflow.__all__ == PUBLIC, "a change to the public API must be deliberate: update this list"
    assert sorted(pyworkflow.__all__) == pyworkflow.__all__
    for name in PUBLIC:
        assert hasattr(pyworkflow, name)


def test_readme_imports_work() -> None:
    from pyworkflow import FatalError, RetryableError, configure_logging, sleep, step, workflow  # noqa: F401
    from pyworkflow.storage.file import FileStorageBackend  # noqa: F401
    from pyworkflow.storage.memory import InMemoryStorageBackend  # noqa: F401
    from pyworkflow.testing import resume_local, start_local  # noqa: F401

    assert pyworkflow.testing.__all__ == sorted(pyworkflow.testing.__all__)


def test_no_pickle_anywhere() -> None:
    import re
    from pathlib import Path

    package = Path(pyworkflow.__file__).parent
    use = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle)\b|pickle\.(loads?|dumps?)\(", re.M)
    offenders = [str(path) for path in package.rglob("*.py") if use.search(path.read_text())]
    assert offenders == []
