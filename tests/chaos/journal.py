"""The side-effect journal: every step attempt of the chaos workflows writes what it
did, from whichever process ran it, so a test can tell which bodies ran where and when,
including those of workers it killed.

One JSON line per phase of an attempt (``start`` before the body, ``end`` after it,
whatever way it ended), appended to one file with a single ``write()`` on an
``O_APPEND`` descriptor: the kernel places each line at the end of the file atomically,
so lines from concurrent processes never interleave, and a process SIGKILLed between
two writes leaves a ``start`` without its ``end``. Times are ``time.time()`` (one clock
for every process of the machine), comparable with event timestamps and kill times.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VARIABLE = "PYWORKFLOW_CHAOS_JOURNAL"


def _append(record: dict[str, object]) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(os.environ[VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@contextmanager
def attempt(run_id: str, call_id: int, step: str, number: int) -> Iterator[None]:
    """Wrap a step body: a ``start`` line before it, an ``end`` line after it saying how
    it ended (``ok``, or the exception's type, cancellations included)."""
    base = {"run": run_id, "call": call_id, "step": step, "attempt": number, "pid": os.getpid(), "pgid": os.getpgid(0)}
    _append({**base, "phase": "start", "t": time.time()})
    how = "ok"
    try:
        yield
    except BaseException as exc:
        how = type(exc).__name__
        raise
    finally:
        _append({**base, "phase": "end", "t": time.time(), "how": how})


@dataclass
class Attempt:
    """One execution of a step body, as the journal saw it."""

    run: str
    call: int
    step: str
    attempt: int
    pid: int
    pgid: int
    start: float
    end: float | None = None  # None: the process never wrote its end (killed, or still running)
    how: str | None = None  # "ok", an exception type name, or None with end

    @property
    def finished(self) -> bool:
        return self.how == "ok"

    def describe(self) -> str:
        end = f"{self.end:.3f} ({self.how})" if self.end is not None else "no end"
        return f"attempt {self.attempt} in pid {self.pid} (group {self.pgid}), {self.start:.3f} -> {end}"


def read(path: Path) -> list[Attempt]:
    """Every attempt in the journal, in the order they started. A start and its end are
    paired by (run, call, attempt, pid): one process runs one attempt of a call at a time."""
    if not path.exists():
        return []
    open_: dict[tuple[str, int, int, int], Attempt] = {}
    attempts: list[Attempt] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"journal {path} line {number} is not JSON ({exc}): {line!r}") from None
        key = (record["run"], record["call"], record["attempt"], record["pid"])
        if record["phase"] == "start":
            if key in open_:
                raise AssertionError(f"journal {path} line {number}: a second start of {key} before its end")
            fields = ("run", "call", "step", "attempt", "pid", "pgid", "t")
            entry = Attempt(*(record[name] for name in fields))
            open_[key] = entry
            attempts.append(entry)
        else:
            entry = open_.pop(key, None)
            if entry is None:
                raise AssertionError(f"journal {path} line {number}: an end of {key} without its start")
            entry.end, entry.how = record["t"], record["how"]
    return attempts


def running(path: Path) -> list[Attempt]:
    """The bodies started and not ended (yet, or ever: their process was killed)."""
    return [a for a in read(path) if a.end is None]
