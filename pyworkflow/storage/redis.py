"""Redis storage: shared by every worker, every mutation one atomic Lua script.

Select it with ``redis://[:password@]host:6379/0``, ``rediss://…`` (TLS) or
``unix:///path/redis.sock``; an optional ``?prefix=name`` query (default ``pyworkflow``)
namespaces every key, so several apps can share one database. The password never shows
in :attr:`url`, ``repr()`` or errors. Needs ``pip install pyworkflow[redis]``.

Key layout
==========
Every key starts with ``{prefix}:``; the patterns live in :data:`KEYS` and nowhere else
(scripts receive the keys, or key stems, built from that table).

====================================== ====== ==========================================
key                                    type   holds
====================================== ====== ==========================================
``{p}:run:{run_id}``                   hash   one field per :class:`WorkflowRun` field,
                                              each a JSON text; plus ``@`` meta fields:
                                              ``@seq`` (the log's last seq),
                                              ``@status``, ``@member`` (the run's index
                                              entry), ``@wf_index``, ``@wfs_stem`` and
                                              ``@idem`` (the keys delete/moves touch)
``{p}:events:{run_id}``                list   event JSON; index ``i`` holds seq ``i + 1``
``{p}:idem:{key}``                     string the run hash key the idempotency key names
``{p}:timers``                         zset   run_id scored by wake_at (µs since epoch)
``{p}:leases``                         hash   run_id -> ``"{token} {owner}"``
``{p}:lease_expiry``                   zset   run_id scored by expires_at (s since epoch)
``{p}:runs``                           zset   every run's index entry
``{p}:runs:status:{status}``           zset   index entries of runs in ``status``
``{p}:runs:wf:{workflow}``             zset   index entries of one workflow's runs
``{p}:runs:wfs:{workflow}:{status}``   zset   … of one workflow's runs in one status
====================================== ====== ==========================================

An index entry is ``"{created_at as 19-digit µs since 0001-01-01}|{run_id}"`` and every
index member has score 0, so the sets sort *lexicographically*, which is exactly the
contract's ``(created_at, run_id)`` order, ties included. A page is one
``ZREVRANGEBYLEX`` whose bounds encode the created window and the keyset cursor: no
filtering, no offsets, O(log n + limit) for every combination of filters (the
workflow+status sets make the combined filter an index hit, not an intersection). Scores
in milliseconds would not do: runs made in the same millisecond would page out of order.

The record is a hash of per-field JSON texts, not one JSON blob, so ``run_changes`` land
as an HSET of the changed fields (encoded in Python) inside the append script: Lua never
decodes or re-encodes JSON (cjson would rewrite user data: big integers, floats, ``[]``
versus ``{}``). A read joins the fields into one string in Lua (see ``_LUA_READ``).

Scripts and round trips
=======================
Each script is registered once per client (``register_script``: EVALSHA, loaded on the
first NOSCRIPT) and does all its reads and writes in one atomic step. Redis does not roll
a script back when it fails midway, so every script makes its checks before its first
write, and writes the run's log (the key a damaged store is likeliest to refuse) first.

================================ ============ ==============================================
operation                        round trips  how
================================ ============ ==============================================
create_run                       1            CREATE: idempotency lookup, record, log,
                                              four index entries
get_run                          1            READ: HMGET, joined into one string
update_run                       1            APPEND (no events): fields, indexes, record
list_runs                        1            LIST: ZREVRANGEBYLEX + READ of each run
delete_run                       1            DELETE: record, log, timer, lease, key, index
append_events                    1            APPEND: ``@seq`` check, lease check, RPUSH,
                                              ``run_changes``, index moves
get_events                       1            EVENTS: LRANGE of exactly the requested
                                              slice, joined into one string
schedule/cancel/get_timer        1            ZADD / ZREM / ZSCORE
claim_due_timers                 1            CLAIM: ZRANGEBYSCORE + re-score
acquire/renew/release_lease      1            ACQUIRE / RENEW / RELEASE
recover_expired_leases           1            RECOVER: expired ids, lease gone, timer = now
================================ ============ ==============================================

The first call of a script on a fresh server adds a SCRIPT LOAD (two more round trips,
once). Appending costs the same at seq 10 and seq 100 000: the last seq is a hash field,
never the log's length read back.

Times
=====
Lease and timer times come from this process's wall clock (``time.time()``) and travel
as script arguments, so every backend shares the one notion of "now" the contract uses;
the Redis server's clock is never read. Hosts must keep their clocks in sync (NTP).

Durability and deployment
=========================
A write is as durable as the server's persistence makes it: with RDB snapshots only, a
crash loses the writes since the last snapshot; ``appendonly yes`` with ``appendfsync
everysec`` loses at most about a second; ``appendfsync always`` loses nothing that was
acknowledged. Replication is asynchronous, so a failover can lose acknowledged writes.
Scripts derive index keys from fields they read, so this backend needs a single Redis
node (or a primary with replicas), not Redis Cluster.

One instance serves one event loop: its client is created lazily, inside the loop that
first uses it (instances may be built outside any loop), and :meth:`close` must run in
that loop. A client passed in with ``client=`` belongs to the caller, who closes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import TypeAdapter, ValidationError

from pyworkflow.clock import utcnow
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    LeaseLostError,
    RunNotFoundError,
    SequenceConflictError,
)
from pyworkflow.events import Event
from pyworkflow.storage.base import (
    MUTABLE_RUN_FIELDS,
    Lease,
    RunPage,
    RunStatus,
    StorageBackend,
    Timer,
    WorkflowRun,
    check_batch,
    check_run_changes,
    decode_cursor,
    encode_cursor,
    new_token,
    redact_url,
    utc,
)

try:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript
    from redis.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ConfigurationError(
        f"the Redis storage backend needs the redis package ({exc}); pip install pyworkflow[redis]"
    ) from exc

__all__ = ["KEYS", "RedisStorageBackend"]

#: Every key pattern this backend writes. ``{p}`` is the prefix.
KEYS: dict[str, str] = {
    "run": "{p}:run:{run_id}",
    "events": "{p}:events:{run_id}",
    "idempotency": "{p}:idem:{key}",
    "timers": "{p}:timers",
    "leases": "{p}:leases",
    "lease_expiry": "{p}:lease_expiry",
    "all_runs": "{p}:runs",
    "by_status": "{p}:runs:status:{status}",
    "by_workflow": "{p}:runs:wf:{workflow}",
    # Status last: statuses hold no ':', so the suffix after the last ':' is always the
    # status and no two (workflow, status) pairs share a key. Scripts append the status
    # to the stem (this pattern formatted with status="").
    "by_workflow_status": "{p}:runs:wfs:{workflow}:{status}",
}

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "pyworkflow"
_SCHEMES = ("redis", "rediss", "unix")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_YEAR_ONE = datetime(1, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: Digits of an index entry's time: µs since year 1 stay below 10**18 until year 9999.
_TIME_WIDTH = 19

_EVENT_LIST = TypeAdapter(list[Event])
#: The hash fields that hold the record (each a JSON text).
_RECORD_FIELDS = tuple(WorkflowRun.model_fields)
_SEPARATOR, _MISSING = b"\x1e", b"\x1f"  # see _LUA_READ
_FIELD_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(WorkflowRun.model_fields[name].annotation or Any)
    for name in sorted(MUTABLE_RUN_FIELDS | {"updated_at"})
}

# -- Lua ---------------------------------------------------------------------------------
# Replies are tables whose first item is a code: 1 ok, 0 found existing, and negatives
# for refusals the Python side turns into exceptions (see the _E* constants).

_EXISTING = 0
_E_NOT_FOUND, _E_SEQ, _E_LEASE, _E_CORRUPT, _E_DUPLICATE = -1, -2, -3, -4, -5

# read_record(key) -> nil when the hash does not exist, else one string: @seq and the
# record fields, joined by RS (0x1E), a missing field written as US (0x1F). A reply item
# costs the client far more than a byte, and neither byte can occur in JSON text (control
# characters are escaped inside strings), so splitting is exact and a stray one is
# damage. No JSON is decoded in Lua: cjson would rewrite user data (big ints, floats).
_LUA_READ = (
    "local RECORD_FIELDS = {"
    + ", ".join(f"'{name}'" for name in _RECORD_FIELDS)
    + "}\n"
    + """
local RS, US = string.char(30), string.char(31)
local function read_record(key)
  local values = redis.call('HMGET', key, '@seq', unpack(RECORD_FIELDS))
  local found = false
  for i = 1, #values do
    if values[i] then found = true else values[i] = US end
  end
  if not found then return false end
  return table.concat(values, RS)
end
"""
)

# KEYS: run
_READ = _LUA_READ + "return read_record(KEYS[1])\n"

# unpack() puts every argument on Lua's C stack (about 8000 slots): push in chunks.
_LUA_PUSH = """
local function push(key, from)
  for i = from, #ARGV, 1000 do
    redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
"""

# KEYS: run, events, idempotency ('' = none), all, by_status, by_workflow, by_wf_status
# ARGV: member, n_fields, field/value pairs…, events…
_CREATE = (
    _LUA_READ
    + _LUA_PUSH
    + """
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing, read_record(existing)} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-5} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-4, 'an event log exists for a run that has no record'} end
local n = tonumber(ARGV[2])
local first_event = 3 + 2 * n
-- The log first: if its key is not a list this fails before anything is written.
push(KEYS[2], first_event)
redis.call('HSET', KEYS[1], unpack(ARGV, 3, first_event - 1))
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], KEYS[1]) end
for i = 4, 7 do redis.call('ZADD', KEYS[i], 0, ARGV[1]) end
return {1}
"""
)

# KEYS: run, events, leases
# ARGV: run_id, expected last seq ('' = no check), lease token ('' = none), status stem,
#       new status ('' = unchanged), return record ('1'/'0'), n_pairs, pairs…, events…
_APPEND = (
    _LUA_READ
    + _LUA_PUSH
    + """
local meta = redis.call('HMGET', KEYS[1], '@seq', '@status', '@member', '@wf_index', '@wfs_stem')
if not meta[1] then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-4, 'no @seq field'} end
  return {-1}
end
local last = tonumber(meta[1])
if not last then return {-4, '@seq is not a number'} end
-- O(1), and it keeps what get_events relies on: list index i holds seq i + 1.
local length = redis.call('LLEN', KEYS[2])
if length ~= last then return {-4, string.format('@seq is %d but the log holds %d events', last, length)} end
if ARGV[2] ~= '' and last ~= tonumber(ARGV[2]) then return {-2, last} end
if ARGV[3] ~= '' then
  local held = redis.call('HGET', KEYS[3], ARGV[1])
  if not held or string.sub(held, 1, #ARGV[3] + 1) ~= ARGV[3] .. ' ' then return {-3} end
end
local new_status = ARGV[5]
local moves = new_status ~= '' and new_status ~= meta[2]
if moves and not (meta[2] and meta[3] and meta[5]) then return {-4, 'index meta fields missing'} end
local n = tonumber(ARGV[7])
local first_event = 8 + 2 * n
local count = #ARGV - first_event + 1
if count > 0 then
  -- The log first: if its key is not a list this fails before anything is written.
  push(KEYS[2], first_event)
  redis.call('HSET', KEYS[1], '@seq', string.format('%d', last + count))
end
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 8, first_event - 1)) end
if moves then
  local stem, member = ARGV[4], meta[3]
  redis.call('ZREM', stem .. meta[2], member)
  redis.call('ZADD', stem .. new_status, 0, member)
  redis.call('ZREM', meta[5] .. meta[2], member)
  redis.call('ZADD', meta[5] .. new_status, 0, member)
  redis.call('HSET', KEYS[1], '@status', new_status)
end
if ARGV[6] == '1' then return {1, read_record(KEYS[1])} end
return {1}
"""
)

# KEYS: run, events, leases, lease_expiry, timers, all
# ARGV: run_id, status stem
_DELETE = """
local meta = redis.call('HMGET', KEYS[1], '@status', '@member', '@wf_index', '@wfs_stem', '@idem')
if not (meta[1] and meta[2] and meta[3] and meta[4]) then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -4 end
  return 0
end
local member = meta[2]
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], member)
redis.call('ZREM', ARGV[2] .. meta[1], member)
redis.call('ZREM', meta[3], member)
redis.call('ZREM', meta[4] .. meta[1], member)
-- Only drop the idempotency key while it still names this run.
if meta[5] and redis.call('GET', meta[5]) == KEYS[1] then redis.call('DEL', meta[5]) end
return 1
"""

# KEYS: index.  ARGV: max bound, min bound, count, run key stem, index of the id in a member
_LIST = (
    _LUA_READ
    + """
local members = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local at = tonumber(ARGV[5])
for _, member in ipairs(members) do
  local run_id = string.sub(member, at)
  out[#out + 1] = run_id
  out[#out + 1] = read_record(ARGV[4] .. run_id)
end
return out
"""
)

# KEYS: events.  ARGV: first index, last index
# One joined string instead of one reply item per event: the client parses a single
# bulk string and pydantic one JSON array, several times faster than item by item.
_EVENTS = """
local items = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
return {#items, table.concat(items, ',')}
"""

# KEYS: timers.  ARGV: now (µs), redeliver at (µs), limit
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
for i = 1, #due, 2 do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], due[i]) end
return due
"""

# KEYS: leases, lease_expiry.  ARGV: run_id, "token owner", now (s), expires at (s)
_ACQUIRE = """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[1])
if expires and tonumber(expires) > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

_LUA_HELD = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
local holds = held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. ' '
"""

# KEYS: leases, lease_expiry.  ARGV: run_id, token, new expiry (s)
_RENEW = (
    _LUA_HELD
    + """
if not holds then return false end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return held
"""
)

# KEYS: leases, lease_expiry.  ARGV: run_id, token
_RELEASE = (
    _LUA_HELD
    + """
if holds then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 0
"""
)

# KEYS: leases, lease_expiry, timers.  ARGV: now (s), now (µs), limit
_RECOVER = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, run_id in ipairs(expired) do
  redis.call('HDEL', KEYS[1], run_id)
  redis.call('ZREM', KEYS[2], run_id)
  redis.call('ZADD', KEYS[3], ARGV[2], run_id)
end
return expired
"""


@dataclass(frozen=True)
class _Scripts:
    create: AsyncScript
    read: AsyncScript
    append: AsyncScript
    delete: AsyncScript
    list: AsyncScript
    events: AsyncScript
    claim: AsyncScript
    acquire: AsyncScript
    renew: AsyncScript
    release: AsyncScript
    recover: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> _Scripts:
        return cls(
            create=client.register_script(_CREATE),
            read=client.register_script(_READ),
            append=client.register_script(_APPEND),
            delete=client.register_script(_DELETE),
            list=client.register_script(_LIST),
            events=client.register_script(_EVENTS),
            claim=client.register_script(_CLAIM),
            acquire=client.register_script(_ACQUIRE),
            renew=client.register_script(_RENEW),
            release=client.register_script(_RELEASE),
            recover=client.register_script(_RECOVER),
        )


# -- URLs ------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str | None]:
    """The URL without its ``prefix`` query parameter, and that prefix."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(f"not a Redis URL: {redact_url(url)!r}; use redis://host:6379/0 or rediss://…")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), (prefixes[-1] if prefixes else None)


def _with_prefix(url: str, prefix: str) -> str:
    """``url`` naming ``prefix`` too, so ``from_url(backend.url)`` selects the same keys."""
    if prefix == DEFAULT_PREFIX:
        return url
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + [("prefix", prefix)]
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- encoding --------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _micros(dt: datetime, since: datetime = _EPOCH) -> int:
    return (utc(dt) - since) // _MICROSECOND


def _from_micros(micros: bytes | str | float) -> datetime:
    # Scores are doubles; µs since 1970 stay exact integers in a double until year 2255.
    return _EPOCH + timedelta(microseconds=round(float(micros)))


def _time_key(dt: datetime) -> str:
    return f"{_micros(dt, _YEAR_ONE):0{_TIME_WIDTH}d}"


def _index_member(run: WorkflowRun) -> str:
    return f"{_time_key(run.created_at)}|{run.run_id}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _change_pairs(changes: Mapping[str, Any]) -> list[str | bytes]:
    """``changes`` as hash field/JSON pairs, validated like a model field would be."""
    pairs: list[str | bytes] = []
    for name, value in changes.items():
        adapter = _FIELD_ADAPTERS[name]
        pairs += [name, adapter.dump_json(adapter.validate_python(value))]
    return pairs


def _corrupted(run_id: str, what: str) -> CorruptedStorageError:
    return CorruptedStorageError(f"run {run_id!r}: {what}", run_id=run_id)


def _decode_run(run_id: str, reply: bytes | str | None) -> WorkflowRun | None:
    """A record as ``read_record`` returns it; ``None`` when the run does not exist."""
    if reply is None:
        return None
    seq, *values = (reply.encode() if isinstance(reply, str) else reply).split(_SEPARATOR)
    if len(values) != len(_RECORD_FIELDS):
        raise _corrupted(run_id, "a field of the run record holds a control character")
    if seq == _MISSING:
        raise _corrupted(run_id, "the run record has no @seq field")
    data: dict[str, Any] = {}
    for name, value in zip(_RECORD_FIELDS, values, strict=True):
        if value == _MISSING:
            continue  # a field added to WorkflowRun after this record was written
        try:
            data[name] = json.loads(value)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise _corrupted(run_id, f"field {name!r} of the run record is not JSON: {exc}") from exc
    try:
        run = WorkflowRun.model_validate(data)
    except ValidationError as exc:
        raise _corrupted(run_id, f"the run record cannot be read back: {exc}") from exc
    if run.run_id != run_id:
        raise _corrupted(run_id, f"the record stored under this id is run {run.run_id!r}")
    return run


def _existing_run(run_id: str, reply: bytes | str | None) -> WorkflowRun:
    """A record a script says exists (an index entry, an idempotency key, an update)."""
    run = _decode_run(run_id, reply)
    if run is None:
        # Scripts write a record with its index entries and key together: a reference
        # to a missing record means keys were deleted by hand. Say so; never skip it.
        raise _corrupted(run_id, "the run is referenced (index or idempotency key) but has no record")
    return run


def _decode_events(run_id: str, count: int, joined: bytes | str, after_seq: int) -> list[Event] | None:
    """The events of a joined slice, or ``None`` if it does not parse (find out which)."""
    blob = joined.encode() if isinstance(joined, str) else joined
    try:
        events = _EVENT_LIST.validate_json(b"[" + blob + b"]")
    except ValidationError:
        return None
    # An item holding two objects, or a gap, would still parse: check the numbering.
    if len(events) != count or any(e.seq != after_seq + i + 1 for i, e in enumerate(events)):
        raise _corrupted(run_id, f"the event log is out of sequence after seq {after_seq}")
    return events


def _decode_event(run_id: str, blob: bytes | str, seq: int) -> Event:
    try:
        event = Event.from_json(blob)
    except ValidationError as exc:
        raise _corrupted(run_id, f"event {seq} cannot be read back: {exc}") from exc
    if event.seq != seq:
        raise _corrupted(run_id, f"the event log holds seq {event.seq} where seq {seq} belongs")
    return event


def _parse_lease(run_id: str, held: bytes | str, expires_at: float) -> Lease:
    token, _, owner = _text(held).partition(" ")
    return Lease(run_id=run_id, owner=owner, token=token, expires_at=expires_at)


# -- the backend -----------------------------------------------------------------------


class RedisStorageBackend(StorageBackend):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._dsn, url_prefix = _split_url(url)
        if url_prefix and prefix not in (DEFAULT_PREFIX, url_prefix):
            raise ConfigurationError(f"two key prefixes given: {url_prefix!r} in the URL and {prefix!r}")
        prefix = url_prefix or prefix
        if not prefix:
            raise ConfigurationError("the Redis key prefix must not be empty")
        self.prefix = prefix
        self.url = redact_url(_with_prefix(self._dsn, prefix))
        self._client = client
        self._owns_client = client is None
        self._scripts = _Scripts.register(client) if client is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._status_stem = KEYS["by_status"].format(p=prefix, status="")
        self._run_stem = KEYS["run"].format(p=prefix, run_id="")
        self._timers = KEYS["timers"].format(p=prefix)
        self._leases = KEYS["leases"].format(p=prefix)
        self._lease_expiry = KEYS["lease_expiry"].format(p=prefix)
        self._all_runs = KEYS["all_runs"].format(p=prefix)

    @classmethod
    def from_url(cls, url: str) -> RedisStorageBackend:
        """A backend for ``redis://…`` or ``rediss://…``; ``?prefix=`` sets the key prefix."""
        return cls(url)

    async def close(self) -> None:
        self._closed = True
        client, self._client, self._scripts = self._client, None, None
        if client is not None and self._owns_client:
            await client.aclose()

    def _redis(self) -> tuple[aioredis.Redis, _Scripts]:
        """The client, made on first use inside the running loop, and its scripts."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = aioredis.Redis.from_url(self._dsn)
            self._scripts = _Scripts.register(self._client)
            self._loop = loop
        elif self._owns_client and self._loop is not loop:
            # Its connections belong to the first loop; using them here would fail deep
            # inside asyncio. Say what is wrong instead.
            raise RuntimeError(f"{self!r} was first used in another event loop; make one backend per loop")
        assert self._scripts is not None
        return self._client, self._scripts

    def _key(self, name: str, **parts: str) -> str:
        return KEYS[name].format(p=self.prefix, **parts)

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        _, scripts = self._redis()
        keys, member, fields = self._create_args(run, len(events))
        args: list[str | int] = [member, len(fields) // 2, *fields, *self._encode(events)]
        reply = await self._guard(run.run_id, scripts.create(keys=keys, args=args))
        code = reply[0]
        if code == _EXISTING:
            existing_id = _text(reply[1]).removeprefix(self._run_stem)
            return _existing_run(existing_id, reply[2]), False
        if code == _E_DUPLICATE:
            raise ValueError(f"run {run.run_id!r} already exists")
        if code == _E_CORRUPT:
            raise _corrupted(run.run_id, _text(reply[1]))
        return run, True

    def _create_args(self, run: WorkflowRun, n_events: int) -> tuple[list[str], str, list[str]]:
        """The CREATE script's keys, the run's index entry and its hash fields."""
        status, workflow = run.status.value, run.workflow_name
        wf_index = self._key("by_workflow", workflow=workflow)
        wfs_stem = self._key("by_workflow_status", workflow=workflow, status="")
        idem = self._key("idempotency", key=run.idempotency_key) if run.idempotency_key is not None else ""
        member = _index_member(run)
        keys = [
            self._key("run", run_id=run.run_id),
            self._key("events", run_id=run.run_id),
            idem,
            self._all_runs,
            self._status_stem + status,
            wf_index,
            wfs_stem + status,
        ]
        pairs: list[str] = []
        for name, value in run.model_dump(mode="json").items():
            pairs += [name, _dumps(value)]
        pairs += ["@seq", str(n_events), "@status", status, "@member", member]
        pairs += ["@wf_index", wf_index, "@wfs_stem", wfs_stem]
        if idem:
            pairs += ["@idem", idem]
        return keys, member, pairs

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        _, scripts = self._redis()
        reply = await self._guard(run_id, scripts.read(keys=[self._key("run", run_id=run_id)]))
        return _decode_run(run_id, reply)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        check_run_changes(changes)
        reply = await self._append(run_id, [], expected=None, lease_token=None, changes=changes, want_record=True)
        return _existing_run(run_id, reply[1])

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunPage:
        after = decode_cursor(cursor) if cursor else None
        wanted = RunStatus(status).value if status is not None else None
        if limit <= 0:
            return RunPage(runs=[])
        upper, lower = _bounds(created_after, created_before, after)
        _, scripts = self._redis()
        reply = await scripts.list(
            keys=[self._index_key(wanted, workflow_name)],
            args=[upper, lower, limit + 1, self._run_stem, _TIME_WIDTH + 2],
        )
        runs = [_existing_run(_text(reply[i]), reply[i + 1]) for i in range(0, len(reply), 2)]
        page = runs[:limit]
        more = len(runs) > limit
        return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if more else None)

    def _index_key(self, status: str | None, workflow: str | None) -> str:
        if workflow is not None and status is not None:
            return self._key("by_workflow_status", workflow=workflow, status=status)
        if workflow is not None:
            return self._key("by_workflow", workflow=workflow)
        if status is not None:
            return self._status_stem + status
        return self._all_runs

    async def delete_run(self, run_id: str) -> bool:
        _, scripts = self._redis()
        keys = [
            self._key("run", run_id=run_id),
            self._key("events", run_id=run_id),
            self._leases,
            self._lease_expiry,
            self._timers,
            self._all_runs,
        ]
        code = await self._guard(run_id, scripts.delete(keys=keys, args=[run_id, self._status_stem]))
        if code == _E_CORRUPT:
            raise _corrupted(run_id, "the run record lacks its index fields; it cannot be deleted cleanly")
        return bool(code)

    # -- events -----------------------------------------------------------------------

    async def append_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        lease_token: str | None = None,
        run_changes: Mapping[str, Any] | None = None,
    ) -> None:
        expected = check_batch(run_id, events)
        if run_changes:
            check_run_changes(run_changes)
        await self._append(run_id, events, expected=expected, lease_token=lease_token, changes=run_changes or {})

    async def _append(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected: int | None,
        lease_token: str | None,
        changes: Mapping[str, Any],
        want_record: bool = False,
    ) -> Any:
        """Run the APPEND script; raise what its reply code means."""
        pairs = _change_pairs({**changes, "updated_at": utcnow()}) if changes or want_record else []
        new_status = RunStatus(changes["status"]).value if "status" in changes else ""
        _, scripts = self._redis()
        keys = [self._key("run", run_id=run_id), self._key("events", run_id=run_id), self._leases]
        args: list[Any] = [
            run_id,
            "" if expected is None else expected,
            lease_token or "",
            self._status_stem,
            new_status,
            "1" if want_record else "0",
            len(pairs) // 2,
            *pairs,
            *self._encode(events),
        ]
        reply = await self._guard(run_id, scripts.append(keys=keys, args=args))
        code = reply[0]
        if code == _E_NOT_FOUND:
            raise RunNotFoundError(run_id)
        if code == _E_SEQ:
            assert expected is not None  # the script checks the seq only when given one
            raise SequenceConflictError(run_id, expected, int(reply[1]))
        if code == _E_LEASE:
            raise LeaseLostError(run_id)
        if code == _E_CORRUPT:
            raise _corrupted(run_id, f"the run record is damaged: {_text(reply[1])}")
        return reply

    @staticmethod
    def _encode(events: Sequence[Event]) -> list[str]:
        return [event.model_dump_json() for event in events]

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        after_seq = max(after_seq, 0)
        if limit is not None and limit <= 0:
            return []
        client, scripts = self._redis()
        key = self._key("events", run_id=run_id)
        # List index i holds seq i + 1, so the slice is exactly the events asked for.
        end = -1 if limit is None else after_seq + limit - 1
        count, joined = await self._guard(run_id, scripts.events(keys=[key], args=[after_seq, end]))
        if not count:
            return []
        events = _decode_events(run_id, count, joined, after_seq)
        if events is None:
            # Damaged somewhere: read item by item (slow, rare) to name the bad event.
            raw = await client.lrange(key, after_seq, end)
            events = [_decode_event(run_id, item, after_seq + i + 1) for i, item in enumerate(raw)]
        return events

    async def _guard(self, run_id: str, call: Any) -> Any:
        """Await ``call``; a key of the wrong type is a damaged run, not a server error."""
        try:
            return await call
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise _corrupted(run_id, f"a key of this run holds the wrong Redis type: {exc}") from exc
            raise

    # -- timers -----------------------------------------------------------------------

    async def schedule_timer(self, run_id: str, wake_at: datetime) -> None:
        client, _ = self._redis()
        await client.zadd(self._timers, {run_id: _micros(wake_at)})

    async def cancel_timer(self, run_id: str) -> None:
        client, _ = self._redis()
        await client.zrem(self._timers, run_id)

    async def get_timer(self, run_id: str) -> Timer | None:
        client, _ = self._redis()
        score = await client.zscore(self._timers, run_id)
        return None if score is None else Timer(run_id=run_id, wake_at=_from_micros(score))

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        if limit <= 0:
            return []
        _, scripts = self._redis()
        later = utc(now) + timedelta(seconds=redeliver_after)
        due = await scripts.claim(keys=[self._timers], args=[_micros(now), _micros(later), limit])
        return [Timer(run_id=_text(due[i]), wake_at=_from_micros(due[i + 1])) for i in range(0, len(due), 2)]

    # -- leases -----------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        _, scripts = self._redis()
        now = time.time()
        lease = Lease(run_id=run_id, owner=owner, token=new_token(), expires_at=now + ttl)
        won = await scripts.acquire(
            keys=[self._leases, self._lease_expiry],
            args=[run_id, f"{lease.token} {owner}", repr(now), repr(lease.expires_at)],
        )
        return lease if won else None

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        _, scripts = self._redis()
        expires_at = time.time() + ttl
        held = await scripts.renew(
            keys=[self._leases, self._lease_expiry], args=[lease.run_id, lease.token, repr(expires_at)]
        )
        return None if held is None else _parse_lease(lease.run_id, held, expires_at)

    async def release_lease(self, lease: Lease) -> None:
        _, scripts = self._redis()
        await scripts.release(keys=[self._leases, self._lease_expiry], args=[lease.run_id, lease.token])

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        _, scripts = self._redis()
        now = time.time()
        expired = await scripts.recover(
            keys=[self._leases, self._lease_expiry, self._timers],
            args=[repr(now), _micros(datetime.fromtimestamp(now, UTC)), limit],
        )
        return [_text(run_id) for run_id in expired]


def _bounds(
    created_after: datetime | None, created_before: datetime | None, cursor: tuple[datetime, str] | None
) -> tuple[str, str]:
    """ZREVRANGEBYLEX max and min for the created window below the cursor.

    Entries are ``time|run_id`` with fixed-width times, so "created before T" is every
    entry below the string ``T`` and "after the cursor" every entry below ``T|run_id``;
    both upper bounds are exclusive and the smaller one wins.
    """
    uppers = []
    if created_before is not None:
        uppers.append(_time_key(created_before))
    if cursor is not None:
        uppers.append(f"{_time_key(cursor[0])}|{cursor[1]}")
    upper = "(" + min(uppers) if uppers else "+"
    # "Created after T" (exclusive) is every entry at or above the time T + 1µs.
    lower = "[" + f"{_micros(created_after, _YEAR_ONE) + 1:0{_TIME_WIDTH}d}" if created_after is not None else "-"
    return upper, lower
