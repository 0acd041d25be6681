"""The chaos suite's own instruments, checked without any fault: the invariant checker
catches each broken promise (with the run and call in its message), the journal pairs
attempts across processes, and the proxy forwards, cuts and restores."""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pyworkflow.events import Event
from tests.chaos import journal
from tests.chaos.invariants import check_bodies, check_events, completions
from tests.chaos.journal import Attempt
from tests.chaos.proxy import TcpProxy

RUN = "run-1"


def _event(seq: int, type: str, t: float = 100.0, **data: object) -> Event:
    return Event(seq=seq, type=type, timestamp=datetime.fromtimestamp(t, timezone.utc), data=data)


def _log(*steps: tuple[int, int, float]) -> list[Event]:
    """A whole log: each (call, attempt, finished at) as step.started + step.completed."""
    events = [_event(1, "workflow.started")]
    for call, attempt, at in steps:
        events.append(_event(len(events) + 1, "step.started", at - 0.1, call_id=call, step="work", attempt=attempt))
        events.append(_event(len(events) + 1, "step.completed", at, call_id=call, step="work", attempt=attempt))
    events.append(_event(len(events) + 1, "workflow.completed", 200.0))
    return events


def _body(attempt: int, start: float, end: float | None, pgid: int = 10) -> Attempt:
    how = None if end is None else "ok"
    return Attempt(RUN, 1, "work", attempt, pid=pgid + attempt, pgid=pgid, start=start, end=end, how=how)


def test_a_whole_log_passes() -> None:
    assert check_events(RUN, _log((1, 1, 101.0), (3, 2, 102.0))) == []


def test_gaps_and_duplicate_seqs_are_caught() -> None:
    events = _log((1, 1, 101.0))
    gap = [*events[:2], *(e.model_copy(update={"seq": e.seq + 1}) for e in events[2:])]
    assert any("seqs are not 1.." in p for p in check_events(RUN, gap))
    twice = [*events[:2], events[1], *(e.model_copy(update={"seq": e.seq + 1}) for e in events[2:])]
    problems = check_events(RUN, [e.model_copy(update={"seq": i}) for i, e in enumerate(twice, 1)])
    assert any("duplicate step.started" in p and "call 1 attempt 1" in p for p in problems), problems


def test_a_step_completed_twice_and_two_ends_are_caught() -> None:
    events = _log((1, 1, 101.0))
    again = _event(99, "step.completed", 101.5, call_id=1, step="work", attempt=1)
    doubled = [*events[:-1], again, events[-1], _event(99, "workflow.completed")]
    problems = check_events(RUN, [e.model_copy(update={"seq": i}) for i, e in enumerate(doubled, 1)])
    assert any(f"run {RUN} call 1 (work): duplicate step.completed at seqs 3 and 4" in p for p in problems), problems
    assert any("2 workflow.completed events" in p for p in problems), problems


def test_a_completion_of_an_attempt_never_started_is_caught() -> None:
    events = _log((1, 1, 101.0))
    events[2] = events[2].model_copy(update={"data": {**events[2].data, "attempt": 2}})
    assert any("no earlier step.started names" in p for p in check_events(RUN, events))


def _check(bodies: list[Attempt], completed_at: float = 101.0, attempt: int = 2, **kw: object) -> list[str]:
    completion = completions(_log((1, attempt, completed_at)))[1]
    options: dict[str, object] = {"kills": {}, "reruns_from": None, **kw}
    return check_bodies(RUN, 1, bodies, completion, **options)  # type: ignore[arg-type]


def test_an_interrupted_body_then_a_recorded_one_passes() -> None:
    bodies = [_body(1, 90.0, None, pgid=10), _body(2, 95.0, 100.5, pgid=20)]
    assert _check(bodies, kills={10: 91.0}, reruns_from={10}) == []


def test_a_completed_step_running_again_is_caught() -> None:
    bodies = [_body(2, 95.0, 100.5, pgid=20), _body(3, 102.0, 102.5, pgid=30)]
    problems = _check(bodies)
    assert any(f"run {RUN} call 1 (work): a completed step ran again" in p and "attempt 3" in p for p in problems)


def test_a_completion_without_a_finished_body_is_caught() -> None:
    problems = _check([_body(2, 95.0, None, pgid=20)], kills={20: 96.0})
    assert any("no body of that attempt finished before it" in p for p in problems), problems


def test_overlapping_bodies_are_caught() -> None:
    # attempt 1 still running (its worker alive, never killed) when attempt 2 starts
    problems = _check([_body(1, 90.0, None, pgid=10), _body(2, 95.0, 100.5, pgid=20)])
    assert any("a step ran in two places at once" in p and "still running" in p for p in problems), problems
    # attempt 1 killed at 96, after attempt 2 began at 95
    problems = _check([_body(1, 90.0, None, pgid=10), _body(2, 95.0, 100.5, pgid=20)], kills={10: 96.0})
    assert any("two places at once" in p and "until 96.000" in p for p in problems), problems


def test_a_rerun_without_a_kill_is_caught_when_asked() -> None:
    bodies = [_body(1, 90.0, 91.0, pgid=10), _body(2, 95.0, 100.5, pgid=20)]
    assert _check(bodies) == []  # at-least-once is allowed by default
    problems = _check(bodies, reruns_from=())
    assert any("ran 2 times though no worker it ran in was killed" in p for p in problems), problems


def _write_attempt(path: str, number: int) -> None:
    import os

    os.environ[journal.VARIABLE] = path
    for _ in range(50):
        with journal.attempt(RUN, number, "work", number):
            pass


def test_the_journal_pairs_attempts_written_by_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_write_attempt, args=(str(path), n)) for n in range(1, 5)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    bodies = journal.read(path)
    assert len(bodies) == 200 and all(b.finished and b.end is not None and b.end >= b.start for b in bodies)
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["run"] == RUN for line in lines)


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP echo server on a free port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()
    thread.join(5)


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(1024)


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed or reset ``sock`` (a read gives nothing or an error)."""
    try:
        sock.sendall(b"?")
        return sock.recv(10) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_the_proxy_forwards_cuts_and_restores(echo: int, mode: str) -> None:
    with TcpProxy("127.0.0.1", echo) as proxy:
        assert _roundtrip(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        with held:
            held.sendall(b"a")
            assert held.recv(10) == b"a"
            proxy.wait_connections(1)
            assert proxy.cut(mode) == 1, "the open connection is cut"
            assert _closed(held)
        if mode == "refuse":
            try:
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
            except (ConnectionResetError, BrokenPipeError):
                pass  # reset before connect() returned
            else:
                with sock:
                    assert _closed(sock), "a new connection is reset at once"
        else:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as sock:
                sock.sendall(b"lost")
                with pytest.raises(TimeoutError):
                    sock.recv(10)  # accepted and left silent
        proxy.restore()
        assert _roundtrip(proxy.port, b"back") == b"back"
