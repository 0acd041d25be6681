"""The promises every chaos test checks, in one place.

:func:`verify` waits (polling storage, within a deadline) until every run completed, then
reads each run's log and the side-effect journal the steps wrote
(:mod:`tests.chaos.journal`) and checks:

* **every run completes**: status ``completed`` before the deadline, never failed;
* **the log is whole**: event seqs are exactly 1..n, one ``workflow.started`` first, one
  ``workflow.completed`` last, no durable call recorded twice (two ``step.completed``
  of one call, two ``step.started`` of one attempt, two ``sleep.created`` …), and every
  ``step.completed`` names an attempt whose ``step.started`` came before it;
* **no completed step runs again**: once a call's ``step.completed`` is recorded (attempt
  A, stamped when its body finished at time T), no body of that call starts after T or
  with an attempt number above A; and a body of attempt A did finish, before T;
* **no step runs in two places at once**: the bodies of one call never overlap in time.
  A body with no ``end`` line ran until its process group was SIGKILLed (``kills``),
  or, when nobody killed it, for ever;
* optionally, **no re-run without a crash**: with ``reruns_from`` given, a call may run
  more than one body only if each extra body ran in one of those process groups (the
  workers a test killed); ``reruns_from=()`` means every step body ran exactly once.

A failure lists every violation with its run, call and the attempts involved.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyworkflow.events import Event
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun
from tests.chaos import journal
from tests.chaos.journal import Attempt

#: Events that record one durable call (by ``call_id``) and may appear once per call, or
#: once per attempt for the ones listed in _PER_ATTEMPT.
_PER_ATTEMPT = frozenset({"step.started", "step.retrying"})
_ONCE_PER_RUN = frozenset({"workflow.started", "workflow.completed", "workflow.failed"})
_LOG_TYPES = frozenset({"log.info", "log.warning", "log.error", "log.debug"})


class InvariantViolation(AssertionError):
    """One or more promises broken; the message lists each with its run and call."""


@dataclass
class Summary:
    """What a verified chaos run did, for the test's report."""

    runs: int = 0
    events: int = 0
    bodies: int = 0  # step bodies started, in every process
    reruns: int = 0  # bodies beyond one per call (at-least-once after a crash or a lost lease)
    unfinished: int = 0  # bodies whose process died under them
    reused_attempts: list[str] = field(default_factory=list)  # one attempt number run twice (noted only)
    recoveries: list[float] = field(default_factory=list)  # kill -> the interrupted call's body starts again

    def describe(self) -> str:
        text = (
            f"{self.runs} runs completed, {self.events} events, {self.bodies} step bodies "
            f"({self.reruns} re-runs, {self.unfinished} cut by a kill)"
        )
        if self.recoveries:
            text += (
                f"; kill -> step running again: p50 {statistics.median(self.recoveries):.2f} s,"
                f" max {max(self.recoveries):.2f} s over {len(self.recoveries)} interrupted bodies"
            )
        if self.reused_attempts:
            text += f"; attempt numbers reused: {len(self.reused_attempts)}"
        return text


# -- waiting ------------------------------------------------------------------------------


def wait_completed(
    storage: StorageBackend, run_ids: Iterable[str], timeout: float, *, poll: float = 0.2, context: str = ""
) -> dict[str, WorkflowRun]:
    """Poll storage until every run is ``completed``; fail at once when one failed or was
    cancelled, and after ``timeout`` seconds naming the runs still unfinished."""
    pending = list(dict.fromkeys(run_ids))
    done: dict[str, WorkflowRun] = {}
    deadline = time.monotonic() + timeout
    while True:
        still: list[str] = []
        for run_id in pending:
            run = PROCESS_LOOP.run(storage.get_run(run_id))
            if run is None:
                raise InvariantViolation(f"run {run_id} is missing from storage{_context(context)}")
            if run.status == RunStatus.COMPLETED:
                done[run_id] = run
            elif run.status.is_terminal:
                raise InvariantViolation(f"run {run_id} ended {run.status.value}: {run.error}{_context(context)}")
            else:
                still.append(run_id)
        pending = still
        if not pending:
            return done
        if time.monotonic() > deadline:
            lines = [_stuck(storage, run_id) for run_id in pending[:10]]
            more = f"\n  … and {len(pending) - 10} more" if len(pending) > 10 else ""
            raise InvariantViolation(
                f"{len(pending)} of {len(done) + len(pending)} runs not completed within {timeout:g} s "
                f"(a lost or stuck run):\n  " + "\n  ".join(lines) + more + _context(context)
            )
        time.sleep(poll)


def _stuck(storage: StorageBackend, run_id: str) -> str:
    run = PROCESS_LOOP.run(storage.get_run(run_id))
    events = PROCESS_LOOP.run(storage.get_events(run_id))
    timer = PROCESS_LOOP.run(storage.get_timer(run_id))
    tail = ", ".join(f"{e.seq}:{e.type}" for e in events[-6:])
    status = run.status.value if run is not None else "missing"
    return f"run {run_id}: {status}, timer {timer.wake_at.isoformat() if timer else None}, last events [{tail}]"


def _context(context: str) -> str:
    return f"\n{context}" if context else ""


# -- the log ------------------------------------------------------------------------------


def check_events(run_id: str, events: list[Event]) -> list[str]:
    """The violations in one completed run's log (empty when it is whole)."""
    problems: list[str] = []
    seqs = [e.seq for e in events]
    if seqs != list(range(1, len(events) + 1)):
        problems.append(f"run {run_id}: event seqs are not 1..{len(events)} without gaps or duplicates: {seqs}")
    types = [e.type for e in events]
    for kind in _ONCE_PER_RUN:
        if types.count(kind) > 1:
            at = [e.seq for e in events if e.type == kind]
            problems.append(f"run {run_id}: {types.count(kind)} {kind} events (seqs {at})")
    if not events or events[0].type != "workflow.started":
        problems.append(f"run {run_id}: the log does not begin with workflow.started: {types[:3]}")
    if not events or events[-1].type != "workflow.completed":
        problems.append(f"run {run_id}: the log does not end with workflow.completed: {types[-3:]}")
    seen: dict[tuple[str, int, int | None], int] = {}
    started: set[tuple[int, int]] = set()
    for event in events:
        call = event.data.get("call_id")
        if event.type in _LOG_TYPES or not isinstance(call, int):
            continue
        attempt = event.data.get("attempt") if event.type in _PER_ATTEMPT else None
        key = (event.type, call, attempt)
        if key in seen:
            which = f"call {call}" + (f" attempt {attempt}" if attempt is not None else "")
            problems.append(
                f"run {run_id} {which} ({event.data.get('step', '?')}): duplicate {event.type} "
                f"at seqs {seen[key]} and {event.seq}"
            )
        else:
            seen[key] = event.seq
        if event.type == "step.started":
            started.add((call, int(event.data.get("attempt", 0))))
        elif event.type == "step.completed":
            attempt = int(event.data.get("attempt", 0))
            if (call, attempt) not in started:
                problems.append(
                    f"run {run_id} call {call} ({event.data.get('step', '?')}): step.completed (seq {event.seq}) "
                    f"of attempt {attempt}, which no earlier step.started names"
                )
    return problems


@dataclass(frozen=True)
class Completion:
    attempt: int
    at: float  # when its body finished (the event's timestamp), time.time() scale
    seq: int
    step: str


def completions(events: list[Event]) -> dict[int, Completion]:
    """The recorded completion of each step call, by call id (the first, if duplicated)."""
    out: dict[int, Completion] = {}
    for event in events:
        if event.type == "step.completed" and event.data.get("call_id") not in out:
            out[int(event.data["call_id"])] = Completion(
                int(event.data.get("attempt", 0)), event.timestamp.timestamp(), event.seq, str(event.data.get("step"))
            )
    return out


# -- the journal --------------------------------------------------------------------------


def check_bodies(
    run_id: str,
    call: int,
    bodies: list[Attempt],
    completion: Completion | None,
    *,
    kills: Mapping[int, float],
    reruns_from: Collection[int] | None,
) -> list[str]:
    """The violations among the step bodies of one call of one run."""
    problems: list[str] = []
    name = completion.step if completion else (bodies[0].step if bodies else "?")
    where = f"run {run_id} call {call} ({name})"
    if completion is not None:
        ran = [b for b in bodies if b.attempt == completion.attempt and b.finished and (b.end or 0.0) <= completion.at]
        if not ran:
            problems.append(
                f"{where}: step.completed (seq {completion.seq}) of attempt {completion.attempt}, but no body of "
                f"that attempt finished before it; bodies: {_list(bodies)}"
            )
        again = [b for b in bodies if b.start > completion.at or b.attempt > completion.attempt]
        if again:
            problems.append(
                f"{where}: a completed step ran again: completion of attempt {completion.attempt} recorded "
                f"(seq {completion.seq}, body finished at {completion.at:.3f}), then {_list(again)}"
            )
    elif bodies:
        problems.append(f"{where}: step bodies ran but no step.completed was recorded: {_list(bodies)}")
    ordered = sorted(bodies, key=lambda b: b.start)
    latest: Attempt | None = None
    latest_end = float("-inf")
    for body in ordered:
        if latest is not None and body.start < latest_end:
            problems.append(
                f"{where}: a step ran in two places at once: {latest.describe()} "
                f"(until {_end_text(latest_end)}) overlaps {body.describe()}"
            )
        end = _end(body, kills)
        if end > latest_end:
            latest, latest_end = body, end
    if reruns_from is not None and len(bodies) > 1:
        recorded = completion.attempt if completion is not None else None
        extra = [b for b in bodies if b.attempt != recorded or not b.finished]
        unexplained = [b for b in extra if b.pgid not in reruns_from]
        if unexplained:
            problems.append(
                f"{where}: the step ran {len(bodies)} times though no worker it ran in was killed: "
                f"{_list(unexplained)} besides the recorded attempt {recorded}"
            )
    return problems


def _end(body: Attempt, kills: Mapping[int, float]) -> float:
    if body.end is not None:
        return body.end
    return kills.get(body.pgid, float("inf"))


def _end_text(end: float) -> str:
    return "still running" if end == float("inf") else f"{end:.3f}"


def _list(bodies: Iterable[Attempt]) -> str:
    return "; ".join(b.describe() for b in bodies)


def recovery_times(bodies: list[Attempt], kills: Mapping[int, float]) -> list[float]:
    """For each body cut by a kill: seconds from the kill until its call's body started
    again (anywhere)."""
    by_call: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
    for body in bodies:
        by_call[(body.run, body.call)].append(body)
    times = []
    for group in by_call.values():
        for body in group:
            killed = kills.get(body.pgid)
            if body.end is None and killed is not None:
                later = [b.start for b in group if b.start > killed]
                if later:
                    times.append(min(later) - killed)
    return times


# -- everything ---------------------------------------------------------------------------


def verify(
    storage: StorageBackend,
    run_ids: Iterable[str],
    journal_path: Path,
    *,
    timeout: float,
    kills: Mapping[int, float] | None = None,
    reruns_from: Collection[int] | None = None,
    expected: Mapping[str, Any] | None = None,
    context: str = "",
) -> Summary:
    """Wait until every run completed, then check every promise (see the module doc).
    ``kills`` maps each SIGKILLed process group to when it was killed; ``expected`` maps
    run ids to their results. Raises :class:`InvariantViolation` listing every problem."""
    kills = kills or {}
    run_ids = list(dict.fromkeys(run_ids))
    runs = wait_completed(storage, run_ids, timeout, context=context)
    bodies = journal.read(journal_path)
    by_call: dict[tuple[str, int], list[Attempt]] = defaultdict(list)
    for body in bodies:
        by_call[(body.run, body.call)].append(body)
    problems: list[str] = []
    summary = Summary(runs=len(runs))
    for run_id in run_ids:
        if expected is not None and run_id in expected and runs[run_id].result != expected[run_id]:
            problems.append(f"run {run_id}: result {runs[run_id].result!r}, expected {expected[run_id]!r}")
        events = PROCESS_LOOP.run(storage.get_events(run_id))
        summary.events += len(events)
        problems += check_events(run_id, events)
        done = completions(events)
        calls = set(done) | {call for (run, call) in by_call if run == run_id}
        for call in sorted(calls):
            group = by_call.get((run_id, call), [])
            problems += check_bodies(run_id, call, group, done.get(call), kills=kills, reruns_from=reruns_from)
            summary.bodies += len(group)
            summary.reruns += max(0, len(group) - 1)
            summary.unfinished += sum(1 for b in group if b.end is None)
            numbers = [b.attempt for b in group]
            if len(set(numbers)) != len(numbers):
                summary.reused_attempts.append(f"run {run_id} call {call}: attempts {numbers}")
    strangers = sorted({run for (run, _) in by_call} - set(run_ids))
    if strangers:
        problems.append(f"the journal holds step bodies of runs the test did not start: {strangers[:5]}")
    summary.recoveries = recovery_times(bodies, kills)
    if problems:
        shown = problems[:40]
        more = f"\n  … and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise InvariantViolation(
            f"{len(problems)} invariant violation(s):\n  " + "\n  ".join(shown) + more + _context(context)
        )
    return summary
