"""A run's log as a timeline: bars to scale, signal waits matched as the replay matches
them (FIFO per name), a cancellation ending every wait, long runs summed by name."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pyworkflow.dashboard.timeline import build, short_duration
from pyworkflow.events import Event

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def log(*entries: tuple[float, str, dict[str, Any]]) -> list[Event]:
    return [
        Event(seq=i + 1, type=kind, timestamp=T0 + timedelta(seconds=at), data=data)
        for i, (at, kind, data) in enumerate(entries)
    ]


def test_bars_are_drawn_to_scale() -> None:
    events = log(
        (0, "workflow.started", {}),
        (0, "step.started", {"call_id": 1, "step": "fetch", "attempt": 1}),
        (10, "step.completed", {"call_id": 1, "step": "fetch", "attempt": 1}),
        (10, "sleep.created", {"call_id": 2, "wake_at": (T0 + timedelta(seconds=40)).isoformat()}),
        (10, "workflow.suspended", {}),
        (40, "workflow.resumed", {}),
        (40, "sleep.completed", {"call_id": 2}),
        (40, "step.started", {"call_id": 3, "step": "save", "attempt": 1}),
        (50, "step.failed", {"call_id": 3, "step": "save", "attempt": 1}),
        (50, "workflow.failed", {}),
    )
    timeline = build(events, now=T0 + timedelta(hours=1))
    assert timeline.ended and timeline.span == timedelta(seconds=50)
    rows = {r.name: r for r in timeline.rows}
    fetch, nap, save = rows["fetch"].bars[0], rows["sleep"].bars[0], rows["save"].bars[0]
    assert (fetch.left, fetch.width) == (0.0, 20.0)
    assert (nap.left, nap.width) == (20.0, 60.0)
    assert (save.left, save.width, save.state) == (80.0, 20.0, "failed")
    assert [(b.left, b.width, b.state) for b in rows["activations"].bars] == [
        (0.0, 20.0, "suspended"),
        (80.0, 20.0, "failed"),
    ]
    assert [t.label for t in timeline.ticks] == ["0", "10s", "20s", "30s", "40s", "50s"]


def test_retries_show_attempts_and_backoff() -> None:
    resume = (T0 + timedelta(seconds=25)).isoformat()
    events = log(
        (0, "workflow.started", {}),
        (0, "step.started", {"call_id": 1, "step": "charge", "attempt": 1}),
        (5, "step.retrying", {"call_id": 1, "step": "charge", "attempt": 1, "resume_at": resume}),
        (25, "step.started", {"call_id": 1, "step": "charge", "attempt": 2}),
        (30, "step.completed", {"call_id": 1, "step": "charge", "attempt": 2}),
        (30, "workflow.completed", {}),
    )
    timeline = build(events, now=T0)
    (charge,) = [r for r in timeline.rows if r.kind == "step"]
    assert [(b.kind, b.state, b.duration(timeline.end).total_seconds()) for b in charge.bars] == [
        ("attempt", "failed", 5.0),
        ("backoff", "done", 20.0),
        ("attempt", "completed", 5.0),
    ]
    (total,) = [t for t in timeline.by_name if t.name == "charge"]
    assert (total.calls, total.attempts, total.busy, total.waiting) == (
        1,
        2,
        timedelta(seconds=10),
        timedelta(seconds=20),
    )


def test_signal_waits_take_signals_oldest_first_and_a_cancellation_ends_the_rest() -> None:
    events = log(
        (0, "workflow.started", {}),
        (0, "signal.received", {"name": "go", "payload": 1}),  # buffered before any wait
        (1, "signal.waiting", {"call_id": 1, "name": "go", "timeout_at": None}),  # takes it at once
        (1, "signal.waiting", {"call_id": 2, "name": "go", "timeout_at": None}),
        (2, "signal.waiting", {"call_id": 3, "name": "go", "timeout_at": None}),
        (5, "signal.received", {"name": "go", "payload": 2}),  # the oldest open wait: call 2
        (8, "cancel.requested", {"reason": "stop"}),
        (9, "workflow.cancelled", {}),
    )
    timeline = build(events, now=T0 + timedelta(days=1))
    waits = {r.call_id: r.bars[0] for r in timeline.rows if r.kind == "signal"}
    assert (waits[1].state, waits[1].end) == ("completed", T0 + timedelta(seconds=1))
    assert (waits[2].state, waits[2].end) == ("completed", T0 + timedelta(seconds=5))
    assert (waits[3].state, waits[3].end) == ("cancelled", T0 + timedelta(seconds=8))
    assert [m.kind for m in timeline.markers] == ["signal", "signal", "cancel"]
    assert timeline.markers[-1].label == "cancel requested: stop"


def test_an_open_run_ends_its_axis_now_and_marks_open_bars() -> None:
    events = log(
        (0, "workflow.started", {}),
        (0, "sleep.created", {"call_id": 1, "wake_at": (T0 + timedelta(days=1)).isoformat()}),
        (0, "workflow.suspended", {}),
    )
    timeline = build(events, now=T0 + timedelta(seconds=30))
    assert not timeline.ended and timeline.end == T0 + timedelta(seconds=30)
    (nap,) = [r.bars[0] for r in timeline.rows if r.kind == "sleep"]
    assert nap.ongoing and (nap.left, nap.width) == (0.0, 100.0) and nap.planned == T0 + timedelta(days=1)


def test_only_the_first_rows_are_drawn_and_every_call_is_summed() -> None:
    entries: list[tuple[float, str, dict[str, Any]]] = [(0, "workflow.started", {})]
    for i in range(1, 501):
        entries.append((i, "step.started", {"call_id": i, "step": f"s{i % 2}", "attempt": 1}))
        entries.append((i + 0.5, "step.completed", {"call_id": i, "step": f"s{i % 2}", "attempt": 1}))
    timeline = build(log(*entries), now=T0 + timedelta(seconds=600), max_rows=100)
    assert len([r for r in timeline.rows if r.kind == "step"]) == 100 and timeline.hidden_rows == 400
    assert sorted((t.name, t.calls) for t in timeline.by_name) == [("s0", 250), ("s1", 250)]


def test_malformed_events_draw_nothing_and_break_nothing() -> None:
    events = log(
        (0, "workflow.started", {}),
        (1, "step.started", {"step": "no call id"}),
        (2, "sleep.created", {"call_id": "x"}),
        (3, "some.future.event", {"call_id": 1}),
    )
    timeline = build(events, now=T0 + timedelta(seconds=3))
    assert [r.kind for r in timeline.rows] == ["activations"]


def test_short_durations() -> None:
    assert [short_duration(s) for s in (0, 0.25, 1.5, 60, 95, 3600, 5400, 86400, 90000)] == [
        "0",
        "250ms",
        "1.5s",
        "1m",
        "1m35s",
        "1h",
        "1h30m",
        "1d",
        "1d1h",
    ]
