"""PostgreSQL storage: every promise of the contract, kept by the database.

Selected by ``postgresql://user:password@host:5432/db?schema=pyworkflow`` (``postgres://``
works too; ``schema`` defaults to ``pyworkflow``; other query parameters go to libpq).
Install the driver with ``pip install pyworkflow[postgres]``.

Why psycopg 3
-------------
* One driver for sync and async code: the engine is async, while scripts, migrations
  and tests use the same library synchronously. asyncpg is async only.
* Pipeline mode (libpq): several statements leave in one write and come back in one
  read, so a multi-statement transaction costs one round trip (see ``delete_run``).
* A maintained pool (``psycopg_pool``, same project) that replaces broken connections.
* Binary wheels (``psycopg[binary]``): no compiler, no system libpq.
* Server-side prepared statements made automatically for statements run often, and
  binary parameters, which pass the event arrays without text escaping.

The pool is opened lazily inside the event loop of the first call (a backend may be
built outside any loop: the Celery runtime keeps one persistent loop per worker
process) and belongs to that loop; a forked child opens its own and leaves the parent's
sessions alone. Connections run in autocommit mode with the session time zone set to
UTC, so each statement is its own transaction and every ``timestamptz`` loads as an
aware UTC datetime. "Now" for leases and timers is the Python wall clock, passed as a
parameter, so every backend shares one notion of time.

Schema and migrations
---------------------
Every object lives in one schema, created on first use, so several deployments can
share a database and ``DROP SCHEMA ... CASCADE`` removes everything::

    pyworkflow_migrations (version PK, applied_at)
    runs    (run_id PK, workflow_name, status, input json, result json, error json,
             idempotency_key UNIQUE, created_at, updated_at, completed_at, deadline,
             wake_at, last_seq)
             indexes (created_at, run_id), (status, created_at, run_id),
             (workflow_name, created_at, run_id): each list_runs filter, newest first;
             (status, updated_at): prune_runs
    events  (run_id FK -> runs ON DELETE CASCADE, seq, type, timestamp, body text,
             data jsonb GENERATED FROM body, PRIMARY KEY (run_id, seq))
    timers  (run_id PK, wake_at)                  index (wake_at, run_id)
    leases  (run_id PK, owner, token, expires_at) index (expires_at)

On first use a backend reads the schema's version (one query). If it is behind, it
migrates in one transaction holding ``pg_advisory_xact_lock`` on a key derived from the
schema name, so processes starting together apply each migration exactly once. A
version newer than this code knows raises :class:`~pyworkflow.errors.ConfigurationError`
instead of writing records an older release cannot describe.

Why events keep ``body`` *and* ``data``: JSONB normalises what it stores (keys sorted
by length, duplicate keys dropped, ``1e20`` read back as the integer
``100000000000000000000``). Replay must read back exactly what was written, so the
event's JSON text (``body``) is the truth and ``data`` is a JSONB column generated from
it for SQL. Run payloads (``input``, ``result``, ``error``) are ``json``, which keeps the
text as written and still supports ``->`` and ``->>``.

Round trips per operation (warm pool)
-------------------------------------
======================== =================================================================
create_run               1: ``INSERT ... ON CONFLICT DO NOTHING`` of the run with the
                         events inserted from ``unnest`` arrays in a CTE, one statement;
                         +1 to read the existing run when the idempotency key is taken
append_events            1: one statement: ``UPDATE runs SET last_seq = new WHERE run_id
                         = ... AND last_seq = expected`` (plus a ``FOR SHARE`` check of the
                         lease row) ``RETURNING``, and the batch inserted from ``unnest`` in
                         a CTE that reads that row; +1 only when refused, to say why
get_events, get_run,     1
list_runs, update_run,
timers, leases
claim_due_timers         1: ``FOR UPDATE SKIP LOCKED`` CTE, re-scored by an UPDATE
recover_expired_leases   1: ``DELETE ... RETURNING`` CTE feeding an upsert of timers
delete_run               1: three DELETEs pipelined; statements up to one Sync form one
                         implicit transaction
prune_runs               2 per batch of up to 500 runs, +1 to find none left
first use                connect, 1 version query (+ the migration when behind), then the
                         pool's first connection and its ``SET TIME ZONE``
======================== =================================================================

No operation reads or scans the log to write it: an append checks one ``runs`` row
(a HOT update: ``last_seq`` is in no index) and appends to the ``(run_id, seq)`` btree,
so its cost stays flat as the log grows. Each write waits for its WAL flush; add
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

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json

from pyworkflow.clock import utcnow
from pyworkflow.errors import (
    ConfigurationError,
    CorruptedStorageError,
    LeaseLostError,
    RunNotFoundError,
    SequenceConflictError,
    StorageError,
)
from pyworkflow.events import Event
from pyworkflow.storage.base import (
    MUTABLE_RUN_FIELDS,
    TERMINAL_STATUSES,
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
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:

    class _MissingDriverError(ConfigurationError, ImportError):
        """Also an ImportError, so ``except ImportError`` around optional backends works."""

    raise _MissingDriverError(
        f"the PostgreSQL backend needs psycopg 3 ({exc}); install it with: pip install pyworkflow[postgres]"
    ) from exc

__all__ = ["SCHEMA_VERSION", "PostgresStorageBackend"]

log = logging.getLogger(__name__)

#: The newest schema version this code knows (the last key of ``_MIGRATIONS``).
SCHEMA_VERSION: Final = 1

_SCHEMES: Final = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_CONNECT_TIMEOUT: Final = 30.0
_PRUNE_BATCH: Final = 500

_RUN_COLUMNS: Final = (
    "run_id",
    "workflow_name",
    "status",
    "input",
    "result",
    "error",
    "idempotency_key",
    "created_at",
    "updated_at",
    "completed_at",
    "deadline",
    "wake_at",
)
_RUN_SELECT: Final = (
    "run_id, workflow_name, status, input, result, error, idempotency_key,"
    " created_at, updated_at, completed_at, deadline, wake_at"
)
_JSON_FIELDS: Final = frozenset({"input", "result", "error"})
# Each mutable field is validated with the model's own annotation before it is written,
# so the backend never stores a value that get_run would then refuse as corrupted.
_FIELD_ADAPTERS: Final[dict[str, TypeAdapter[Any]]] = {
    name: TypeAdapter(WorkflowRun.model_fields[name].annotation or Any) for name in MUTABLE_RUN_FIELDS
}
_EVENT_LIST: Final = TypeAdapter(list[Event])

Pool = AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]

# Pools a forked child inherited from its parent. Their sockets are the parent's
# sessions: closing them here would terminate the parent's connections, so the child
# keeps them referenced (never finalised) and opens its own.
_INHERITED: list[object] = []


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
    query = "&".join(q for q in (parts.query, urlencode({"schema": schema})) if q)
    return urlunsplit(parts._replace(query=query))


# -- SQL -------------------------------------------------------------------------------------


def _sql(template: LiteralString, schema: str, **parts: sql.Composable) -> bytes:
    """Render ``template`` once: ``{s}`` is the quoted schema. Bytes skip re-rendering per call."""
    return sql.SQL(template).format(s=sql.Identifier(schema), **parts).as_bytes(None)


_MIGRATIONS: Final[dict[int, tuple[LiteralString, ...]]] = {
    1: (
        # fillfactor leaves room on each page so the per-append last_seq update stays HOT
        # (no index touched, no new index entries) as long as run_changes are absent.
        """CREATE TABLE {s}.runs (
            run_id          text COLLATE "C" PRIMARY KEY,
            workflow_name   text NOT NULL,
            status          text NOT NULL,
            input           json NOT NULL,
            result          json,
            error           json,
            idempotency_key text UNIQUE,
            created_at      timestamptz NOT NULL,
            updated_at      timestamptz NOT NULL,
            completed_at    timestamptz,
            deadline        timestamptz,
            wake_at         timestamptz,
            last_seq        bigint NOT NULL DEFAULT 0
        ) WITH (fillfactor = 80)""",
        "CREATE INDEX runs_created_idx ON {s}.runs (created_at, run_id)",
        "CREATE INDEX runs_status_created_idx ON {s}.runs (status, created_at, run_id)",
        "CREATE INDEX runs_workflow_created_idx ON {s}.runs (workflow_name, created_at, run_id)",
        "CREATE INDEX runs_status_updated_idx ON {s}.runs (status, updated_at)",
        """CREATE TABLE {s}.events (
            run_id    text COLLATE "C" NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
            seq       bigint NOT NULL,
            type      text NOT NULL,
            timestamp timestamptz NOT NULL,
            body      text NOT NULL,
            data      jsonb GENERATED ALWAYS AS ((body::jsonb) -> 'data') STORED,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE {s}.timers (
            run_id  text COLLATE "C" PRIMARY KEY,
            wake_at timestamptz NOT NULL
        )""",
        "CREATE INDEX timers_wake_at_idx ON {s}.timers (wake_at, run_id)",
        """CREATE TABLE {s}.leases (
            run_id     text COLLATE "C" PRIMARY KEY,
            owner      text NOT NULL,
            token      text NOT NULL,
            expires_at double precision NOT NULL
        )""",
        "CREATE INDEX leases_expires_at_idx ON {s}.leases (expires_at)",
    ),
}

_INSERT_EVENTS: Final = """INSERT INTO {s}.events (run_id, seq, type, timestamp, body)
    SELECT {source}.run_id, e.seq, e.type, e.ts, e.body
    FROM {source}, unnest(%(seqs)b::bigint[], %(types)b::text[], %(stamps)b::timestamptz[], %(bodies)b::text[])
        AS e(seq, type, ts, body)"""


class _Queries:
    """Every fixed statement, rendered once per schema."""

    def __init__(self, schema: str) -> None:
        s = schema
        self.version = _sql("SELECT max(version) FROM {s}.pyworkflow_migrations", s)
        self.create_schema = _sql("CREATE SCHEMA IF NOT EXISTS {s}", s)
        self.create_migrations = _sql(
            """CREATE TABLE IF NOT EXISTS {s}.pyworkflow_migrations (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )""",
            s,
        )
        self.record_migration = _sql("INSERT INTO {s}.pyworkflow_migrations (version) VALUES (%s)", s)
        self.migrations = {v: [_sql(stmt, s) for stmt in stmts] for v, stmts in _MIGRATIONS.items()}
        self.create_run = _sql(
            """WITH run AS (
                INSERT INTO {s}.runs (run_id, workflow_name, status, input, result, error, idempotency_key,
                                      created_at, updated_at, completed_at, deadline, wake_at, last_seq)
                VALUES (%(run_id)s, %(workflow_name)s, %(status)s, %(input)s::json, %(result)s::json,
                        %(error)s::json, %(key)s, %(created_at)s, %(updated_at)s, %(completed_at)s,
                        %(deadline)s, %(wake_at)s, %(last_seq)s)
                ON CONFLICT DO NOTHING
                RETURNING run_id
            ), log AS ("""
            + _INSERT_EVENTS
            + """)
            SELECT count(*) FROM run""",
            s,
            source=sql.Identifier("run"),
        )
        # The idempotency key's run if there is one (sorted first), else the run with this id.
        self.existing_run = _sql(
            "SELECT "
            + _RUN_SELECT
            + """, coalesce(idempotency_key = %(key)s, false) AS by_key
            FROM {s}.runs WHERE idempotency_key = %(key)s OR run_id = %(run_id)s
            ORDER BY by_key DESC LIMIT 1""",
            s,
        )
        self.get_run = _sql("SELECT " + _RUN_SELECT + " FROM {s}.runs WHERE run_id = %s", s)
        self.append_state = _sql(
            """SELECT last_seq, EXISTS (SELECT 1 FROM {s}.leases WHERE run_id = %(run_id)s AND token = %(token)s)
            FROM {s}.runs WHERE run_id = %(run_id)s""",
            s,
        )
        self.get_events = _sql("SELECT body FROM {s}.events WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s", s)
        self.schedule_timer = _sql(
            """INSERT INTO {s}.timers (run_id, wake_at) VALUES (%s, %s)
            ON CONFLICT (run_id) DO UPDATE SET wake_at = excluded.wake_at""",
            s,
        )
        self.cancel_timer = _sql("DELETE FROM {s}.timers WHERE run_id = %s", s)
        self.get_timer = _sql("SELECT wake_at FROM {s}.timers WHERE run_id = %s", s)
        # SKIP LOCKED: concurrent tickers take disjoint rows; a row another ticker claimed
        # and committed meanwhile is re-checked against wake_at <= now and drops out.
        self.claim_timers = _sql(
            """WITH due AS MATERIALIZED (
                SELECT run_id, wake_at FROM {s}.timers
                WHERE wake_at <= %(now)s
                ORDER BY wake_at, run_id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            ), moved AS (
                UPDATE {s}.timers AS t SET wake_at = %(later)s FROM due WHERE t.run_id = due.run_id
            )
            SELECT run_id, wake_at FROM due ORDER BY wake_at, run_id""",
            s,
        )
        self.acquire_lease = _sql(
            """INSERT INTO {s}.leases (run_id, owner, token, expires_at)
            VALUES (%(run_id)s, %(owner)s, %(token)s, %(expires_at)s)
            ON CONFLICT (run_id) DO UPDATE
                SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
                WHERE {s}.leases.expires_at <= %(now)s
            RETURNING token""",
            s,
        )
        self.renew_lease = _sql(
            "UPDATE {s}.leases SET expires_at = %s WHERE run_id = %s AND token = %s RETURNING owner, expires_at", s
        )
        self.release_lease = _sql("DELETE FROM {s}.leases WHERE run_id = %s AND token = %s", s)
        self.recover_leases = _sql(
            """WITH expired AS (
                DELETE FROM {s}.leases WHERE run_id IN (
                    SELECT run_id FROM {s}.leases WHERE expires_at <= %(now)s
                    ORDER BY expires_at, run_id LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED
                )
                RETURNING run_id, expires_at
            ), woken AS (
                INSERT INTO {s}.timers (run_id, wake_at) SELECT run_id, %(wake_at)s FROM expired
                ON CONFLICT (run_id) DO UPDATE SET wake_at = excluded.wake_at
            )
            SELECT run_id FROM expired ORDER BY expires_at, run_id""",
            s,
        )
        self.prune_candidates = _sql(
            """SELECT run_id FROM {s}.runs WHERE status = ANY(%(statuses)s) AND updated_at < %(cutoff)s
            ORDER BY updated_at LIMIT %(limit)s""",
            s,
        )


def _delete_statements(schema: str, cond: LiteralString) -> tuple[bytes, bytes, bytes]:
    """Delete runs ``ids`` that still match ``cond``, leases and timers first.

    Lease rows are locked before run rows, the same order an append takes them (its
    ``FOR SHARE`` on the lease is evaluated before its ``UPDATE`` of the run), so a
    delete racing an append waits instead of deadlocking.
    """
    alive: LiteralString = "SELECT run_id FROM {s}.runs WHERE run_id = ANY(%(ids)s)" + cond
    return (
        _sql("DELETE FROM {s}.leases WHERE run_id IN (" + alive + ")", schema),
        _sql("DELETE FROM {s}.timers WHERE run_id IN (" + alive + ")", schema),
        _sql("DELETE FROM {s}.runs WHERE run_id = ANY(%(ids)s)" + cond + " RETURNING run_id", schema),
    )


def _append_statement(schema: str, fields: tuple[str, ...], with_lease: bool) -> bytes:
    """The one-statement append: guarded last_seq bump (+ run changes), then the batch."""
    lease: LiteralString = (
        " AND EXISTS (SELECT 1 FROM {s}.leases WHERE run_id = %(run_id)s AND token = %(token)s FOR SHARE)"
        if with_lease
        else ""
    )
    return (
        sql.SQL(
            """WITH claim AS (
                UPDATE {s}.runs SET last_seq = %(last_seq)s{changes}
                WHERE run_id = %(run_id)s AND last_seq = %(expected)s"""
            + lease
            + """
                RETURNING run_id
            ), log AS ("""
            + _INSERT_EVENTS
            + """)
            SELECT count(*) FROM claim"""
        )
        .format(s=sql.Identifier(schema), changes=_set_clause(fields, leading=True), source=sql.Identifier("claim"))
        .as_bytes(None)
    )


def _set_clause(fields: tuple[str, ...], *, leading: bool) -> sql.Composable:
    """``, f1 = %(c_f1)s, ..., updated_at = %(updated_at)s`` for the changed fields."""
    if not fields:
        return sql.SQL("")
    items: list[sql.Composable] = [
        sql.SQL("{} = {}::json" if f in _JSON_FIELDS else "{} = {}").format(
            sql.Identifier(f), sql.Placeholder(f"c_{f}")
        )
        for f in fields
    ]
    items.append(sql.SQL("updated_at = %(updated_at)s"))
    return sql.SQL(", " if leading else "") + sql.SQL(", ").join(items)


# -- values ----------------------------------------------------------------------------------


def _json_text(value: Any) -> str | None:
    """JSON text for a ``json`` column; ``None`` becomes SQL NULL."""
    return None if value is None else to_json(value).decode()


def _encode_change(field: str, value: Any) -> Any:
    value = _FIELD_ADAPTERS[field].validate_python(value)
    if field == "status":
        return RunStatus(value).value
    if field in _JSON_FIELDS:
        return _json_text(value)
    return None if value is None else utc(value)


def _encode_changes(changes: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    check_run_changes(changes)
    fields = tuple(sorted(changes))
    params = {f"c_{f}": _encode_change(f, changes[f]) for f in fields}
    if fields:
        params["updated_at"] = utcnow()
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
    }


def _run_from_row(row: Sequence[Any]) -> WorkflowRun:
    try:
        return WorkflowRun.model_validate(dict(zip(_RUN_COLUMNS, row, strict=False)))
    except ValidationError as exc:
        raise CorruptedStorageError(
            f"run {row[0]!r}: its stored record cannot be read back: {exc}", run_id=row[0]
        ) from exc


def _events_from_bodies(run_id: str, bodies: list[str], after_seq: int) -> list[Event]:
    if not bodies:
        return []
    try:
        # One pydantic call over the joined page: cheaper than one call per event.
        events = _EVENT_LIST.validate_json("[" + ",".join(bodies) + "]")
    except ValidationError as exc:
        raise CorruptedStorageError(
            f"run {run_id!r}: its event log after seq {after_seq} cannot be read back: {exc}", run_id=run_id
        ) from exc
    # Rows come ordered by the seq column; the body must agree and leave no hole, or
    # replay would silently skip or repeat history.
    first = max(after_seq, 0) + 1
    for offset, event in enumerate(events):
        if event.seq != first + offset:
            raise CorruptedStorageError(
                f"run {run_id!r}: event log expected seq {first + offset} but found {event.seq}", run_id=run_id
            )
    return events


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


async def _configure_session(conn: psycopg.AsyncConnection[Any]) -> None:
    # Once per pooled connection: timestamptz values then load as UTC datetimes.
    await conn.execute("SET TIME ZONE 'UTC'")


# -- the backend -----------------------------------------------------------------------------


class PostgresStorageBackend(StorageBackend):
    """The storage contract on PostgreSQL; see the module docstring."""

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
        self._q = _Queries(schema)
        self._appends: dict[tuple[tuple[str, ...], bool], bytes] = {}
        self._updates: dict[tuple[str, ...], bytes] = {}
        self._deletes: dict[LiteralString, tuple[bytes, bytes, bytes]] = {}
        self._lists: dict[tuple[bool, ...], bytes] = {}
        self._pool: Pool | None = None
        self._opening: asyncio.Task[Pool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> PostgresStorageBackend:
        """Build from ``postgresql://`` or ``postgres://`` URL; ``?schema=`` picks the schema."""
        if urlsplit(url).scheme not in _SCHEMES:
            raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r} (use postgresql://...)")
        conninfo, schema = _split_schema(url)
        return cls(conninfo, schema=schema or "pyworkflow")

    # -- connections ----------------------------------------------------------------------

    async def _get_pool(self) -> Pool:
        if self._closed:
            raise StorageError(f"{self!r} is closed")
        if self._pid != os.getpid():
            self._forget_inherited_pool()
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._loop is not None and self._loop is not loop:
            raise StorageError(
                f"{self!r} is bound to the event loop that first used it; create one backend per event loop"
            )
        if self._opening is None:
            self._loop = loop
            self._opening = loop.create_task(self._open())
        opening = self._opening
        try:
            # shield: one caller being cancelled must not abort the opening others wait on
            self._pool = await asyncio.shield(opening)
        except BaseException:
            if opening.done() and self._opening is opening:
                self._opening, self._loop = None, None  # a failed open is retried by the next call
            raise
        return self._pool

    def _forget_inherited_pool(self) -> None:
        """In a forked child (Celery prefork): leave the parent's pool alone, open anew."""
        _INHERITED.append((self._pool, self._opening))
        self._pool, self._opening, self._loop = None, None, None
        self._pid = os.getpid()

    async def _open(self) -> Pool:
        await self._migrate()
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
        """The schema's version, or None when it has no migrations table yet."""
        try:
            row = await (await conn.execute(self._q.version)).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        version = int(row[0]) if row and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise _newer_schema(self.schema, version)
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
        pool = await self._get_pool()
        async with pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchone()

    async def _fetchall(self, query: bytes, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
        pool = await self._get_pool()
        async with pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def close(self) -> None:
        self._closed = True
        if self._pid != os.getpid():
            self._forget_inherited_pool()
        pool, opening = self._pool, self._opening
        self._pool, self._opening = None, None
        if pool is None and opening is not None:
            try:
                pool = await opening
            except Exception:  # noqa: BLE001 - an open that failed has nothing to close
                pool = None
        if pool is not None:
            await pool.close()

    # -- runs -----------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun, events: Sequence[Event] = ()) -> tuple[WorkflowRun, bool]:
        if events:
            check_batch(run.run_id, events)
            if events[0].seq != 1:
                raise ValueError(f"run {run.run_id!r}: the first event of a new run has seq 1")
        params = {**_run_params(run, len(events)), **_event_params(events)}
        # A conflicting run may vanish (deleted) between the insert and the read: try again.
        for _ in range(3):
            row = await self._fetchone(self._q.create_run, params)
            if row is not None and row[0] == 1:
                return run, True
            existing = await self._fetchone(self._q.existing_run, {"key": run.idempotency_key, "run_id": run.run_id})
            if existing is not None:
                if existing[-1]:
                    return _run_from_row(existing[:-1]), False
                raise ValueError(f"run {run.run_id!r} already exists")
        raise StorageError(f"run {run.run_id!r}: creation kept conflicting with runs that were deleted meanwhile")

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        row = await self._fetchone(self._q.get_run, [run_id])
        return None if row is None else _run_from_row(row)

    async def update_run(self, run_id: str, **changes: Any) -> WorkflowRun:
        fields, params = _encode_changes(changes)
        if not fields:
            params["updated_at"] = utcnow()
        query = self._updates.get(fields)
        if query is None:
            set_clause = _set_clause(fields, leading=False) if fields else sql.SQL("updated_at = %(updated_at)s")
            query = (
                sql.SQL("UPDATE {s}.runs SET {set} WHERE run_id = %(run_id)s RETURNING " + _RUN_SELECT)
                .format(s=sql.Identifier(self.schema), set=set_clause)
                .as_bytes(None)
            )
            self._updates[fields] = query
        row = await self._fetchone(query, {**params, "run_id": run_id})
        if row is None:
            raise RunNotFoundError(run_id)
        return _run_from_row(row)

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
        rows = await self._fetchall(self._list_query(params), params)
        runs = [_run_from_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return RunPage(runs=runs, next_cursor=encode_cursor(runs[-1]) if more and runs else None)

    def _list_query(self, params: Mapping[str, Any]) -> bytes:
        """Only the given filters go in the WHERE clause, so each shape gets a plan using its index."""
        filters: tuple[tuple[str, LiteralString], ...] = (
            ("status", "status = %(status)s"),
            ("workflow_name", "workflow_name = %(workflow_name)s"),
            ("created_after", "created_at > %(created_after)s"),
            ("created_before", "created_at < %(created_before)s"),
            ("cursor_at", "(created_at, run_id) < (%(cursor_at)s, %(cursor_id)s)"),
        )
        shape = tuple(params[name] is not None for name, _ in filters)
        query = self._lists.get(shape)
        if query is None:
            conds = [sql.SQL(cond) for (_, cond), given in zip(filters, shape, strict=True) if given]
            where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
            query = (
                sql.SQL(
                    "SELECT "
                    + _RUN_SELECT
                    + " FROM {s}.runs{where} ORDER BY created_at DESC, run_id DESC LIMIT %(limit)s"
                )
                .format(s=sql.Identifier(self.schema), where=where)
                .as_bytes(None)
            )
            self._lists[shape] = query
        return query

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
            statements = self._deletes[cond] = _delete_statements(self.schema, cond)
        leases, timers, runs = statements
        values = {**params, "ids": ids}
        pool = await self._get_pool()
        async with pool.connection() as conn:
            # Pipeline mode, no BEGIN: the three DELETEs leave in one write ending in one
            # Sync, and statements up to a Sync run as one implicit transaction (PostgreSQL
            # protocol, "Pipelining"): all or nothing, in one round trip. psycopg's
            # transaction() would add a synced BEGIN and COMMIT: three round trips.
            async with conn.pipeline():
                await conn.execute(leases, values)
                await conn.execute(timers, values)
                cur = await conn.execute(runs, values)
            return len(await cur.fetchall())

    # -- events ---------------------------------------------------------------------------

    async def append_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        lease_token: str | None = None,
        run_changes: Mapping[str, Any] | None = None,
    ) -> None:
        expected = check_batch(run_id, events)
        fields, params = _encode_changes(run_changes or {})
        query = self._append_query(fields, lease_token is not None)
        params.update(_event_params(events))
        params.update(run_id=run_id, token=lease_token, expected=expected, last_seq=expected + len(events))
        for _ in range(3):
            try:
                row = await self._fetchone(query, params)
            except psycopg.errors.UniqueViolation as exc:
                raise CorruptedStorageError(
                    f"run {run_id!r}: the log holds events past its recorded last seq {expected}", run_id=run_id
                ) from exc
            if row is not None and row[0] == 1:
                return
            await self._explain_refused_append(run_id, expected, lease_token)
        raise StorageError(f"run {run_id!r}: append was refused repeatedly without a reason")

    def _append_query(self, fields: tuple[str, ...], with_lease: bool) -> bytes:
        key = (fields, with_lease)
        query = self._appends.get(key)
        if query is None:
            query = self._appends[key] = _append_statement(self.schema, fields, with_lease)
        return query

    async def _explain_refused_append(self, run_id: str, expected: int, lease_token: str | None) -> None:
        """Raise the reason an append wrote nothing; return if none holds any more (retry)."""
        row = await self._fetchone(self._q.append_state, {"run_id": run_id, "token": lease_token})
        if row is None:
            raise RunNotFoundError(run_id)
        last_seq, holds_lease = row
        if last_seq != expected:
            raise SequenceConflictError(run_id, expected, last_seq)
        if lease_token is not None and not holds_lease:
            raise LeaseLostError(run_id)

    async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        if limit is not None and limit <= 0:
            return []
        rows = await self._fetchall(self._q.get_events, [run_id, after_seq, limit])
        return _events_from_bodies(run_id, [row[0] for row in rows], after_seq)

    # -- timers ---------------------------------------------------------------------------

    async def schedule_timer(self, run_id: str, wake_at: datetime) -> None:
        await self._execute(self._q.schedule_timer, [run_id, utc(wake_at)])

    async def cancel_timer(self, run_id: str) -> None:
        await self._execute(self._q.cancel_timer, [run_id])

    async def _execute(self, query: bytes, params: Sequence[Any]) -> None:
        pool = await self._get_pool()
        async with pool.connection() as conn:
            await conn.execute(query, params)

    async def get_timer(self, run_id: str) -> Timer | None:
        row = await self._fetchone(self._q.get_timer, [run_id])
        return None if row is None else Timer(run_id=run_id, wake_at=row[0])

    async def claim_due_timers(self, now: datetime, *, limit: int = 100, redeliver_after: float = 30.0) -> list[Timer]:
        now = utc(now)
        params = {"now": now, "later": now + timedelta(seconds=redeliver_after), "limit": max(limit, 0)}
        rows = await self._fetchall(self._q.claim_timers, params)
        return [Timer(run_id=run_id, wake_at=wake_at) for run_id, wake_at in rows]

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
        await self._execute(self._q.release_lease, [lease.run_id, lease.token])

    async def recover_expired_leases(self, *, limit: int = 100) -> list[str]:
        params = {"now": time.time(), "wake_at": utcnow(), "limit": max(limit, 0)}
        return [row[0] for row in await self._fetchall(self._q.recover_leases, params)]
