"""Redis storage: shared by every worker, every operation one atomic Lua script.

Select it with ``redis://[:password@]host:6379/0``, ``rediss://…`` (TLS) or
``unix:///path/redis.sock``; an optional ``?prefix=name`` query (default ``pyworkflow``)
namespaces every key, so several apps can share one database. The password never shows
in :attr:`url`, ``repr()`` or errors. Needs ``pip install 'pyworkflow-celery[redis]'``.

Key layout
==========
Every key starts with ``{prefix}:``; the patterns live in :data:`KEYS` and nowhere else
(scripts receive the keys, or key stems, built from that table: the hot scripts get one
string of stems and the run id, and join a run's keys themselves).

====================================== ====== ==========================================
key                                    type   holds
====================================== ====== ==========================================
``{p}:run:{run_id}``                   hash   one field per :class:`WorkflowRun` field,
                                              each a JSON text; plus ``@`` meta fields:
                                              ``@seq`` (the log's last seq), ``@wake``
                                              (``wake_at`` in µs, ``''`` for none),
                                              ``@mseq`` (the last message seq),
                                              ``@status``, ``@member`` (the run's index
                                              entry), ``@wf_index``, ``@wfs_stem`` and
                                              ``@idem`` (the keys delete/moves touch)
``{p}:events:{run_id}``                list   event JSON; index ``i`` holds seq ``i + 1``
``{p}:inbox:{run_id}``                 hash   ``{seq}`` -> the message's JSON text (its
                                              payload as posted); ``k:{key}`` -> the
                                              seq a message idempotency key names
``{p}:pending:{run_id}``               zset   seqs of unconsumed messages, scored by seq
``{p}:idem:{key}``                     string the run hash key the idempotency key names
``{p}:timers``                         zset   run_id scored by its timer (µs since epoch)
``{p}:leases``                         hash   run_id -> ``"{token} {owner}"``
``{p}:lease_expiry``                   zset   run_id scored by expires_at (s since epoch)
``{p}:runs``                           zset   every run's index entry
``{p}:runs:status:{status}``           zset   index entries of runs in ``status``
``{p}:runs:wf:{workflow}``             zset   index entries of one workflow's runs
``{p}:runs:wfs:{workflow}:{status}``   zset   … of one workflow's runs in one status
``{p}:schedule:{schedule_id}``         hash   ``version``, ``body`` (JSON text), ``due``
                                              (µs since epoch, ``''`` for none)
``{p}:schedules``                      zset   every schedule id, score 0 (id order)
``{p}:schedules:due``                  zset   schedule ids scored by ``due``
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
versus ``{}``); message payloads too are stored as the text Python wrote. The timer
follows ``@wake`` and the status by :func:`~pyworkflow.storage.base.effective_wake`
inside the same script; "messages pending" is ``ZCARD`` of the pending set after this
append's ZREM, so the rule costs O(1) plus O(consumed).

Scripts and round trips
=======================
The scripts live in :mod:`pyworkflow.storage.redis_lua`; each is registered once per
client (EVALSHA, loaded on the first NOSCRIPT) and does all its reads and writes in one
atomic step, its checks before its first write (Redis does not roll a script back).

================================ ============ ==============================================
operation                        round trips  how
================================ ============ ==============================================
create_run                       1            CREATE: idempotency lookup, record, log,
                                              four index entries
get_run                          1            READ: HMGET, joined into one string
update_run                       1            APPEND (no events): fields, indexes, timer,
                                              record
list_runs                        1            LIST: ZREVRANGEBYLEX + READ of each run
count_runs                       1 + keys /   SCAN for the workflow sets, then one MULTI
                                 1,000        of ZCARD per status and workflow set
                                              (ZLEXCOUNT with ``created_after``)
delete_run                       1            DELETE: record, log, inbox, timer, lease,
                                              key, index entries
append_events                    1            APPEND: ``@seq`` and lease checks, RPUSH,
                                              ``run_changes``, consume (ZREM), index
                                              moves, timer, lease release
get_events                       1            EVENTS: LRANGE of exactly the requested
                                              slice, joined into one string
post_message                     1            POST: key lookup, ``@mseq`` + 1, inbox,
                                              ``wake_at`` and timer (ZADD LT) down to now
get_messages                     1            MESSAGES: ZRANGE pending + HMGET (or
                                              HGETALL for every message)
begin_activation                 1            BEGIN: status, lease, due checks; lease,
                                              record, whole log, pending messages
get_timer                        1            ZSCORE
claim_due_timers                 1            CLAIM: ZRANGEBYSCORE + re-score + names
acquire/renew/release_lease      1            ACQUIRE / RENEW / RELEASE
recover_expired_leases           1            RECOVER: expired ids, lease gone, timer = now
================================ ============ ==============================================

Arguments are few and pre-joined, because redis-py packs each argument separately and
that packing was most of a call's client CPU: CREATE, APPEND, BEGIN and POST take the
key stems (built once per backend), the run id, the strings a caller chooses (tokens,
owners, idempotency keys, index keys naming a workflow) one argument each, one header
string of Python-formatted values (numbers, statuses, JSON texts) joined by US (0x1F),
and the events' JSON texts joined by RS (0x1E); control characters never occur raw in
JSON text, so the scripts split with ``string.find`` exactly, and still never decode
JSON (:mod:`pyworkflow.storage.redis_codec` packs the arguments and decodes the
replies). Each operation is bounded by one ``asyncio.timeout`` rather than redis-py's
per-command socket timeout (see :mod:`pyworkflow.storage.redis_clients`).

The first call of a script on a fresh server adds a SCRIPT LOAD (two more round trips,
once per client). Appending costs the same at seq 10 and seq 100 000: the last seq is a
hash field, never the log's length read back. A damaged log costs one more round trip,
to name the broken event.

Times
=====
Lease and timer times come from this process's wall clock and travel as script
arguments (:func:`~pyworkflow.storage.base.to_us` for timers and wake times), so every
backend shares the one notion of "now" the contract uses; the Redis server's clock is
never read. Hosts must keep their clocks in sync (NTP).

Durability and deployment
=========================
A write is as durable as the server's persistence makes it: with RDB snapshots only, a
crash loses the writes since the last snapshot; ``appendonly yes`` with ``appendfsync
everysec`` loses at most about a second; ``appendfsync always`` loses nothing that was
acknowledged. Replication is asynchronous, so a failover can lose acknowledged writes.
Scripts derive a run's keys from the run id and index keys from fields they read, and the
hottest declare no KEYS, so this backend needs a single Redis node (or a primary with
replicas), not Redis Cluster; and Redis 6.2 or later (ZADD LT).

Event loops, threads, fork
==========================
One instance serves every event loop and thread: it holds one client per running loop,
made lazily inside it, closed with its loop or by :meth:`close` (see
:mod:`pyworkflow.storage.redis_clients`, which also covers fork). A client passed in
with ``client=`` belongs to the caller, who closes it; it is used from whatever loop calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pyworkflow.clock import utcnow
from pyworkflow.errors import ConfigurationError, CorruptedStorageError, RunFinishedError, RunNotFoundError
from pyworkflow.events import Event, trusted
from pyworkflow.storage.base import (
    Activation,
    Lease,
    Message,
    RunCounts,
    RunPage,
    RunStatus,
    StorageBackend,
    StoredSchedule,
    Timer,
    WorkflowRun,
    check_append,
    check_batch,
    check_created_after,
    check_message,
    check_run_changes,
    corrupted,
    decode_cursor,
    decode_events,
    from_us,
    message_id,
    new_token,
    readable_runs,
    redact_url,
    refused_append,
    tally_runs,
    to_us,
)

try:
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ConfigurationError(
        f"the Redis storage backend needs the redis package ({exc}); pip install 'pyworkflow-celery[redis]'"
    ) from exc

from pyworkflow.storage import redis_codec as codec
from pyworkflow.storage import redis_lua as lua
from pyworkflow.storage.redis_clients import LoopClients
from pyworkflow.storage.redis_lua import Scripts

__all__ = ["KEYS", "RedisStorageBackend"]

#: Every key pattern this backend writes. ``{p}`` is the prefix.
KEYS: dict[str, str] = {
    "run": "{p}:run:{run_id}",
    "events": "{p}:events:{run_id}",
    "inbox": "{p}:inbox:{run_id}",
    "pending": "{p}:pending:{run_id}",
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
    "schedule": "{p}:schedule:{schedule_id}",
    "schedules": "{p}:schedules",
    "schedules_due": "{p}:schedules:due",
}

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "pyworkflow"
_SCHEMES = ("redis", "rediss", "unix")
#: Keys SCAN looks at per call in count_runs. The server's walk costs about the same
#: whatever the step (measured on 100,000 runs, 200,000 keys: 410 ms in steps of 1,000,
#: 320 ms in steps of 10,000), and a small step blocks other clients ~1 ms at a time, not ~10.
_SCAN_COUNT = 1_000
_GLOB_SPECIAL = re.compile(r"[\\*?\[\]]")


class RedisStorageBackend(StorageBackend):
    unavailable_errors = (RedisConnectionError, RedisTimeoutError, OSError)

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
        self._given = Scripts.register(client) if client is not None else None
        self._clients = LoopClients(self._dsn)
        self._closed = False
        self._status_stem = KEYS["by_status"].format(p=prefix, status="")
        self._run_stem = KEYS["run"].format(p=prefix, run_id="")
        self._timers = KEYS["timers"].format(p=prefix)
        self._leases = KEYS["leases"].format(p=prefix)
        self._lease_expiry = KEYS["lease_expiry"].format(p=prefix)
        self._all_runs = KEYS["all_runs"].format(p=prefix)
        # Every per-run pattern ends with its run id, by_status with the status: the
        # stems are the patterns formatted with those left empty.
        self._stems = lua.pack_stems([KEYS[name].format(p=prefix, run_id="", status="") for name in lua.STEM_NAMES])

    @classmethod
    def from_url(cls, url: str) -> RedisStorageBackend:
        """A backend for ``redis://…`` or ``rediss://…``; ``?prefix=`` sets the key prefix."""
        return cls(url)

    def _redis(self) -> Scripts:
        """The running loop's client and its scripts (see :mod:`.redis_clients`)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        return self._given if self._given is not None else self._clients.get()

    async def close(self) -> None:
        self._closed = True
        await self._clients.close()

    def _key(self, name: str, **parts: str) -> str:
        return KEYS[name].format(p=self.prefix, **parts)

    @staticmethod
    async def _guard(scripts: Scripts, call: Any, run_id: str | None = None) -> Any:
        """Await ``call`` within the operation timeout (see :mod:`.redis_clients`); for a
        run's operation, a key of the wrong type is a damaged run, not a server error."""
        try:
            if scripts.timeout is None:
                return await call
            try:
                async with asyncio.timeout(scripts.timeout) as window:
                    return await call
            except TimeoutError:
                if window.expired():
                    raise RedisTimeoutError(f"Redis did not answer within {scripts.timeout:g}s") from None
                raise
        except ResponseError as exc:
            if run_id is not None and "WRONGTYPE" in str(exc):
                raise corrupted(run_id, "run", f"a key of this run holds the wrong Redis type: {exc}") from exc
            raise

    # -- runs -------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        scripts = self._redis()
        args = [self._stems, run.run_id, *self._create_args(run), codec.encode_events(events)]
        reply = await self._guard(scripts, scripts.create(keys=(), args=args), run.run_id)
        if reply[0] == lua.C_EXISTING:
            existing_id = codec.text(reply[1]).removeprefix(self._run_stem)
            return codec.existing_run(existing_id, reply[2]), False
        if reply[0] == lua.C_DUPLICATE:
            raise ValueError(f"run {run.run_id!r} already exists")
        codec.check_corrupt(run.run_id, reply, "run")
        return run, True

    def _create_args(self, run: WorkflowRun) -> list[str]:
        """CREATE's idempotency key, workflow index key and stem, and header (see CREATE)."""
        workflow = run.workflow_name
        wf_index = self._key("by_workflow", workflow=workflow)
        wfs_stem = self._key("by_workflow_status", workflow=workflow, status="")
        idem = self._key("idempotency", key=run.idempotency_key) if run.idempotency_key is not None else ""
        return [idem, wf_index, wfs_stem, codec.create_header(run)]

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        scripts = self._redis()
        reply = await self._guard(scripts, scripts.read(keys=[self._key("run", run_id=run_id)]), run_id)
        return codec.decode_record(run_id, reply)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        checked = check_run_changes(changes)
        reply = await self._append(run_id, [], None, None, checked, (), release=False, want_record=True)
        return codec.existing_run(run_id, reply[1])

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
        upper, lower = codec.bounds(created_after, created_before, after)
        scripts = self._redis()
        reply = await self._guard(
            scripts,
            scripts.list(
                keys=[self._index_key(wanted, workflow_name)],
                args=[upper, lower, limit + 1, self._run_stem, codec.TIME_WIDTH + 2],
            ),
        )
        members = [codec.text(reply[i]) for i in range(0, len(reply), 2)]
        records = zip(map(codec.member_run_id, members[:limit]), reply[1 : 2 * limit : 2], strict=True)
        runs = readable_runs(records, codec.existing_run)
        next_cursor = codec.member_cursor(members[limit - 1]) if len(members) > limit else None
        return RunPage(runs=runs, next_cursor=next_cursor)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        # By status: the status sets partition the runs, so one ZCARD each. By workflow:
        # the workflow sets are as cheap to count, but no key lists their names, so they
        # are found with SCAN, which walks the database's whole key space (two keys or so
        # per run, plus whatever else the database holds: about 400 ms per 100,000 runs)
        # in steps of _SCAN_COUNT keys, never blocking the server for long. Still far
        # cheaper than reading every run. A set of workflow names kept by CREATE would make
        # it O(workflows), at the price of a layout change existing stores must be filled
        # in for.
        after = check_created_after("count_runs", created_after)
        scripts = self._redis()
        client = scripts.client
        stem = self._key("by_workflow", workflow="")
        pattern = _GLOB_SPECIAL.sub(r"\\\g<0>", stem) + "*"
        found: set[str] = set()  # SCAN may return a key more than once
        cursor = 0
        while True:
            cursor, keys = await self._guard(
                scripts, client.scan(cursor, match=pattern, count=_SCAN_COUNT, _type="zset")
            )
            found.update(codec.text(key) for key in keys)
            if not cursor:
                break
        statuses = [s.value for s in RunStatus]
        workflows = sorted(found)
        # One MULTI: every count from one moment (a workflow whose first run is created
        # after the SCAN is missing from by_workflow, and counted in by_status).
        pipe = client.pipeline(transaction=True)
        lower = "-" if after is None else codec.bounds(after, None, None)[1]
        for key in [self._status_stem + status for status in statuses] + workflows:
            if after is None:
                pipe.zcard(key)
            else:
                pipe.zlexcount(key, lower, "+")
        counts = await self._guard(scripts, pipe.execute())
        return tally_runs(
            zip(statuses, counts[: len(statuses)], strict=True),
            zip((key[len(stem) :] for key in workflows), counts[len(statuses) :], strict=True),
        )

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        found: list[str] = []
        upper = "+"
        scripts = self._redis()
        while len(found) < limit:
            reply = await self._guard(
                scripts,
                scripts.list(keys=[self._all_runs], args=[upper, "-", 500, self._run_stem, codec.TIME_WIDTH + 2]),
            )
            for i in range(0, len(reply), 2):
                run_id = codec.member_run_id(codec.text(reply[i]))
                try:
                    codec.existing_run(run_id, reply[i + 1])
                except CorruptedStorageError:
                    found.append(run_id)
            if len(reply) < 2 * 500:
                break
            upper = "(" + codec.text(reply[-2])
        return found[: max(limit, 0)]

    def _index_key(self, status: str | None, workflow: str | None) -> str:
        if workflow is not None and status is not None:
            return self._key("by_workflow_status", workflow=workflow, status=status)
        if workflow is not None:
            return self._key("by_workflow", workflow=workflow)
        if status is not None:
            return self._status_stem + status
        return self._all_runs

    async def delete_run(self, run_id: str) -> bool:
        keys = [
            *self._run_keys(run_id, "run", "events", "inbox", "pending"),
            self._leases,
            self._lease_expiry,
            self._timers,
            self._all_runs,
        ]
        scripts = self._redis()
        code = await self._guard(scripts, scripts.delete(keys=keys, args=[run_id, self._status_stem]), run_id)
        if code == lua.C_CORRUPT:
            raise corrupted(run_id, "run record", "it lacks its index fields; it cannot be deleted cleanly")
        return bool(code)

    def _run_keys(self, run_id: str, *names: str) -> list[str]:
        return [self._key(name, run_id=run_id) for name in names]

    # -- events -----------------------------------------------------------------------

    async def append_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        lease_token: str | None = None,
        run_changes: Mapping[str, Any] | None = None,
        consume: Sequence[int] = (),
        release_lease: bool = False,
    ) -> None:
        expected, changes, seqs = check_append(run_id, events, lease_token, run_changes, consume, release_lease)
        await self._append(run_id, events, expected, lease_token, changes, seqs, release=release_lease)

    async def _append(
        self,
        run_id: str,
        events: Sequence[Event],
        expected: int | None,
        lease_token: str | None,
        changes: Mapping[str, Any],
        consume: Sequence[int],
        *,
        release: bool,
        want_record: bool = False,
    ) -> Any:
        """Run the APPEND script (``changes`` already checked); raise what its reply means."""
        header = codec.append_header(expected, changes, consume, utcnow(), release=release, want_record=want_record)
        scripts = self._redis()
        args = [self._stems, run_id, lease_token or "", header, codec.encode_events(events)]
        reply = await self._guard(scripts, scripts.append(keys=(), args=args), run_id)
        code = reply[0]
        if code in (lua.C_NOT_FOUND, lua.C_REFUSED):
            last = int(reply[1]) if code == lua.C_REFUSED else 0
            refusal = refused_append(
                run_id,
                exists=code == lua.C_REFUSED,
                last_seq=last,
                expected=last if expected is None else expected,
                lease_token=lease_token,
                held_token=codec.text(reply[2]).partition(" ")[0] or None if code == lua.C_REFUSED else None,
            )
            raise refusal or corrupted(run_id, "lease", "the append was refused for no reason the contract names")
        codec.check_corrupt(run_id, reply)
        return reply

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        after_seq = max(after_seq, 0)
        if limit is not None and limit <= 0:
            return []
        scripts = self._redis()
        key = self._key("events", run_id=run_id)
        # List index i holds seq i + 1, so the slice is exactly the events asked for.
        end = -1 if limit is None else after_seq + limit - 1
        count, joined = await self._guard(scripts, scripts.events(keys=[key], args=[after_seq, end]), run_id)
        return await self._events(scripts, run_id, count, joined, after_seq, end)

    async def _events(
        self, scripts: Scripts, run_id: str, count: int, joined: bytes, after: int, end: int
    ) -> list[Event]:
        """The events of a joined slice; when it does not read back, read it item by item
        (one more round trip, only for a damaged log) to name the broken event."""
        if not count:
            return []
        with contextlib.suppress(CorruptedStorageError):
            events = decode_events([joined], run_id, after + 1)
            if len(events) == count:  # an item holding two events would parse too
                return events
        items = await self._guard(scripts, scripts.client.lrange(self._key("events", run_id=run_id), after, end))
        events = decode_events(items, run_id, after + 1)
        if len(events) != len(items):
            raise corrupted(run_id, "event log", f"an item after seq {after} holds more than one event")
        return events

    # -- timers -----------------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        scripts = self._redis()
        score = await self._guard(scripts, scripts.client.zscore(self._timers, run_id))
        return None if score is None else Timer(run_id=run_id, wake_at=from_us(round(score)))

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        if limit <= 0:
            return []
        later = to_us(now) + round(redeliver_after * 1_000_000)
        scripts = self._redis()
        args: list[str | int] = [to_us(now), later, limit, self._run_stem]
        due = await self._guard(scripts, scripts.claim(keys=[self._timers], args=args))
        return [
            Timer(
                run_id=codec.text(due[i]),
                wake_at=from_us(round(float(due[i + 1]))),
                workflow_name=codec.workflow_name(due[i + 2]),
            )
            for i in range(0, len(due), 3)
        ]

    # -- schedules --------------------------------------------------------------------

    def _schedule_keys(self, schedule_id: str) -> list[str]:
        return [self._key("schedule", schedule_id=schedule_id), self._key("schedules"), self._key("schedules_due")]

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        due = "" if due_at is None else str(to_us(due_at))
        scripts = self._redis()
        call = scripts.save_schedule(keys=self._schedule_keys(schedule_id), args=[schedule_id, version, body, due])
        written = int(await self._guard(scripts, call))
        return written or None

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        return (await self._schedules([schedule_id]))[0]

    async def _schedules(self, ids: Sequence[str]) -> list[StoredSchedule | None]:
        if not ids:
            return []
        scripts = self._redis()
        pipe = scripts.client.pipeline(transaction=False)
        for schedule_id in ids:
            pipe.hmget(self._key("schedule", schedule_id=schedule_id), "body", "due", "version")
        rows = await self._guard(scripts, pipe.execute())
        found: list[StoredSchedule | None] = []
        for schedule_id, (body, due, version) in zip(ids, rows, strict=True):
            if body is None or version is None:
                found.append(None)  # deleted since the index was read
                continue
            due_text = codec.text(due or b"")
            at = from_us(int(due_text)) if due_text else None
            found.append(StoredSchedule(schedule_id, codec.text(body), at, int(version)))
        return found

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        if limit <= 0:
            return []
        scripts = self._redis()
        low = "-" if after is None else "(" + after
        call = scripts.client.zrangebylex(self._key("schedules"), low, "+", start=0, num=limit)
        ids = [codec.text(i) for i in await self._guard(scripts, call)]
        return [s for s in await self._schedules(ids) if s is not None]

    async def delete_schedule(self, schedule_id: str) -> bool:
        scripts = self._redis()
        call = scripts.delete_schedule(keys=self._schedule_keys(schedule_id), args=[schedule_id])
        return int(await self._guard(scripts, call)) > 0

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        if limit <= 0:
            return []
        scripts = self._redis()
        call = scripts.client.zrangebyscore(self._key("schedules_due"), "-inf", to_us(now), start=0, num=limit)
        ids = [codec.text(i) for i in await self._guard(scripts, call)]
        return [s for s in await self._schedules(ids) if s is not None]

    # -- inbox ------------------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        text = check_message(run_id, kind, payload, idempotency_key)
        header, body = codec.post_args(kind, text, idempotency_key, utcnow())
        scripts = self._redis()
        args = [self._stems, run_id, idempotency_key or "", header, body]
        reply = await self._guard(scripts, scripts.post(keys=(), args=args), run_id)
        if reply[0] == lua.C_NOT_FOUND:
            raise RunNotFoundError(run_id)
        if reply[0] == lua.C_FINISHED:
            raise RunFinishedError(run_id, codec.text(reply[1]))
        codec.check_corrupt(run_id, reply)
        return message_id(run_id, int(reply[1]))

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        keys = self._run_keys(run_id, "inbox", "pending")
        scripts = self._redis()
        flat = await self._guard(scripts, scripts.messages(keys=keys, args=["0" if pending_only else "1"]), run_id)
        messages = codec.decode_messages(run_id, flat)
        return messages if pending_only else sorted(messages, key=lambda m: m.seq)

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        scripts = self._redis()
        clock = time.time()
        token = new_token()
        header = f"{clock!r}{codec.UNIT}{clock + ttl!r}{codec.UNIT}{to_us(now)}"
        args = [self._stems, run_id, f"{token} {owner}", header]
        reply = await self._guard(scripts, scripts.begin(keys=(), args=args), run_id)
        code = reply[0]
        if code == lua.C_NOT_FOUND:
            return Activation("missing")
        codec.check_corrupt(run_id, reply)
        run = codec.existing_run(run_id, reply[1])
        if code != lua.C_OK:
            return Activation(lua.C_BEGIN[code], run)  # type: ignore[arg-type]
        lease = trusted(Lease, {"run_id": run_id, "owner": owner, "token": token, "expires_at": clock + ttl})
        events = await self._events(scripts, run_id, reply[2], reply[3], 0, -1)
        took_over = len(reply) > 5 and codec.text(reply[5]) == "1"
        return Activation("leased", run, lease, events, codec.decode_messages(run_id, reply[4]), took_over)

    # -- leases -----------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        scripts = self._redis()
        now = time.time()
        lease = Lease(run_id=run_id, owner=owner, token=new_token(), expires_at=now + ttl)
        won = await self._guard(
            scripts,
            scripts.acquire(
                keys=[self._leases, self._lease_expiry],
                args=[run_id, f"{lease.token} {owner}", repr(now), repr(lease.expires_at)],
            ),
        )
        return lease if won else None

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        expires_at = time.time() + ttl
        scripts = self._redis()
        held = await self._guard(
            scripts,
            scripts.renew(keys=[self._leases, self._lease_expiry], args=[lease.run_id, lease.token, repr(expires_at)]),
        )
        if held is None:
            return None
        token, _, owner = codec.text(held).partition(" ")
        return Lease(run_id=lease.run_id, owner=owner, token=token, expires_at=expires_at)

    async def release_lease(self, lease: Lease) -> None:
        scripts = self._redis()
        await self._guard(
            scripts, scripts.release(keys=[self._leases, self._lease_expiry], args=[lease.run_id, lease.token])
        )

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        now = time.time()
        scripts = self._redis()
        expired = await self._guard(
            scripts,
            scripts.recover(
                keys=[self._leases, self._lease_expiry, self._timers],
                args=[repr(now), to_us(datetime.fromtimestamp(now, timezone.utc)), limit],
            ),
        )
        return [codec.text(run_id) for run_id in expired]


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
