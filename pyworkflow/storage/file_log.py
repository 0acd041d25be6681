"""The run file of the file backend: its lines, how they are written, how they are read.

One file per run, append-only JSON lines. Every line that is not an event begins with
one of these keys::

    {"run":R}                     the run's record R: line 1, created without events
    {"n":k,"run":R}               line 1 of a run created with k events (the next k lines)
    {"n":k,"set":C,"consume":[..],"lease":null}
                                  an append: the k events after it, with the record
                                  changes C, the messages consumed and the lease released
                                  (each optional; a lone event needs no such line)
    {"set":C}                     update_run: changed record fields (with updated_at)
    {"msg":M,"set":C}             post_message: message M, and C when it moved wake_at
    {"lease":L}                   a lease taken or renewed (L), or released (null)

Every other line is an event; the n-th event holds seq n. The record is line 1 with
every later ``set`` applied; the lease is the last ``lease``; message ``seq`` n is the
n-th ``msg``; a message is consumed once a line names it in ``consume``.

Each call writes its lines with one ``write``. A ``{"n":k,…}`` line makes the k events
after it one unit with it: a write cut short after the line but before its last event
is found by every reader (as is a last line without its newline), so a crash never
leaves events without their record change and consumed messages, nor the reverse. Such
a file, like any that cannot be read back, is refused with CorruptedStorageError naming
the run, the file and the line; nothing is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pyworkflow.errors import CorruptedStorageError
from pyworkflow.events import Event
from pyworkflow.storage.base import (
    MUTABLE_RUN_FIELDS,
    Lease,
    Message,
    WorkflowRun,
    corrupted,
    decode_events,
    decode_message,
    decode_run,
)

RUN = b'{"run":'
GROUP = b'{"n":'
SET = b'{"set":'
MSG = b'{"msg":'
LEASE = b'{"lease":'
META = (GROUP, RUN, SET, MSG, LEASE)  # events never begin like this: this module writes every line
_SETTABLE = MUTABLE_RUN_FIELDS | {"updated_at"}
_KEYS = frozenset({"set", "msg", "consume", "lease"})


class RunLog:
    """What a run file says as far as it was read: ``size`` bytes, ``lines`` lines.

    ``pending`` holds the unconsumed messages by seq, ``keys`` every message key. With
    ``history``, every message is kept too (for get_messages(pending_only=False)).
    """

    __slots__ = ("size", "lines", "last_seq", "run", "lease", "count", "pending", "keys", "history", "spent")

    def __init__(self, *, history: bool = False) -> None:
        self.size = self.lines = self.last_seq = self.count = 0
        self.run: WorkflowRun | None = None
        self.lease: Lease | None = None
        self.pending: dict[int, Message] = {}
        self.keys: dict[str, int] = {}
        self.history: list[Message] | None = [] if history else None
        self.spent: set[int] = set()

    def record(self) -> WorkflowRun:
        if self.run is None:
            raise RuntimeError("the run file has not been read yet")
        return self.run

    def feed(self, run_id: str, path: str, data: bytes, *, events: bool = True) -> None:
        """Read and check the next ``data`` of the file (it begins at a line). The log is
        left half-changed when this raises: the caller must drop it then."""
        lines = split_lines(run_id, path, data, self.lines)
        bodies, numbers, metas = scan(run_id, path, lines, self.lines + 1)
        for number, line in metas:
            try:
                self._apply(run_id, line)
            except CorruptedStorageError as exc:
                raise located(exc, path, number) from None
        if events:
            decode_located(run_id, path, bodies, self.last_seq + 1, numbers)
        self.size += len(data)
        self.lines += len(lines)
        self.last_seq += len(bodies)

    def add(self, message: Message) -> None:
        self.count = message.seq
        self.pending[message.seq] = message
        if message.idempotency_key is not None:
            self.keys[message.idempotency_key] = message.seq
        if self.history is not None:
            self.history.append(message)

    def consume(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            self.pending.pop(seq, None)
        if self.history is not None:
            self.spent.update(seqs)

    def messages(self) -> list[Message]:
        """Every message, consumed or not (``history`` logs only)."""
        assert self.history is not None
        return [m.model_copy(update={"consumed": True}) if m.seq in self.spent else m for m in self.history]

    def _apply(self, run_id: str, line: bytes) -> None:
        body = line
        if line.startswith(GROUP):
            comma = line.find(b",")
            body = b"{}" if comma < 0 else b"{" + line[comma + 1 :]
        if body.startswith(RUN):
            if self.run is not None:
                raise corrupted(run_id, "file", "a second run record")
            if not body.endswith(b"}"):
                raise corrupted(run_id, "run record", "not a JSON object")
            run = decode_run(body[len(RUN) : -1], run_id)
            if run.run_id != run_id:
                raise corrupted(run_id, "run record", f"it belongs to run {run.run_id!r}")
            self.run = run
            return
        if self.run is None:
            raise corrupted(run_id, "file", "the file must begin with the run record")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise corrupted(run_id, "line", exc) from None
        if not isinstance(obj, dict) or not set(obj) <= _KEYS:
            raise corrupted(run_id, "line", f"not an object of {sorted(_KEYS)}")
        if "msg" in obj:
            self.add(self._message(run_id, obj["msg"]))
        if "set" in obj:
            self.run = _changed(run_id, self.run, obj["set"])
        if "consume" in obj:
            seqs = obj["consume"]
            if not isinstance(seqs, list) or not all(type(n) is int and n > 0 for n in seqs):
                raise corrupted(run_id, "consumed messages", f"not a list of message seqs: {seqs!r}")
            self.consume(seqs)
        if "lease" in obj:
            self.lease = _lease(run_id, obj["lease"])

    def _message(self, run_id: str, value: Any) -> Message:
        if not isinstance(value, dict):
            raise corrupted(run_id, f"message {self.count + 1}", "not a JSON object")
        message = decode_message(value, run_id)
        if message.run_id != run_id or message.seq != self.count + 1:
            why = f"found message {message.seq} of run {message.run_id!r} in its place"
            raise corrupted(run_id, f"message {self.count + 1}", why)
        return message


def _changed(run_id: str, run: WorkflowRun, changes: Any) -> WorkflowRun:
    if not isinstance(changes, dict) or not set(changes) <= _SETTABLE:
        raise corrupted(run_id, "record change", f"only {sorted(_SETTABLE)} may be set, found {changes!r}")
    try:
        return WorkflowRun.model_validate({**run.__dict__, **changes})
    except ValueError as exc:
        raise corrupted(run_id, "record change", exc) from exc


def _lease(run_id: str, value: Any) -> Lease | None:
    if value is None:
        return None
    try:
        lease = Lease.model_validate(value)
    except ValueError as exc:
        raise corrupted(run_id, "lease", exc) from exc
    if lease.run_id != run_id:
        raise corrupted(run_id, "lease", f"it belongs to run {lease.run_id!r}")
    return lease


# -- reading --------------------------------------------------------------------------------


def split_lines(run_id: str, path: str, data: bytes, lines_before: int) -> list[bytes]:
    """The complete lines of ``data``; a last line without its newline is corruption."""
    lines = data.split(b"\n")
    if lines[-1]:
        why = "the last line is truncated (no trailing newline): a write did not finish"
        raise bad(run_id, path, lines_before + len(lines), why)
    del lines[-1]
    return lines


def scan(
    run_id: str, path: str, lines: list[bytes], first: int
) -> tuple[list[bytes], list[int], list[tuple[int, bytes]]]:
    """Sort lines numbered from ``first`` into events (bodies and line numbers) and the
    other lines, checking that the file begins with the record and every write is whole."""
    if first == 1 and lines and not (lines[0].startswith(RUN) or lines[0].startswith(GROUP)):
        raise bad(run_id, path, 1, "the file must begin with the run record")
    bodies: list[bytes] = []
    numbers: list[int] = []
    metas: list[tuple[int, bytes]] = []
    owed = header = 0
    for number, line in enumerate(lines, first):
        if line.startswith(META):
            if owed:
                raise bad(run_id, path, header, f"{owed} of the events written with this line are missing")
            metas.append((number, line))
            if line.startswith(GROUP):
                owed, header = _group_size(run_id, path, number, line), number
        else:
            bodies.append(line)
            numbers.append(number)
            if owed:
                owed -= 1
    if owed:
        why = f"{owed} of the events written with this line are missing: a write did not finish"
        raise bad(run_id, path, header, why)
    return bodies, numbers, metas


def _group_size(run_id: str, path: str, number: int, line: bytes) -> int:
    end = line.find(b",")
    digits = line[len(GROUP) : end if end >= 0 else -1]
    if not line.endswith(b"}") or not digits.isdigit():
        raise bad(run_id, path, number, "not a valid line: unreadable event count")
    return int(digits)


def decode_located(run_id: str, path: str, bodies: list[bytes], first_seq: int, numbers: list[int]) -> list[Event]:
    """Events from their lines (seq ``first_seq`` …); a bad one is named with its line."""
    try:
        return decode_events(bodies, run_id, first_seq)
    except (CorruptedStorageError, ValueError):
        for offset, (number, body) in enumerate(zip(numbers, bodies, strict=True)):
            try:
                decode_events([body], run_id, first_seq + offset)
            except CorruptedStorageError as exc:
                raise located(exc, path, number) from None
            except ValueError as exc:  # bytes that are not UTF-8
                raise located(corrupted(run_id, f"event seq {first_seq + offset}", exc), path, number) from None
        raise


def located(error: CorruptedStorageError, path: str, line: int) -> CorruptedStorageError:
    """``error`` naming the file and line too."""
    return CorruptedStorageError(
        f"{path}, line {line}: {error.message}; nothing was changed (restore the file or delete the run)",
        run_id=getattr(error, "run_id", None),
        path=path,
        line=line,
    )


def bad(run_id: str, path: str, line: int, why: str) -> CorruptedStorageError:
    return located(corrupted(run_id, "file", why), path, line)


# -- writing --------------------------------------------------------------------------------


def dump(model: WorkflowRun | Lease | Message) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def encode_events(events: Sequence[Event]) -> bytes:
    return b"".join([event.__pydantic_serializer__.to_json(event) + b"\n" for event in events])


def encode_creation(run: WorkflowRun, events: Sequence[Event]) -> bytes:
    head = b"%s%d,%s" % (GROUP, len(events), RUN[1:]) if events else RUN
    return head + dump(run) + b"}\n" + encode_events(events)


def encode_changes(run: WorkflowRun, fields: set[str]) -> bytes:
    """The JSON of ``run``'s ``fields`` and ``updated_at``: what a ``set`` records."""
    return run.__pydantic_serializer__.to_json(run, include={*fields, "updated_at"})


def encode_append(
    events: Sequence[Event], changed: bytes | None, consume: Sequence[int], release: bool
) -> tuple[bytes, int]:
    """An append's lines and their number: a lone event alone, else under its group line."""
    data = encode_events(events)
    if len(events) == 1 and changed is None and not consume and not release:
        return data, 1
    head = b"%s%d" % (GROUP, len(events))
    if changed is not None:
        head += b',"set":' + changed
    if consume:
        head += b',"consume":' + json.dumps(list(consume), separators=(",", ":")).encode()
    if release:
        head += b',"lease":null'
    return head + b"}\n" + data, len(events) + 1


def encode_message(message: Message, changed: bytes | None) -> bytes:
    return MSG + dump(message) + (b',"set":' + changed if changed is not None else b"") + b"}\n"


def encode_lease(value: Lease | None) -> bytes:
    return LEASE + (b"null" if value is None else dump(value)) + b"}\n"
