"""Structured logging on structlog, with run and step context added automatically.

PyWorkflow logs through the stdlib logger ``"pyworkflow"`` with a processor chain of its
own; it never configures structlog globally and never touches the root logger. Until
:func:`configure_logging` is called, records propagate to whatever the host application
set up, rendered as ``key=value`` text.

Workflow code gets a logger from :func:`get_logger`. Its lines are also recorded in the
run's log as ``log.<level>`` events — once: replay skips the lines already recorded.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from pyworkflow import replay
from pyworkflow.serialization import encode

_stdlib = logging.getLogger("pyworkflow")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_show_context = True


def _add_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    if not _show_context:
        return event
    ctx = replay.current_run()
    if ctx is not None:
        event.setdefault("run_id", ctx.run_id)
        event.setdefault("workflow", ctx.workflow)
    step = replay.current_step()
    if step is not None:
        event.setdefault("step", step.step)
        event.setdefault("attempt", step.attempt)
    return event


def _chain(final: Any) -> list[Any]:
    return [
        structlog.stdlib.add_log_level,
        _add_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        final,
    ]


_log: Any = structlog.wrap_logger(
    _stdlib,
    processors=_chain(structlog.processors.KeyValueRenderer(sort_keys=False)),
    wrapper_class=structlog.stdlib.BoundLogger,
)


def configure_logging(
    level: str | int = "INFO",
    log_file: str | None = None,
    json_logs: bool = False,
    show_context: bool = True,
) -> None:
    """Send PyWorkflow's logs to stderr (and ``log_file``), as text or JSON lines.

    Only the ``"pyworkflow"`` logger is configured; it stops propagating to the root
    logger so lines are not printed twice. Calling it again replaces the previous setup.
    ``show_context`` adds ``run_id``, ``workflow``, ``step`` and ``attempt`` to each line.
    """
    global _log, _show_context
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"configure_logging: unknown level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    renderer: Any = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
    )
    for handler in list(_stdlib.handlers):
        _stdlib.removeHandler(handler)
        handler.close()
    streams: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        streams.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in streams:
        handler.setFormatter(formatter)
        _stdlib.addHandler(handler)
    _stdlib.setLevel(numeric)
    _stdlib.propagate = False
    _show_context = show_context
    _log = structlog.wrap_logger(
        _stdlib,
        processors=_chain(structlog.stdlib.ProcessorFormatter.wrap_for_formatter),
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def engine_log(event: str, level: str = "debug", **fields: Any) -> None:
    """The engine's own lines (``step_completed`` …); cheap when the level is off."""
    if _stdlib.isEnabledFor(_LEVELS[level]):
        getattr(_log, level)(event, **fields)


def _jsonable(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fields.items():
        try:
            out[key] = encode(value)
        except Exception:  # noqa: BLE001 - a log field must never break a run
            out[key] = repr(value)
    return out


class WorkflowLogger:
    """A logger for workflow and step code whose lines are recorded in the run's log."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        ctx = replay.current_run()
        if ctx is not None and not ctx.closed:
            step = replay.current_step()
            if step is None:
                call_id = ctx.next_log_call()
                if call_id is None:
                    return  # recorded by an earlier activation: replay stays quiet
                data: dict[str, Any] = {"message": message, "fields": _jsonable(fields), "call_id": call_id}
            else:
                data = {
                    "message": message,
                    "fields": _jsonable(fields),
                    "step_call_id": step.call_id,
                    "attempt": step.attempt,
                }
            ctx.buffer_event(f"log.{level}", data)
        if _stdlib.isEnabledFor(_LEVELS[level]):
            if self.name:
                fields = {"logger": self.name, **fields}
            getattr(_log, level)(message, **fields)

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


def get_logger(name: str | None = None) -> WorkflowLogger:
    """A logger for workflow code: ``log = get_logger(); log.info("charged", amount=3)``."""
    return WorkflowLogger(name)


__all__ = ["WorkflowLogger", "configure_logging", "get_logger"]
