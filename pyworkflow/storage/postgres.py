"""PostgreSQL storage: every promise of the contract, kept by the database.

Selected by ``postgresql://user:password@host:5432/db?schema=pyworkflow`` (``postgres://``
works too; ``schema`` defaults to ``pyworkflow``; other query parameters go to libpq).
Install the driver with ``pip install 'pyworkflow-celery[postgres]'``.

Why psycopg 3
-------------
* One driver for sync and async code: the engine is async, while scripts, migrations
  and tests use the same library synchronously. asyncpg is async only.
* Pipeline mode (libpq): several statements leave in one write and come back in one
  read, so a multi-statement transaction costs one round trip (``begin_activation``).
* A maintained pool (``psycopg_pool``, same project) that replaces broken connections.
* Binary wheels (``psycopg[binary]``): no compiler, no system libpq.
* Server-side prepared statements made automatically for statements run often, and
  binary parameters, which pass the event arrays without text escaping.

Connections
-----------
One backend object may be used from any event loop and thread: it holds one pool per
running loop, opened lazily by the loop's first call (a backend may be built outside any
loop), and after a fork the child opens its own and leaves the parent's sessions alone;
:meth:`~PostgresStorageBackend.close` closes them all, and pools still open at exit are
closed then, so no process ends with pending pool tasks (see
:mod:`pyworkflow.storage.postgres_pools`). Connections run in autocommit mode with the
session time zone set to UTC, so each statement is its own transaction. "Now" for leases
and timers is the Python wall clock, passed as a parameter, so every backend shares one
notion of time.

Schema and migrations
---------------------
Every object lives in one schema, created on first use, so several deployments can
share a database and ``DROP SCHEMA ... CASCADE`` removes everything::

    pyworkflow_migrations (version PK, applied_at)
    runs     (run_id PK, workflow_name, status, input json, result json, error json,
              idempotency_key UNIQUE, created_at, updated_at, completed_at, deadline,
              wake_at, last_seq, last_message)
              indexes (created_at, run_id), (status, created_at, run_id),
              (workflow_name, created_at, run_id): each list_runs filter, newest first;
              (status, updated_at): prune_runs
    events   (run_id FK -> runs ON DELETE CASCADE, seq, type, timestamp, body text,
              data jsonb GENERATED FROM body, PRIMARY KEY (run_id, seq))
    messages (run_id FK -> runs ON DELETE CASCADE, seq, kind, payload json,
              idempotency_key, posted_at, consumed, PRIMARY KEY (run_id, seq),
              UNIQUE (run_id, idempotency_key))   index (run_id, seq) WHERE NOT consumed
    timers   (run_id PK, wake_at)                  index (wake_at, run_id)
    leases   (run_id PK, owner, token, expires_at) index (expires_at)

The SQL lives in :mod:`pyworkflow.storage.postgres_sql`. On first use a backend reads the
schema's version (one query). If it is behind, it migrates in one transaction holding
``pg_advisory_xact_lock`` on a key derived from the schema name, so processes starting
together apply each migration exactly once. A version newer than this code knows raises
:class:`~pyworkflow.errors.ConfigurationError` instead of writing records an older
release cannot describe.

The timer follows ``wake_at``: every statement that changes a run's ``wake_at`` or
``status`` computes the wake time by the earliest-wins rule of
:func:`~pyworkflow.storage.base.effective_wake` in SQL and sets or removes the timer in
the same statement. Records are read as JSON built by the server (``json_build_object``)
and decoded by the shared :func:`~pyworkflow.storage.base.decode_run`.

Why events keep ``body`` *and* ``data``: JSONB normalises what it stores (keys sorted
by length, duplicate keys dropped, ``1e20`` read back as the integer
``100000000000000000000``). Replay must read back exactly what was written, so the
event's JSON text (``body``) is the truth and ``data`` is a JSONB column generated from
it for SQL. Run payloads (``input``, ``result``, ``error``) and message payloads are
``json``, which keeps the text as written and still supports ``->`` and ``->>``.

Round trips per operation (warm pool)
-------------------------------------
======================== =================================================================
create_run               1: ``INSERT ... ON CONFLICT DO NOTHING`` of the run with the
                         events inserted from ``unnest`` arrays in a CTE, one statement;
                         +1 to read the existing run when the idempotency key is taken
append_events            1: one statement: ``UPDATE runs SET last_seq = new WHERE run_id
                         = ... AND last_seq = expected`` (plus a ``FOR SHARE`` check of the
                         lease row) ``RETURNING``, with CTEs reading that row to insert the
                         batch, mark consumed messages, release the lease and set the
                         timer; +1 only when refused, to say why
post_message             1: one statement: the run row's message counter bumped (its lock
                         orders the messages), the message, ``wake_at`` and the timer; +1
                         when a concurrent post with the same key won (the retry finds it)
begin_activation         1: four statements pipelined in one implicit transaction: take
                         the lease, then (a new snapshot) the run (giving the lease back
                         if it is finished or not due), its log and its pending messages
update_run, get_*,       1
list_runs, timers,
leases, get_messages
count_runs               1: ``GROUP BY GROUPING SETS ((status), (workflow_name))``, one
                         pass over ``runs`` (about 50-100 ms per 100,000 runs)
claim_due_timers         1: ``FOR UPDATE SKIP LOCKED`` CTE, re-scored by an UPDATE
recover_expired_leases   1: ``DELETE ... RETURNING`` CTE feeding an upsert of timers
delete_run               1: three DELETEs pipelined; statements up to one Sync form one
                         implicit transaction
prune_runs               2 per batch of up to 500 runs, +1 to find none left
first use (per loop)     the pool's first connection and its ``SET TIME ZONE``; the first
                         in the process also connects for 1 version query (+ migration)
======================== =================================================================

No operation reads or scans the log to write it: an append checks one ``runs`` row
(a HOT update when no indexed column changes) and appends to the ``(run_id, seq)``
btree, so its cost stays flat as the log grows. Each write waits for its WAL flush; add
``options=-c synchronous_commit=off`` to the URL to trade the last moments before a
server crash for latency.

Querying events with SQL
------------------------
``data`` is JSONB, so payloads can be searched directly, e.g. the failures of a step::

    SELECT run_id, seq, timestamp, data->'error'->>'message' AS message
    FROM pyworkflow.events
    WHERE type = 'step.failed' AND data->>'step' = 'charge_card'
    ORDER BY timestamp DESC;

For containment queries (``data @> '{"step": "charge_card"}'``) over large logs, add
``CREATE INDEX ON pyworkflow.events USING gin (data jsonb_path_ops)``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic_core import to_json

from pyworkflow.clock import utcnow
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    RunFinishedError,
    RunNotFoundError,
    StorageError,
)
from pyworkflow.events import Event, trusted
from pyworkflow.storage.base import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
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
    decode_cursor,
    decode_events,
    decode_message,
    decode_run,
    message_id,
    message_payload,
    new_token,
    page_cursor,
    readable_runs,
    redact_url,
    refused_append,
    tally_runs,
    utc,
)

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    from pyworkflow.storage import postgres_sql as q
    from pyworkflow.storage.postgres_pools import LoopPools, Pool
except ImportError as exc:

    class _MissingDriverError(ConfigurationError, ImportError):
        """Also an ImportError, so ``except ImportError`` around optional backends works."""

    raise _MissingDriverError(
        f"the PostgreSQL backend needs psycopg 3 ({exc}); install it with: pip install 'pyworkflow-celery[postgres]'"
    ) from exc

__all__ = ["SCHEMA_VERSION", "PostgresStorageBackend"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = q.SCHEMA_VERSION

_SCHEMES: Final = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CONNECT_TIMEOUT: Final = 30.0
_PRUNE_BATCH: Final = 500
_SCAN_BATCH: Final = 500  # the LIMIT of Queries.scan_records
_RETRIES: Final = 3
_TERMINAL_VALUES: Final = frozenset(s.value for s in TERMINAL_STATUSES)


# -- URLs ----------------------------------------------------------------------------------


def _split_schema(url: str) -> tuple[str, str | None]:
    """``url`` without its ``schema`` query parameter (libpq rejects it), and that schema."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in pairs if key == "schema"]
    if not schemas:
        return url, None
    # quote, not quote_plus: libpq reads "+" literally ("-c+synchronous_commit" breaks)
    rest = urlencode([(key, value) for key, value in pairs if key != "schema"], quote_via=quote)
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


def _with_schema(url: str, schema: str) -> str:
    if "://" not in url:
        return f"{url} (schema {schema})"
    parts = urlsplit(url)
    query = "&".join(p for p in (parts.query, urlencode({"schema": schema})) if p)
    return urlunsplit(parts._replace(query=query))


# -- values ----------------------------------------------------------------------------------


def _json_text(value: Any) -> str | None:
    """JSON text for a ``json`` column; ``None`` becomes SQL NULL."""
    return None if value is None else to_json(value).decode()


def _encode_changes(checked: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Changes already checked by :func:`check_run_changes`, as statement parameters."""
    fields = tuple(sorted(checked))
    params: dict[str, Any] = {"now": utcnow()}
    for name in fields:
        value = checked[name]
        if name == "status":
            value = value.value
        elif name in q.JSON_FIELDS:
            value = _json_text(value)
        params[f"c_{name}"] = value
    return fields, params


def _event_params(events: Sequence[Event]) -> dict[str, Any]:
    return {
        "seqs": [e.seq for e in events],
        "types": [str(e.type) for e in events],
        "stamps": [utc(e.timestamp) for e in events],
        "bodies": [e.to_json() for e in events],
    }


def _run_params(run: WorkflowRun, last_seq: int) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "workflow_name": run.workflow_name,
        "status": RunStatus(run.status).value,
        "input": to_json(run.input).decode(),
        "result": _json_text(run.result),
        "error": _json_text(run.error),
        "key": run.idempotency_key,
        "created_at": utc(run.created_at),
        "updated_at": utc(run.updated_at),
        "completed_at": run.completed_at and utc(run.completed_at),
        "deadline": run.deadline and utc(run.deadline),
        "wake_at": run.wake_at and utc(run.wake_at),
        "last_seq": last_seq,
        "parent_run_id": run.parent_run_id,
    }


def _message(run_id: str, row: Sequence[Any]) -> Message:
    seq, kind, payload, key, posted_at, consumed = row
    raw = {
        "run_id": run_id,
        "seq": seq,
        "kind": kind,
        "payload": message_payload(payload, run_id, seq),
        "idempotency_key": key,
        "posted_at": posted_at,
        "consumed": consumed,
    }
    return decode_message(raw, run_id)


def _advisory_key(schema: str) -> int:
    """A stable 64-bit lock id per schema (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"pyworkflow-migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _newer_schema(schema: str, version: int) -> ConfigurationError:
    return ConfigurationError(
        f"PostgreSQL schema {schema!r} is at version {version}, newer than this PyWorkflow knows "
        f"(up to {SCHEMA_VERSION}); a newer release migrated it. Upgrade pyworkflow to use this database.",
        schema=schema,
        version=version,
    )


def _gap_in_migrations(schema: str, versions: list[int], missing: list[int]) -> ConfigurationError:
    table = f"{schema}.pyworkflow_migrations"
    return ConfigurationError(
        f"PostgreSQL schema {schema!r}: {table} records migrations {versions} but not migration(s) "
        f"{missing}; the table was edited or damaged, and PyWorkflow will not guess whether those "
        f"changes are in the tables. If they are (a later migration is recorded, so they normally "
        f"were), record them again: INSERT INTO {table} (version) VALUES "
        + ", ".join(f"({v})" for v in missing)
        + "; otherwise restore the database from a backup.",
        schema=schema,
        missing=missing,
    )


async def _configure_session(conn: psycopg.AsyncConnection[Any]) -> None:
    # Once per pooled connection: timestamptz values then load as UTC datetimes.
    await conn.execute("SET TIME ZONE 'UTC'")


# -- the backend -----------------------------------------------------------------------------


class PostgresStorageBackend(StorageBackend):
    """The storage contract on PostgreSQL; see the module docstring."""

    unavailable_errors = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)

    def __init__(self, url: str, *, schema: str = "pyworkflow", min_size: int = 1, max_size: int = 10) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"invalid PostgreSQL schema name {schema!r}: use letters, digits and _ (at most 63, not starting "
                "with a digit)"
            )
        if min_size < 0 or max_size < max(min_size, 1):
            raise ConfigurationError(f"invalid pool sizes min_size={min_size}, max_size={max_size}")
        if _split_schema(url)[1] is not None:
            raise ConfigurationError(
                "the URL's ?schema= is read by PostgresStorageBackend.from_url(); pass schema=... to the constructor"
            )
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            # from None: libpq's message may quote the string, password included
            raise ConfigurationError(f"invalid PostgreSQL connection string {redact_url(url)!r}") from None
        self._conninfo = url  # holds the password: never logged, never shown
        self.schema = schema
        self.url = _with_schema(redact_url(url), schema)
        self._min_size = min_size
        self._max_size = max_size
        self._q = q.Queries(schema)
        self._appends: dict[tuple[tuple[str, ...], bool, bool, bool], bytes] = {}
        self._updates: dict[tuple[str, ...], bytes] = {}
        self._deletes: dict[LiteralString, tuple[bytes, bytes, bytes]] = {}
        self._lists: dict[tuple[bool, ...], bytes] = {}
        self._migrated = False
        self._pools = LoopPools(self._open, repr(self))

    @classmethod
    def from_url(cls, url: str) -> PostgresStorageBackend:
        """Build from ``postgresql://`` or ``postgres://`` URL; ``?schema=`` picks the schema."""
        if urlsplit(url).scheme not in _SCHEMES:
            raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r} (use postgresql://...)")
        conninfo, schema = _split_schema(url)
        return cls(conninfo, schema=schema or "pyworkflow")

    # -- connections ----------------------------------------------------------------------

    async def _open(self) -> Pool:
        """A new pool for the running loop, the schema migrated first."""
        if not self._migrated:
            await self._migrate()
            self._migrated = True
        pool: Pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            kwargs={"autocommit": True},
            configure=_configure_session,
            name=f"pyworkflow:{self.schema}",
        )
        try:
            await pool.open(wait=True, timeout=_CONNECT_TIMEOUT)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _migrate(self) -> None:
        # A plain connection rather than the pool: a wrong host, database or password
        # fails at once with the server's message instead of a pool timeout 30 s later.
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            if await self._schema_version(conn) == SCHEMA_VERSION:
                return
            async with conn.transaction():
                await self._apply_migrations(conn)

    async def _schema_version(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        """The schema's version, or None when it has no migrations table yet. Every
        migration up to it must be recorded: with one missing, which changes the tables
        hold is unknown, and neither running it again nor skipping it is safe."""
        try:
            rows = await (await conn.execute(self._q.versions)).fetchall()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        versions = [int(row[0]) for row in rows]
        version = versions[-1] if versions else 0
        if version > SCHEMA_VERSION:
            raise _newer_schema(self.schema, version)
        missing = sorted(set(range(1, version + 1)) - set(versions))
        if missing:
            raise _gap_in_migrations(self.schema, versions, missing)
        return version

    async def _apply_migrations(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Serialise concurrent starters; the lock ends with the transaction.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_advisory_key(self.schema)])
        await conn.execute(self._q.create_schema)
        await conn.execute(self._q.create_migrations)
        current = await self._schema_version(conn) or 0
        for version, statements in sorted(self._q.migrations.items()):
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(self._q.record_migration, [version])
            log.info("applied PyWorkflow schema migration %d to %s", version, self.url)

    async def _fetchone(self, query: bytes, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...] | None:
        pool = await self._pools.get()
        async with pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchone()

    async def _fetchall(self, query: bytes, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        pool = await self._pools.get()
        async with pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def _rowcount(self, query: bytes, params: Sequence[Any] | Mapping[str, Any]) -> int:
        pool = await self._pools.get()
        async with pool.connection() as conn:
            return (await conn.execute(query, params)).rowcount

    async def close(self) -> None:
        await self._pools.close()

    # -- runs -----------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        params = {**_run_params(run, len(events)), **_event_params(events)}
        # A conflicting run may vanish (deleted) between the insert and the read: try again.
        for _ in range(_RETRIES):
            row = await self._fetchone(self._q.create_run, params)
            if row is not None and row[0] == 1:
                return run, True
            existing = await self._fetchone(self._q.existing_run, {"key": run.idempotency_key, "run_id": run.run_id})
            if existing is not None:
                if existing[1]:
                    # the run the key names: another id than the one asked to create
                    return decode_run(existing[0], run.run_id, of_run=False), False
                raise ValueError(f"run {run.run_id!r} already exists")
        raise StorageError(f"run {run.run_id!r}: creation kept conflicting with runs that were deleted meanwhile")

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        row = await self._fetchone(self._q.get_run, [run_id])
        return None if row is None else decode_run(row[0], run_id)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        fields, params = _encode_changes(check_run_changes(changes))
        query = self._updates.get(fields)
        if query is None:
            query = self._updates[fields] = q.update_statement(self.schema, fields)
        row = await self._fetchone(query, {**params, "run_id": run_id, "consume": []})
        if row is None:
            raise RunNotFoundError(run_id)
        return decode_run(row[0], run_id)

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
        limit = max(limit, 0)
        params: dict[str, Any] = {
            "status": None if status is None else RunStatus(status).value,
            "workflow_name": workflow_name,
            "created_after": created_after and utc(created_after),
            "created_before": created_before and utc(created_before),
            "cursor_at": after and after[0],
            "cursor_id": after and after[1],
            "limit": limit + 1,  # one extra row says whether another page exists
        }
        shape = tuple(params[name] is not None for name, _ in q.LIST_FILTERS)
        query = self._lists.get(shape)
        if query is None:
            query = self._lists[shape] = q.list_statement(self.schema, shape)
        rows = await self._fetchall(query, params)
        runs = readable_runs((run_id, record) for run_id, record, _ in rows[:limit])
        next_cursor = None
        if len(rows) > limit and limit > 0:
            # From the columns, so the cursor passes an unreadable last run too.
            last_id, _, last_at = rows[limit - 1]
            next_cursor = page_cursor(last_at, last_id)
        return RunPage(runs=runs, next_cursor=next_cursor)

    async def count_runs(self, *, created_after: datetime | None = None) -> RunCounts:
        after = check_created_after("count_runs", created_after)
        if after is None:
            rows = await self._fetchall(self._q.count_runs, {})
        else:
            rows = await self._fetchall(self._q.count_runs_after, {"after": after})
        return tally_runs(
            [(name, n) for by, name, n in rows if by == 0], [(name, n) for by, name, n in rows if by == 1]
        )

    async def list_unreadable_runs(self, *, limit: int = 100) -> list[str]:
        found: list[str] = []
        after = ""
        while len(found) < limit:
            rows = await self._fetchall(self._q.scan_records, {"after": after})
            for run_id, record in rows:
                try:
                    decode_run(record, run_id)
                except CorruptedStorageError:
                    found.append(run_id)
            if len(rows) < _SCAN_BATCH:
                break
            after = rows[-1][0]
        return found[: max(limit, 0)]

    async def delete_run(self, run_id: str) -> bool:
        return await self._delete_runs([run_id], "", {}) > 0

    async def prune_runs(self, *, older_than: datetime, statuses: Sequence[RunStatus | str] | None = None) -> int:
        wanted = TERMINAL_STATUSES if statuses is None else {RunStatus(s) for s in statuses}
        params = {"statuses": sorted(s.value for s in wanted), "cutoff": utc(older_than), "limit": _PRUNE_BATCH}
        deleted = 0
        while True:
            ids = [row[0] for row in await self._fetchall(self._q.prune_candidates, params)]
            if not ids:
                return deleted
            # The condition is checked again under the delete's row locks: a run updated
            # since it was picked is kept.
            deleted += await self._delete_runs(
                ids, " AND status = ANY(%(statuses)s) AND updated_at < %(cutoff)s", params
            )

    async def _delete_runs(self, ids: list[str], cond: LiteralString, params: Mapping[str, Any]) -> int:
        statements = self._deletes.get(cond)
        if statements is None:
            statements = self._deletes[cond] = q.delete_statements(self.schema, cond)
        leases, runs, timers = statements
        values = {**params, "ids": ids}
        pool = await self._pools.get()
        async with pool.connection() as conn:
            # Pipeline mode, no BEGIN: the three DELETEs leave in one write ending in one
            # Sync, and statements up to a Sync run as one implicit transaction (PostgreSQL
            # protocol, "Pipelining"): all or nothing, in one round trip. psycopg's
            # transaction() would add a synced BEGIN and COMMIT: three round trips.
            async with conn.pipeline():
                await conn.execute(leases, values)
                cur = await conn.execute(runs, values)
                await conn.execute(timers, values)
            return len(await cur.fetchall())

    # -- events ---------------------------------------------------------------------------

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
        expected, changes, consumed = check_append(run_id, events, lease_token, run_changes, consume, release_lease)
        fields, params = _encode_changes(changes)
        key = (fields, lease_token is not None, bool(consumed), release_lease)
        query = self._appends.get(key)
        if query is None:
            query = self._appends[key] = q.append_statement(self.schema, *key)
        params.update(_event_params(events))
        params.update(
            run_id=run_id, token=lease_token, expected=expected, last_seq=expected + len(events), consume=consumed
        )
        for _ in range(_RETRIES):
            try:
                row = await self._fetchone(query, params)
            except psycopg.errors.UniqueViolation as exc:
                raise CorruptedStorageError(
                    f"run {run_id!r}: the log holds events past its recorded last seq {expected}", run_id=run_id
                ) from exc
            if row is not None and row[0] == 1:
                return
            state = await self._fetchone(self._q.append_state, [run_id])
            refusal = refused_append(
                run_id,
                exists=state is not None,
                last_seq=state[0] if state is not None else 0,
                expected=expected,
                lease_token=lease_token,
                held_token=state[1] if state is not None else None,
            )
            if refusal is not None:
                raise refusal
            # nothing refuses it any more (the state moved meanwhile): try again
        raise StorageError(f"run {run_id!r}: append was refused repeatedly without a reason")

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        if limit is not None and limit <= 0:
            return []
        rows = await self._fetchall(self._q.get_events, [run_id, after_seq, limit])
        return decode_events([row[0] for row in rows], run_id, max(after_seq, 0) + 1)

    # -- timers ---------------------------------------------------------------------------

    async def get_timer(self, run_id: str) -> Timer | None:
        row = await self._fetchone(self._q.get_timer, [run_id])
        return None if row is None else Timer(run_id=run_id, wake_at=row[0])

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        now = utc(now)
        params = {"now": now, "later": now + timedelta(seconds=redeliver_after), "limit": max(limit, 0)}
        rows = await self._fetchall(self._q.claim_timers, params)
        return [Timer(run_id=run_id, wake_at=wake_at, workflow_name=name) for run_id, wake_at, name in rows]

    # -- schedules ------------------------------------------------------------------------

    async def save_schedule(self, schedule_id: str, body: str, due_at: datetime | None, *, version: int) -> int | None:
        params = {"id": schedule_id, "due": None if due_at is None else utc(due_at), "body": body, "version": version}
        query = self._q.create_schedule if version == 0 else self._q.update_schedule
        return version + 1 if await self._rowcount(query, params) == 1 else None

    async def get_schedule(self, schedule_id: str) -> StoredSchedule | None:
        row = await self._fetchone(self._q.get_schedule, [schedule_id])
        return None if row is None else StoredSchedule(*row)

    async def list_schedules(self, *, after: str | None = None, limit: int = 100) -> list[StoredSchedule]:
        rows = await self._fetchall(self._q.list_schedules, [after or "", max(limit, 0)])
        return [StoredSchedule(*row) for row in rows]

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._rowcount(self._q.delete_schedule, [schedule_id]) > 0

    async def due_schedules(self, now: datetime, *, limit: int = 100) -> list[StoredSchedule]:
        rows = await self._fetchall(self._q.due_schedules, [utc(now), max(limit, 0)])
        return [StoredSchedule(*row) for row in rows]

    # -- inbox ----------------------------------------------------------------------------

    async def post_message(
        self, run_id: str, kind: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str:
        text = check_message(run_id, kind, payload, idempotency_key)
        params = {"run_id": run_id, "kind": kind, "payload": text, "key": idempotency_key, "now": utcnow()}
        for _ in range(_RETRIES):
            try:
                row = await self._fetchone(self._q.post_message, params)
            except psycopg.errors.UniqueViolation:
                continue  # the same key was posted meanwhile: the retry finds its message
            assert row is not None
            status, duplicate, seq = row
            if seq is not None or duplicate is not None:
                return message_id(run_id, seq if seq is not None else duplicate)
            if status is None:
                raise RunNotFoundError(run_id)
            if status in _TERMINAL_VALUES:
                raise RunFinishedError(run_id, status)
            # the run changed between the statement's snapshot and its lock: try again
        raise StorageError(f"run {run_id!r}: posting a message kept racing with other writers")

    async def get_messages(self, run_id: str, *, pending_only: bool = True) -> list[Message]:
        query = self._q.get_pending_messages if pending_only else self._q.get_messages
        return [_message(run_id, row) for row in await self._fetchall(query, [run_id])]

    async def begin_activation(self, run_id: str, owner: str, ttl: float, *, now: datetime) -> Activation:
        clock = time.time()
        token = new_token()
        params = {
            "run_id": run_id,
            "owner": owner,
            "token": token,
            "expires_at": clock + ttl,
            "clock": clock,
            "now": utc(now),
        }
        pool = await self._pools.get()
        async with pool.connection() as conn:
            # One round trip, one implicit transaction, a snapshot per statement: the
            # reads come after the lease is taken, so they see every append its previous
            # holder made, and none can follow (the lease row stays locked to the commit).
            async with conn.pipeline():
                taken = await conn.execute(self._q.activation_lease, params)
                decided = await conn.execute(self._q.activation_run, params)
                log_rows = await conn.execute(self._q.activation_events, params)
                inbox = await conn.execute(self._q.activation_messages, params)
            replaced = await taken.fetchone()
            row = await decided.fetchone()
            bodies = [body for (body,) in await log_rows.fetchall()]
            messages = await inbox.fetchall()
        if row is None:
            return Activation("missing")
        record, leased, busy = row
        run = decode_run(record, run_id)
        if run.status.is_terminal:
            return Activation("finished", run)
        if leased:
            lease = trusted(Lease, {"run_id": run_id, "owner": owner, "token": token, "expires_at": clock + ttl})
            events = decode_events(bodies, run_id)
            took_over = replaced is not None and bool(replaced[0])  # an expired lease nobody released
            return Activation("leased", run, lease, events, [_message(run_id, m) for m in messages], took_over)
        if busy or run.status not in WAITING_STATUSES or (run.wake_at is not None and run.wake_at <= utc(now)):
            return Activation("busy", run)
        return Activation("not_due", run)

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> Lease | None:
        now = time.time()
        lease = Lease(run_id=run_id, owner=owner, token=new_token(), expires_at=now + ttl)
        params = {"run_id": run_id, "owner": owner, "token": lease.token, "expires_at": lease.expires_at, "now": now}
        row = await self._fetchone(self._q.acquire_lease, params)
        return lease if row is not None else None

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        row = await self._fetchone(self._q.renew_lease, [time.time() + ttl, lease.run_id, lease.token])
        if row is None:
            return None
        owner, expires_at = row
        return Lease(run_id=lease.run_id, owner=owner, token=lease.token, expires_at=expires_at)

    async def release_lease(self, lease: Lease) -> None:
        pool = await self._pools.get()
        async with pool.connection() as conn:
            await conn.execute(self._q.release_lease, [lease.run_id, lease.token])

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        params = {"now": time.time(), "wake_at": utcnow(), "limit": max(limit, 0)}
        return [row[0] for row in await self._fetchall(self._q.recover_leases, params)]
