"""A run's log drawn as time: one row per durable call, one bar per stretch of time.

:func:`build` walks the events once (a 10,000-event log in a few milliseconds) and
returns a :class:`Timeline` whose bars carry their place on a shared axis as percentages,
so a template draws them to scale with nothing but CSS widths. What becomes a bar:

============ ===========================================================================
row          bars
============ ===========================================================================
activations  each activation: ``workflow.started``/``resumed``/``interrupted`` to the
             ``workflow.suspended``/``paused``/ended event that closed it
step         ``queued`` (dispatched, until a worker starts it), each ``attempt`` (started
             to completed/failed), each ``backoff`` between a failed attempt and the next
sleep        ``sleep.created`` to ``sleep.completed`` (or the cancellation)
signal wait  ``signal.waiting`` to the ``signal.received`` it took (oldest wait of a name
             takes the oldest signal, as :mod:`pyworkflow.history` decides), or its
             ``signal.timed_out``
child        ``child.started`` to ``child.completed`` (a link to the child run)
============ ===========================================================================

Signals received, cancellation and retry requests and interruptions are markers (points
in time). A bar still open is drawn to the end of the axis (now, for a run that has not
ended) and marked ``ongoing``; its planned end (a sleep's wake time) is kept for the label.

Only the first ``max_rows`` calls get rows; :attr:`Timeline.by_name` sums every call by
kind and name, so a long run still shows where its time went.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyworkflow.events import Event

#: Tick spacings the axis may use, in seconds.
_TICKS = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    4 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)
_MIN_WIDTH = 0.25  # percent: a bar of an instant is still visible
_ENDS = {
    "workflow.suspended": "suspended",
    "workflow.paused": "paused",
    "workflow.completed": "completed",
    "workflow.failed": "failed",
    "workflow.cancelled": "cancelled",
    "workflow.blocked": "blocked",
    "workflow.continued": "continued",
}
_FINAL = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled", "workflow.continued"})
_BEGINS = {"workflow.started", "workflow.resumed", "workflow.interrupted", "workflow.retried"}


@dataclass(slots=True)
class Bar:
    """One stretch of time on a row."""

    kind: str  # activation, queued, attempt, backoff, sleep, wait, child
    start: datetime
    end: datetime | None = None  # None: still open
    state: str = "running"  # completed, failed, cancelled, timed_out, running, waiting …
    label: str = ""
    planned: datetime | None = None  # a sleep's wake time, a backoff's resume time
    left: float = 0.0  # percent of the axis, set by Timeline.place
    width: float = 0.0
    ongoing: bool = False

    def duration(self, until: datetime) -> timedelta:
        return (self.end or until) - self.start


@dataclass(slots=True)
class Row:
    """One durable call (or the run's activations)."""

    key: str
    kind: str  # activations, step, sleep, signal, child
    name: str
    bars: list[Bar] = field(default_factory=list)
    call_id: int | None = None
    link: str | None = None  # a child's run id
    state: str = "running"

    def total(self, until: datetime) -> timedelta:
        return sum((bar.duration(until) for bar in self.bars), timedelta())


@dataclass(slots=True)
class Marker:
    """A point in time: a signal received, a cancellation or retry asked for, a crash."""

    at: datetime
    kind: str  # signal, cancel, retry, interrupted, pause, unpause
    label: str
    left: float = 0.0


@dataclass(slots=True)
class NameTotal:
    """Every call of one kind and name: how many, how long in all, how many failed."""

    kind: str
    name: str
    calls: int = 0
    attempts: int = 0
    failures: int = 0
    busy: timedelta = field(default_factory=timedelta)  # attempts (steps) or the bars' sum
    waiting: timedelta = field(default_factory=timedelta)  # queued and backoff (steps)
    share: float = 0.0  # percent of the largest total, for a bar


@dataclass(slots=True)
class Tick:
    left: float
    label: str


@dataclass(slots=True)
class Timeline:
    start: datetime
    end: datetime
    rows: list[Row]
    markers: list[Marker]
    by_name: list[NameTotal]
    ticks: list[Tick]
    hidden_rows: int = 0  # calls beyond max_rows, summed in by_name only
    ended: bool = False

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def build(events: Iterable[Event], *, now: datetime, max_rows: int = 200) -> Timeline:
    """The timeline of a run's log; ``now`` ends the axis of a run that has not ended."""
    rows: dict[int, Row] = {}
    order: list[int] = []
    activations = Row("activations", "activations", "activations")
    markers: list[Marker] = []
    waits: dict[str, deque[int]] = {}  # signal waits not yet satisfied, per name
    buffered: dict[str, int] = {}  # signals received before a wait, per name
    first: datetime | None = None
    last: datetime | None = None
    ended_at: datetime | None = None
    current: Bar | None = None  # the open activation

    def row(call_id: Any, kind: str, name: str) -> Row:
        key = int(call_id)
        found = rows.get(key)
        if found is None:
            found = rows[key] = Row(f"call-{key}", kind, name, call_id=key)
            order.append(key)
        return found

    def close(target: Row, at: datetime, state: str, *kinds: str) -> None:
        for bar in reversed(target.bars):
            if bar.end is None and (not kinds or bar.kind in kinds):
                bar.end, bar.state = at, state
                return

    for event in events:
        at, data, kind = event.timestamp, event.data, event.type
        if first is None:
            first = at
        last = at
        try:
            if kind == "step.started":
                r = row(data["call_id"], "step", str(data.get("step")))
                close(r, at, "done", "queued", "backoff")
                attempt = data.get("attempt")
                r.bars.append(Bar("attempt", at, label=f"attempt {attempt}"))
                r.state = "running"
            elif kind in ("step.completed", "step.failed"):
                r = row(data["call_id"], "step", str(data.get("step")))
                state = "completed" if kind == "step.completed" else "failed"
                close(r, at, state, "attempt", "queued")
                r.state = state
            elif kind in _BEGINS:
                if current is not None and current.end is None:
                    current.end, current.state = at, "interrupted"
                if kind == "workflow.retried":
                    markers.append(Marker(at, "retry", "retry requested"))
                elif kind == "workflow.interrupted":
                    markers.append(Marker(at, "interrupted", str(data.get("reason") or "interrupted")))
                current = Bar("activation", at, label=kind.split(".", 1)[1])
                activations.bars.append(current)
            elif kind in _ENDS:
                if current is not None and current.end is None:
                    current.end, current.state = at, _ENDS[kind]
                if kind in _FINAL:
                    ended_at = at
            elif kind == "step.dispatched":
                r = row(data["call_id"], "step", str(data.get("step")))
                r.bars.append(Bar("queued", at, label=f"queued on {data.get('queue') or 'steps'}"))
                r.state = "queued"
            elif kind == "step.retrying":
                r = row(data["call_id"], "step", str(data.get("step")))
                close(r, at, "failed", "attempt")
                resume = _time(data.get("resume_at"))
                r.bars.append(Bar("backoff", at, state="waiting", label="backoff", planned=resume))
                r.state = "retrying"
            elif kind == "sleep.created":
                r = row(data["call_id"], "sleep", "sleep")
                r.bars.append(Bar("sleep", at, state="waiting", label="sleep", planned=_time(data.get("wake_at"))))
                r.state = "waiting"
            elif kind == "sleep.completed":
                r = row(data["call_id"], "sleep", "sleep")
                close(r, at, "completed", "sleep")
                r.state = "completed"
            elif kind == "signal.waiting":
                name = str(data.get("name"))
                r = row(data["call_id"], "signal", name)
                bar = Bar("wait", at, state="waiting", label=f"waits for {name}", planned=_time(data.get("timeout_at")))
                r.bars.append(bar)
                r.state = "waiting"
                if buffered.get(name):
                    buffered[name] -= 1
                    bar.end, bar.state, r.state = at, "completed", "completed"
                else:
                    waits.setdefault(name, deque()).append(r.call_id or 0)
            elif kind == "signal.received":
                name = str(data.get("name"))
                markers.append(Marker(at, "signal", f"signal {name}"))
                queue = waits.get(name)
                if queue:
                    r = rows[queue.popleft()]
                    close(r, at, "completed", "wait")
                    r.state = "completed"
                else:
                    buffered[name] = buffered.get(name, 0) + 1
            elif kind == "signal.timed_out":
                r = row(data["call_id"], "signal", "signal")
                close(r, at, "timed_out", "wait")
                r.state = "timed_out"
                for queue in waits.values():
                    if r.call_id in queue:
                        queue.remove(r.call_id or 0)
            elif kind == "child.started":
                r = row(data["call_id"], "child", str(data.get("workflow")))
                r.link = str(data.get("run_id"))
                r.bars.append(Bar("child", at, state="running", label=f"child {data.get('run_id')}"))
                r.state = "running"
            elif kind == "child.completed":
                r = row(data["call_id"], "child", "child")
                state = str(data.get("status") or "completed")
                close(r, at, state, "child")
                r.state = state
            elif kind == "cancel.requested":
                reason = data.get("reason")
                markers.append(Marker(at, "cancel", f"cancel requested{': ' + str(reason) if reason else ''}"))
                for r in rows.values():  # every wait ends here; running attempts see it at their next await
                    for bar in r.bars:
                        if bar.end is None and bar.kind in ("queued", "backoff", "sleep", "wait"):
                            bar.end, bar.state = at, "cancelled"
                            r.state = "cancelled"
                waits.clear()
            elif kind == "call.cancelled":
                r = row(data["call_id"], str(data.get("kind") or "step"), str(data.get("name")))
                r.state = "cancelled"
            elif kind == "pause.requested":
                markers.append(Marker(at, "pause", "pause requested"))
            elif kind == "pause.lifted":
                markers.append(Marker(at, "unpause", "unpaused"))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed event draws nothing; the event list still shows it

    start = first or now
    end = ended_at or max(now, last or now)
    if ended_at is not None:
        # bars left open by a run that ended (a child detached, an attempt cut short) end with it
        for r in [activations, *rows.values()]:
            for bar in r.bars:
                if bar.end is None:
                    bar.end = ended_at
    timeline = Timeline(
        start=start,
        end=end,
        rows=[activations] + [rows[k] for k in order[:max_rows]]
        if activations.bars
        else [rows[k] for k in order[:max_rows]],
        markers=markers,
        by_name=_by_name(rows.values(), end),
        ticks=_ticks(start, end),
        hidden_rows=max(0, len(order) - max_rows),
        ended=ended_at is not None,
    )
    _place(timeline)
    return timeline


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _place(timeline: Timeline) -> None:
    span = timeline.span.total_seconds() or 1e-9
    start = timeline.start

    def pct(at: datetime) -> float:
        return min(100.0, max(0.0, (at - start).total_seconds() / span * 100))

    for r in timeline.rows:
        for bar in r.bars:
            bar.ongoing = bar.end is None
            left = pct(bar.start)
            right = pct(bar.end or timeline.end)
            bar.left = round(left, 3)
            bar.width = round(max(_MIN_WIDTH, right - left), 3)
            if bar.left + bar.width > 100:
                bar.left = round(max(0.0, 100 - bar.width), 3)
    for marker in timeline.markers:
        marker.left = round(pct(marker.at), 3)


def _by_name(rows: Iterable[Row], until: datetime) -> list[NameTotal]:
    totals: dict[tuple[str, str], NameTotal] = {}
    for r in rows:
        total = totals.get((r.kind, r.name))
        if total is None:
            total = totals[(r.kind, r.name)] = NameTotal(r.kind, r.name)
        total.calls += 1
        if r.state in ("failed", "timed_out", "cancelled"):
            total.failures += 1
        for bar in r.bars:
            took = bar.duration(until)
            if bar.kind in ("queued", "backoff"):
                total.waiting += took
            else:
                total.busy += took
                total.attempts += bar.kind == "attempt"
    ranked = sorted(totals.values(), key=lambda t: t.busy + t.waiting, reverse=True)
    largest = max(((t.busy + t.waiting).total_seconds() for t in ranked), default=0.0) or 1e-9
    for t in ranked:
        t.share = round((t.busy + t.waiting).total_seconds() / largest * 100, 2)
    return ranked


def _ticks(start: datetime, end: datetime, wanted: int = 6) -> list[Tick]:
    span = (end - start).total_seconds()
    if span <= 0:
        return [Tick(0.0, "0")]
    step = next((s for s in _TICKS if span / s <= wanted), _TICKS[-1])
    ticks = []
    n = 0
    while n * step <= span * 1.0000001:
        ticks.append(Tick(round(n * step / span * 100, 3), short_duration(n * step)))
        n += 1
    return ticks


def short_duration(seconds: float) -> str:
    """``0``, ``250ms``, ``1.5s``, ``2m``, ``1h30m``, ``2d4h``: an axis label or a bar's length."""
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.3g}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
