"""What ``@workflow`` and ``@step`` register, looked up by name."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pyworkflow.backoff import RetryPolicy
from pyworkflow.errors import WorkflowNotFoundError
from pyworkflow.serialization import Signature

if TYPE_CHECKING:
    from pyworkflow.schedules.spec import Schedule

AsyncFn = Callable[..., Coroutine[Any, Any, Any]]


@dataclass
class WorkflowDefinition:
    name: str
    fn: AsyncFn
    signature: Signature
    max_duration: timedelta | None = None
    #: When replay meets another durable call than the log holds: ``"block"`` the run
    #: (it waits for a fix and ``retry``) or ``"fail"`` it.
    on_nondeterminism: str = "block"
    #: Declared with ``@workflow(schedule=...)``: created or updated when a worker or beat starts.
    schedule: Schedule | None = None


@dataclass
class StepDefinition:
    name: str
    fn: AsyncFn
    signature: Signature
    retry: RetryPolicy
    timeout: float | None = None
    queue: str | None = None
    #: ``"finish"``: a cancellation waits for a running attempt to end and records it.
    finish_on_cancel: bool = False


_workflows: dict[str, WorkflowDefinition] = {}
_steps: dict[str, StepDefinition] = {}


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    return fn.__module__, fn.__qualname__


def _register(table: dict[str, Any], kind: str, definition: WorkflowDefinition | StepDefinition) -> None:
    existing = table.get(definition.name)
    # The same function defined again (a module re-executed, a test re-run) replaces the
    # old one; a different function under a taken name is a mistake.
    if existing is not None and _origin(existing.fn) != _origin(definition.fn):
        module, qualname = _origin(existing.fn)
        raise ValueError(
            f"{kind} name {definition.name!r} is already used by {module}.{qualname}; "
            f"give {definition.fn.__module__}.{definition.fn.__qualname__} another name=..."
        )
    table[definition.name] = definition


def register_workflow(definition: WorkflowDefinition) -> None:
    _register(_workflows, "workflow", definition)


def register_step(definition: StepDefinition) -> None:
    _register(_steps, "step", definition)


def get_workflow(name: str) -> WorkflowDefinition:
    try:
        return _workflows[name]
    except KeyError:
        raise WorkflowNotFoundError(name, f"registered workflows: {sorted(_workflows) or 'none'}") from None


def get_step(name: str) -> StepDefinition | None:
    return _steps.get(name)


def workflow_names() -> list[str]:
    return sorted(_workflows)


def workflow_definitions() -> list[WorkflowDefinition]:
    """Every registered workflow, by name."""
    return [_workflows[name] for name in sorted(_workflows)]


def definition_of(fn: Any) -> WorkflowDefinition:
    """The workflow behind a decorated function or a registered name."""
    if isinstance(fn, str):
        return get_workflow(fn)
    definition = getattr(fn, "__pyworkflow_workflow__", None)
    if definition is None:
        raise TypeError(f"{fn!r} is not a workflow: decorate it with @workflow")
    return definition  # type: ignore[no-any-return]
