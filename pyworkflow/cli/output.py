"""What the commands print: aligned tables and ``key: value`` blocks for people, JSON for
scripts. Times are shown in UTC; JSON carries ISO 8601 times and the stored values as
they are."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import click

from pyworkflow.events import Event
from pyworkflow.storage.base import WorkflowRun

#: The ``runs export`` format, read by ``pyworkflow.testing.replay``.
HISTORY_FORMAT = "pyworkflow.history/1"


def emit_json(value: Any, *, lines: bool = False) -> None:
    """``value`` as JSON on stdout: indented, or one compact line (JSON Lines)."""
    text = json.dumps(value, default=_default, ensure_ascii=False, indent=None if lines else 2)
    click.echo(text)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    return str(value)


def when(value: datetime | None) -> str:
    """A time for a table: ``2025-01-31 12:00:05`` (UTC), or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cut(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """An aligned table on stdout, one line per row; the last column is not padded."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + row[-1:]
        click.echo("  ".join(padded).rstrip())


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """``key: value`` lines, keys aligned."""
    items = [(k, "-" if v is None else str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        click.echo(f"{key + ':':<{width + 1}} {value}")


def run_json(run: WorkflowRun) -> dict[str, Any]:
    return run.model_dump(mode="json")


def event_json(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json")


def error_line(error: dict[str, Any] | None) -> str:
    """``Type: message`` of a recorded error."""
    if not error:
        return ""
    kind, message = error.get("type"), error.get("message")
    return f"{kind}: {message}" if kind and message else str(message or kind or error)


def compact(value: Any, width: int = 60) -> str:
    """A JSON value on one line, cut to ``width``."""
    return cut(json.dumps(value, default=_default, ensure_ascii=False), width)


def event_summary(event: Event) -> str:
    """What an event says, in one short line."""
    data = event.data
    parts = []
    for key in ("workflow", "step", "name", "kind", "attempt", "key"):
        if key in data and data[key] is not None:
            parts.append(f"{key}={data[key]}")
    for key in ("wake_at", "resume_at", "timeout_at"):
        if data.get(key):
            parts.append(f"{key}={data[key]}")
    if isinstance(data.get("error"), dict):
        parts.append(error_line(data["error"]))
    elif "message" in data and isinstance(data["message"], str):
        parts.append(data["message"])
    if event.type == "workflow.completed":
        parts.append(f"result={compact(data.get('result'))}")
    return cut(" ".join(parts), 100)
