"""Click parameter types: times, durations, JSON, statuses and list cursors, each refused
with one line naming the value and what is accepted (exit 2)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from pyworkflow.clock import utcnow
from pyworkflow.durations import parse_duration
from pyworkflow.storage.base import RunStatus, decode_cursor

STATUSES = [s.value for s in RunStatus]


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """``30d``, ``12h``, ``1h30m``: a ``timedelta``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value), what="duration")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SinceType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A duration back from now (``2h``, ``3d``) or a moment (ISO 8601; naive means UTC)."""

    name = "duration|time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            return utcnow() - parse_duration(text, what="duration")
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither a duration (e.g. 2h, 3d, 1h30m) nor an ISO time (e.g. 2025-01-31T12:00:00Z)",
                param,
                ctx,
            )
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class JsonType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A JSON document given on the command line."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            self.fail(
                f"{_cut(value)!r} is not valid JSON ({exc}); quote it for the shell, e.g. '{{\"a\": 1}}'", param, ctx
            )


class CursorType(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A ``next_cursor`` an earlier ``runs list`` printed."""

    name = "cursor"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            decode_cursor(text)
        except ValueError:
            self.fail(f"{_cut(text)!r} is not a cursor; pass back the next cursor a listing printed", param, ctx)
        return text


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


DURATION = DurationType()
SINCE = SinceType()
JSON = JsonType()
CURSOR = CursorType()
STATUS = click.Choice(STATUSES, case_sensitive=False)
