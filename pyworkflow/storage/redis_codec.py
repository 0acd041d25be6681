"""Packing the Redis scripts' arguments and decoding their replies (see
:mod:`pyworkflow.storage.redis` for the key layout and :mod:`.redis_lua` for the scripts).

Headers are Python-formatted values joined by US (0x1F), events' JSON texts joined by RS
(0x1E); neither byte occurs raw in JSON text, so the scripts split exactly. Records come
back as one RS-joined string (see ``redis_lua.READ``). Index entries are
``"{created_at as 19-digit µs since 0001-01-01}|{run_id}"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from pyworkflow.events import Event
from pyworkflow.storage.base import (
    Message,
    RunStatus,
    WorkflowRun,
    corrupted,
    decode_message,
    from_us,
    page_cursor,
    to_us,
)
from pyworkflow.storage.redis_lua import C_CORRUPT, RECORD_FIELDS

#: Index entries count µs from year 1 (19 digits hold them until year 9999).
YEAR_ONE_US = -to_us(datetime(1, 1, 1, tzinfo=timezone.utc))
TIME_WIDTH = 19
_SEPARATOR, _MISSING = b"\x1e", b"\x1f"  # see redis_lua.READ
#: The separators of script arguments: RS between events, US between header fields
#: (see redis_lua; neither occurs in JSON text).
_RECORD, UNIT = "\x1e", "\x1f"
#: One encoder each, not one built per json.dumps call: create_run's fields as before
#: (pydantic already made them JSON-safe), checked run changes as record_json does.
_CREATE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_CHANGE_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def check_corrupt(run_id: str, reply: Sequence[Any], what: str = "run record") -> None:
    """Raise what a script's ``C_CORRUPT`` reply (its reason in ``reply[1]``) means."""
    if reply[0] == C_CORRUPT:
        raise corrupted(run_id, what, text(reply[1]))


# -- packing ---------------------------------------------------------------------------


def encode_events(events: Sequence[Event]) -> str:
    """The events' JSON texts joined by RS, as the scripts split them ('' for none)."""
    return _RECORD.join([event.model_dump_json() for event in events])


def record_json(value: Any) -> str:
    """A checked run field (see check_run_changes) as the JSON text its hash field holds."""
    if isinstance(value, datetime):
        return f'"{value.isoformat()}"'
    if isinstance(value, RunStatus):
        return f'"{value.value}"'
    return _CHANGE_JSON(value)


def _wake(when: datetime | None) -> str:
    return "" if when is None else str(to_us(when))


def time_key(dt: datetime) -> str:
    return f"{to_us(dt) + YEAR_ONE_US:0{TIME_WIDTH}d}"


def create_header(run: WorkflowRun) -> str:
    """CREATE's header: the index time, status and wake, then each field's JSON text."""
    header = [time_key(run.created_at), run.status.value, _wake(run.wake_at)]
    for name, value in run.model_dump(mode="json").items():
        header += [name, _CREATE_JSON(value)]
    return UNIT.join(header)


def append_header(
    expected: int | None,
    changes: Mapping[str, Any],
    consume: Sequence[int],
    now: datetime,
    *,
    release: bool,
    want_record: bool,
) -> str:
    """APPEND's header (see redis_lua.APPEND); ``changes`` already checked."""
    if "wake_at" in changes:
        wake = _wake(changes["wake_at"])
    else:
        wake = "keep" if "status" in changes else "-"
    header = [
        "" if expected is None else str(expected),
        changes["status"].value if "status" in changes else "",
        "1" if want_record else "0",
        "1" if release else "0",
        wake,
        str(to_us(now)),
        record_json(now),
        ",".join(map(str, consume)),
    ]
    if changes or want_record:
        for name, value in {**changes, "updated_at": now}.items():
            header += [name, record_json(value)]
    return UNIT.join(header)


def post_args(kind: str, payload_text: str, idempotency_key: str | None, now: datetime) -> tuple[str, str]:
    """POST's header and the message's JSON minus what the inbox knows (run_id, seq,
    consumed); the payload text goes in as it is."""
    body = (
        f'{{"kind":{json.dumps(kind)},"idempotency_key":{json.dumps(idempotency_key)},'
        f'"posted_at":"{now.isoformat()}","payload":{payload_text}}}'
    )
    return f"{to_us(now)}{UNIT}{record_json(now)}", body


def bounds(
    created_after: datetime | None, created_before: datetime | None, cursor: tuple[datetime, str] | None
) -> tuple[str, str]:
    """ZREVRANGEBYLEX max and min for the created window below the cursor.

    Entries are ``time|run_id`` with fixed-width times, so "created before T" is every
    entry below the string ``T`` and "after the cursor" every entry below ``T|run_id``;
    both upper bounds are exclusive and the smaller one wins.
    """
    uppers = []
    if created_before is not None:
        uppers.append(time_key(created_before))
    if cursor is not None:
        uppers.append(f"{time_key(cursor[0])}|{cursor[1]}")
    upper = "(" + min(uppers) if uppers else "+"
    # "Created after T" (exclusive) is every entry at or above the time T + 1µs.
    lower = "-" if created_after is None else f"[{to_us(created_after) + YEAR_ONE_US + 1:0{TIME_WIDTH}d}"
    return upper, lower


# -- decoding --------------------------------------------------------------------------


def workflow_name(field: bytes | str) -> str | None:
    """A run hash's ``workflow_name`` field (its JSON text) as CLAIM returns it; ``None``
    when the run is gone or the field does not read as a name."""
    if not field:
        return None
    try:
        name = json.loads(field)
    except ValueError:
        return None
    return name if isinstance(name, str) else None


def member_run_id(member: str) -> str:
    """The run id of an index entry."""
    return member[TIME_WIDTH + 1 :]


def member_cursor(member: str) -> str:
    """The list_runs cursor just past an index entry (so it passes an unreadable run too)."""
    created = from_us(int(member[:TIME_WIDTH]) - YEAR_ONE_US)
    return page_cursor(created, member_run_id(member))


def decode_record(run_id: str, reply: bytes | None) -> WorkflowRun | None:
    """A record as ``read_record`` returns it; ``None`` when the run does not exist.

    The fields are parsed as one JSON array whose length must be the number of fields,
    so a field that smuggles in further values (``null,"status":"completed"``) is damage,
    not a record; a slow pass names the field that does not read back.
    """
    if reply is None:
        return None
    seq, *values = reply.split(_SEPARATOR)
    if len(values) != len(RECORD_FIELDS):
        raise corrupted(run_id, "run record", "a field holds a control character")
    if seq == _MISSING:
        raise corrupted(run_id, "run record", "it has no @seq field")
    present = [(name, value) for name, value in zip(RECORD_FIELDS, values, strict=True) if value != _MISSING]
    try:
        parsed = json.loads(b"[" + b",".join(value for _, value in present) + b"]")
    except ValueError:
        parsed = None
    if parsed is None or len(parsed) != len(present):
        for name, value in present:
            try:
                json.loads(value)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
                raise corrupted(run_id, f"run record field {name!r}", exc) from exc
        raise corrupted(run_id, "run record", "its fields do not read back as one value each")
    try:
        run = WorkflowRun.model_validate(dict(zip((name for name, _ in present), parsed, strict=True)))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise corrupted(run_id, "run record", exc) from exc
    if run.run_id != run_id:
        raise corrupted(run_id, "run record", f"the record stored under this id is run {run.run_id!r}")
    return run


def existing_run(run_id: str, reply: bytes | None) -> WorkflowRun:
    """A record a script says exists (an index entry, an idempotency key, an update)."""
    run = decode_record(run_id, reply)
    if run is None:
        # Scripts write a record with its index entries and key together: a reference
        # to a missing record means keys were deleted by hand. Say so; never skip it.
        raise corrupted(run_id, "run record", "the run is referenced (index or idempotency key) but has no record")
    return run


def decode_messages(run_id: str, flat: Sequence[Any]) -> list[Message]:
    """Messages from the scripts' flat (seq, consumed, text) triples."""
    messages = []
    for i in range(0, len(flat), 3):
        seq, consumed, body = flat[i : i + 3]
        what = f"message {text(seq)}"
        if body is None:
            raise corrupted(run_id, what, "it is pending but its text is gone")
        try:
            data = json.loads(body)
            data.update(run_id=run_id, seq=int(seq), consumed=bool(consumed))
        except (ValueError, TypeError, AttributeError) as exc:
            raise corrupted(run_id, what, exc) from exc
        messages.append(decode_message(data, run_id))
    return messages
