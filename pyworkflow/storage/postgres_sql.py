"""The SQL of the PostgreSQL backend: migrations and every statement, rendered once per
schema (see :mod:`pyworkflow.storage.postgres` for the design).

Conventions: ``{s}`` is the quoted schema, ``r`` aliases ``runs``. Statements built from a
shape (which run fields change, whether a lease is checked …) are cached by the backend.

Lock order, the same in every statement that takes more than one: lease row, then run
row, then timer row. An append locks its lease row ``FOR SHARE`` in the ``WHERE`` of its
``UPDATE`` of the run (evaluated before the run row is locked) and writes the timer last;
``post_message`` and ``update_run`` lock the run, then the timer; ``delete_run`` deletes
the lease, then the run, then the timer; ``begin_activation`` takes the lease, then reads.
So two writers never wait for each other in a cycle.

Why "pending" is computed the way it is: READ COMMITTED re-reads the *run row* an
``UPDATE`` waited for, but its subqueries keep the statement's snapshot. A message posted
while an append waited for the run row is invisible to the append's subqueries, yet its
``post_message`` bumped ``runs.last_message`` (the per-run message counter, taken under
the run row's lock, so numbering is commit order). Hence: a message is pending when an
unconsumed message the snapshot sees is not consumed by this append, *or* the row's
counter is past the newest message the snapshot sees.
"""

from __future__ import annotations

from typing import Final, LiteralString

from psycopg import sql

from pyworkflow.storage.base import TERMINAL_STATUSES

#: The newest schema version this code knows (the last key of ``MIGRATIONS``).
SCHEMA_VERSION: Final = 4

_TERMINAL: Final = "('cancelled', 'completed', 'continued', 'failed')"
assert _TERMINAL == "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATUSES)) + ")"

#: The run record as the JSON text :func:`~pyworkflow.storage.base.decode_run` reads
#: (``json`` columns are embedded verbatim: payloads read back exactly as written).
RUN_JSON: Final = """json_build_object('run_id', r.run_id, 'workflow_name', r.workflow_name,
    'status', r.status, 'input', r.input, 'result', r.result, 'error', r.error,
    'idempotency_key', r.idempotency_key, 'created_at', r.created_at, 'updated_at', r.updated_at,
    'completed_at', r.completed_at, 'deadline', r.deadline, 'wake_at', r.wake_at,
    'parent_run_id', r.parent_run_id)::text"""

JSON_FIELDS: Final = frozenset({"input", "result", "error"})
_CASTS: Final[dict[str, LiteralString]] = {
    "status": "text",
    "result": "json",
    "error": "json",
    "wake_at": "timestamptz",
    "completed_at": "timestamptz",
}


def compose(template: LiteralString, schema: str, **parts: sql.Composable) -> sql.Composed:
    """``template`` with ``{s}`` the quoted schema and ``{terminal}`` the finished statuses."""
    return sql.SQL(template).format(s=sql.Identifier(schema), terminal=sql.SQL(_TERMINAL), **parts)


def render(template: LiteralString, schema: str, **parts: sql.Composable) -> bytes:
    """Render ``template`` once; bytes skip re-rendering per call."""
    return compose(template, schema, **parts).as_bytes(None)


MIGRATIONS: Final[dict[int, tuple[LiteralString, ...]]] = {
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
    2: (
        # The inbox. last_message numbers a run's messages (taken with the run row locked).
        "ALTER TABLE {s}.runs ADD COLUMN last_message bigint NOT NULL DEFAULT 0",
        """CREATE TABLE {s}.messages (
            run_id          text COLLATE "C" NOT NULL REFERENCES {s}.runs (run_id) ON DELETE CASCADE,
            seq             bigint NOT NULL,
            kind            text NOT NULL,
            payload         json NOT NULL,
            idempotency_key text,
            posted_at       timestamptz NOT NULL,
            consumed        boolean NOT NULL DEFAULT false,
            PRIMARY KEY (run_id, seq),
            UNIQUE (run_id, idempotency_key)
        )""",
        "CREATE INDEX messages_pending_idx ON {s}.messages (run_id, seq) WHERE NOT consumed",
        # Timers now follow wake_at: a finished run has none.
        # (the statuses spelled out: a released migration never changes, and no run had
        # ended 'continued' before this version existed)
        "DELETE FROM {s}.timers AS t USING {s}.runs AS r WHERE t.run_id = r.run_id"
        " AND r.status IN ('cancelled', 'completed', 'failed')",
    ),
    3: (
        # Schedules: the body is pyworkflow.schedules' JSON; version is the compare-and-set.
        """CREATE TABLE {s}.schedules (
            schedule_id text COLLATE "C" PRIMARY KEY,
            due_at      timestamptz,
            version     bigint NOT NULL,
            body        text NOT NULL
        )""",
        # Partial: the tick reads only what is due; a paused schedule has no entry.
        "CREATE INDEX schedules_due_idx ON {s}.schedules (due_at, schedule_id) WHERE due_at IS NOT NULL",
    ),
    4: (
        # A child run names its parent (also in its workflow.started event, from which
        # runs made before this migration take it).
        'ALTER TABLE {s}.runs ADD COLUMN parent_run_id text COLLATE "C"',
        """UPDATE {s}.runs AS r SET parent_run_id = e.data -> 'parent' ->> 'run_id'
            FROM {s}.events AS e WHERE e.run_id = r.run_id AND e.seq = 1 AND e.data ? 'parent'""",
    ),
}

_INSERT_EVENTS: Final = """INSERT INTO {s}.events (run_id, seq, type, timestamp, body)
    SELECT {source}.run_id, e.seq, e.type, e.ts, e.body
    FROM {source}, unnest(%(seqs)b::bigint[], %(types)b::text[], %(stamps)b::timestamptz[], %(bodies)b::text[])
        AS e(seq, type, ts, body)"""

# The timer follows the wake time a CTE returned (run_id, wake_at): set, or removed.
_SYNC_TIMER: Final = """, timer_set AS (
        INSERT INTO {s}.timers (run_id, wake_at) SELECT run_id, wake_at FROM {source} WHERE wake_at IS NOT NULL
        ON CONFLICT (run_id) DO UPDATE SET wake_at = excluded.wake_at
    ), timer_unset AS (
        DELETE FROM {s}.timers AS t USING {source} WHERE t.run_id = {source}.run_id AND {source}.wake_at IS NULL
    )"""

_PENDING: Final = """(r.last_message > (SELECT coalesce(max(m.seq), 0) FROM {s}.messages AS m WHERE m.run_id = r.run_id)
        OR EXISTS (SELECT 1 FROM {s}.messages AS m WHERE m.run_id = r.run_id AND NOT m.consumed
                   AND m.seq <> ALL(%(consume)s::bigint[])))"""

_MINE: Final = "EXISTS (SELECT 1 FROM {s}.leases WHERE run_id = %(run_id)s AND token = %(token)s)"
#: Not ``not_due`` (see base.py): a suspended run with no wake time waits for a message,
#: and posting one sets its wake_at to now, so pending messages need no check of their own.
_DUE: Final = "(status NOT IN ('suspended', 'paused', 'blocked') OR wake_at <= %(now)s)"
_MESSAGE_COLUMNS: Final = "seq, kind, payload::text, idempotency_key, posted_at, consumed"


#: Runs by status and by workflow in one statement: one snapshot, one pass over the table
#: feeding two hash tables (measured on 100,000 runs, no faster through the status and
#: workflow indexes: counting the tuples is the cost, not reading them). A status's row
#: has GROUPING(status) = 0, a workflow's row 1.
_COUNT_RUNS: Final = """SELECT GROUPING(status), coalesce(status, workflow_name), count(*)
    FROM {s}.runs{where} GROUP BY GROUPING SETS ((status), (workflow_name))"""


class Queries:
    """Every fixed statement, rendered once per schema."""

    def __init__(self, schema: str) -> None:
        s = schema
        self.versions = render("SELECT version FROM {s}.pyworkflow_migrations ORDER BY version", s)
        self.create_schema = render("CREATE SCHEMA IF NOT EXISTS {s}", s)
        self.create_migrations = render(
            """CREATE TABLE IF NOT EXISTS {s}.pyworkflow_migrations (
                version    integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )""",
            s,
        )
        self.record_migration = render("INSERT INTO {s}.pyworkflow_migrations (version) VALUES (%s)", s)
        self.migrations = {v: [render(stmt, s) for stmt in stmts] for v, stmts in MIGRATIONS.items()}
        self.create_run = render(
            """WITH run AS (
                INSERT INTO {s}.runs (run_id, workflow_name, status, input, result, error, idempotency_key,
                                      created_at, updated_at, completed_at, deadline, wake_at, last_seq,
                                      parent_run_id)
                VALUES (%(run_id)s, %(workflow_name)s, %(status)s, %(input)s::json, %(result)s::json,
                        %(error)s::json, %(key)s, %(created_at)s, %(updated_at)s, %(completed_at)s,
                        %(deadline)s, %(wake_at)s, %(last_seq)s, %(parent_run_id)s)
                ON CONFLICT DO NOTHING
                RETURNING run_id, wake_at
            ), log AS ("""
            + _INSERT_EVENTS
            + """), guard AS (
                INSERT INTO {s}.timers (run_id, wake_at) SELECT run_id, wake_at FROM run WHERE wake_at IS NOT NULL
            )
            SELECT count(*) FROM run""",
            s,
            source=sql.Identifier("run"),
        )
        # The idempotency key's run if there is one (sorted first), else the run with this id.
        self.existing_run = render(
            "SELECT "
            + RUN_JSON
            + """, coalesce(r.idempotency_key = %(key)s, false) AS by_key
            FROM {s}.runs AS r WHERE r.idempotency_key = %(key)s OR r.run_id = %(run_id)s
            ORDER BY by_key DESC LIMIT 1""",
            s,
        )
        self.get_run = render("SELECT " + RUN_JSON + " FROM {s}.runs AS r WHERE r.run_id = %s", s)
        self.scan_records = render(
            "SELECT r.run_id, " + RUN_JSON + " FROM {s}.runs AS r WHERE r.run_id > %(after)s"
            " ORDER BY r.run_id LIMIT 500",
            s,
        )
        self.append_state = render(
            """SELECT r.last_seq, (SELECT token FROM {s}.leases WHERE run_id = r.run_id)
            FROM {s}.runs AS r WHERE r.run_id = %s""",
            s,
        )
        self.get_events = render("SELECT body FROM {s}.events WHERE run_id = %s AND seq > %s ORDER BY seq LIMIT %s", s)
        self.get_timer = render("SELECT wake_at FROM {s}.timers WHERE run_id = %s", s)
        self.count_runs = render(_COUNT_RUNS, s, where=sql.SQL(""))
        self.count_runs_after = render(_COUNT_RUNS, s, where=sql.SQL(" WHERE created_at > %(after)s"))
        # -- schedules --
        columns = "SELECT schedule_id, body, due_at, version FROM {s}.schedules"
        self.create_schedule = render(
            """INSERT INTO {s}.schedules (schedule_id, due_at, version, body)
            VALUES (%(id)s, %(due)s, 1, %(body)s) ON CONFLICT (schedule_id) DO NOTHING""",
            s,
        )
        self.update_schedule = render(
            """UPDATE {s}.schedules SET due_at = %(due)s, version = version + 1, body = %(body)s
            WHERE schedule_id = %(id)s AND version = %(version)s""",
            s,
        )
        self.get_schedule = render(columns + " WHERE schedule_id = %s", s)
        self.list_schedules = render(columns + " WHERE schedule_id > %s ORDER BY schedule_id LIMIT %s", s)
        self.delete_schedule = render("DELETE FROM {s}.schedules WHERE schedule_id = %s", s)
        self.due_schedules = render(
            columns + " WHERE due_at IS NOT NULL AND due_at <= %s ORDER BY due_at, schedule_id LIMIT %s", s
        )
        # SKIP LOCKED: concurrent tickers take disjoint rows; a row another ticker claimed
        # and committed meanwhile is re-checked against wake_at <= now and drops out.
        self.claim_timers = render(
            """WITH due AS MATERIALIZED (
                SELECT run_id, wake_at FROM {s}.timers
                WHERE wake_at <= %(now)s
                ORDER BY wake_at, run_id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            ), moved AS (
                UPDATE {s}.timers AS t SET wake_at = %(later)s FROM due WHERE t.run_id = due.run_id
            )
            SELECT due.run_id, due.wake_at, r.workflow_name FROM due LEFT JOIN {s}.runs AS r USING (run_id)
            ORDER BY due.wake_at, due.run_id""",
            s,
        )
        # -- the inbox --
        # The message number is the run row's counter, bumped under its lock: arrival
        # order is commit order. A key posted concurrently makes the insert fail with a
        # unique violation (everything rolls back) and the retry finds the first message.
        self.post_message = render(
            """WITH run AS (
                SELECT status FROM {s}.runs WHERE run_id = %(run_id)s
            ), dup AS (
                SELECT seq FROM {s}.messages WHERE run_id = %(run_id)s AND idempotency_key = %(key)s
            ), bump AS (
                UPDATE {s}.runs SET last_message = last_message + 1,
                    wake_at = CASE WHEN wake_at > %(now)s
                        OR (wake_at IS NULL AND status IN ('suspended', 'paused', 'blocked'))
                        THEN %(now)s ELSE wake_at END,
                    updated_at = CASE WHEN wake_at > %(now)s
                        OR (wake_at IS NULL AND status IN ('suspended', 'paused', 'blocked'))
                        THEN %(now)s ELSE updated_at END
                WHERE run_id = %(run_id)s AND status NOT IN {terminal} AND NOT EXISTS (SELECT 1 FROM dup)
                RETURNING last_message
            ), stored AS (
                INSERT INTO {s}.messages (run_id, seq, kind, payload, idempotency_key, posted_at)
                SELECT %(run_id)s, last_message, %(kind)s, %(payload)s::json, %(key)s, %(now)s FROM bump
            ), timer AS (
                INSERT INTO {s}.timers (run_id, wake_at) SELECT %(run_id)s, %(now)s FROM bump
                ON CONFLICT (run_id) DO UPDATE SET wake_at = least({s}.timers.wake_at, excluded.wake_at)
            )
            SELECT (SELECT status FROM run), (SELECT seq FROM dup), (SELECT last_message FROM bump)""",
            s,
        )
        self.get_messages = render(
            "SELECT " + _MESSAGE_COLUMNS + " FROM {s}.messages WHERE run_id = %s ORDER BY seq", s
        )
        self.get_pending_messages = render(
            "SELECT " + _MESSAGE_COLUMNS + " FROM {s}.messages WHERE run_id = %s AND NOT consumed ORDER BY seq", s
        )
        # -- begin_activation: four statements pipelined in one implicit transaction --
        # 1. Take the lease if the run looks due and the lease is free or expired.
        self.activation_lease = render(
            """WITH run AS (SELECT status, wake_at FROM {s}.runs WHERE run_id = %(run_id)s)
            INSERT INTO {s}.leases (run_id, owner, token, expires_at)
            SELECT %(run_id)s, %(owner)s, %(token)s, %(expires_at)s FROM run
            WHERE status NOT IN {terminal} AND """
            + _DUE
            + """
            ON CONFLICT (run_id) DO UPDATE
                SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
                WHERE {s}.leases.expires_at <= %(clock)s
            RETURNING xmax <> 0""",  # true: an expired lease nobody released was replaced
            s,
        )
        # 2. A new snapshot, taken after the lease: decide on the run as it is now, give
        #    the lease back if the run turned out finished, gone or not due, remove a
        #    finished run's timer.
        self.activation_run = render(
            """WITH run AS (
                SELECT """
            + RUN_JSON
            + """ AS record, r.status, r.wake_at FROM {s}.runs AS r WHERE r.run_id = %(run_id)s
            ), go AS (
                SELECT 1 FROM run WHERE status NOT IN {terminal} AND """
            + _DUE
            + """
            ), dropped AS (
                DELETE FROM {s}.leases WHERE run_id = %(run_id)s AND token = %(token)s
                AND NOT EXISTS (SELECT 1 FROM go)
            ), untimed AS (
                DELETE FROM {s}.timers WHERE run_id = %(run_id)s
                AND EXISTS (SELECT 1 FROM run WHERE status IN {terminal})
            )
            SELECT record, """
            + _MINE
            + """ AND EXISTS (SELECT 1 FROM go),
                EXISTS (SELECT 1 FROM {s}.leases WHERE run_id = %(run_id)s AND token <> %(token)s
                        AND expires_at > %(clock)s)
            FROM run""",
            s,
        )
        # 3, 4. The log and the pending messages, read only by the lease's new holder.
        self.activation_events = render(
            "SELECT body FROM {s}.events WHERE run_id = %(run_id)s AND " + _MINE + " ORDER BY seq", s
        )
        self.activation_messages = render(
            "SELECT "
            + _MESSAGE_COLUMNS
            + " FROM {s}.messages WHERE run_id = %(run_id)s AND NOT consumed AND "
            + _MINE
            + " ORDER BY seq",
            s,
        )
        # -- leases --
        self.acquire_lease = render(
            """INSERT INTO {s}.leases (run_id, owner, token, expires_at)
            VALUES (%(run_id)s, %(owner)s, %(token)s, %(expires_at)s)
            ON CONFLICT (run_id) DO UPDATE
                SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
                WHERE {s}.leases.expires_at <= %(now)s
            RETURNING token""",
            s,
        )
        self.renew_lease = render(
            "UPDATE {s}.leases SET expires_at = %s WHERE run_id = %s AND token = %s RETURNING owner, expires_at", s
        )
        self.release_lease = render("DELETE FROM {s}.leases WHERE run_id = %s AND token = %s", s)
        self.recover_leases = render(
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
        self.prune_candidates = render(
            """SELECT run_id FROM {s}.runs WHERE status = ANY(%(statuses)s) AND updated_at < %(cutoff)s
            ORDER BY updated_at LIMIT %(limit)s""",
            s,
        )


def delete_statements(schema: str, cond: LiteralString) -> tuple[bytes, bytes, bytes]:
    """Delete runs ``ids`` that still match ``cond``: their leases, the runs (events and
    messages go with them, ``ON DELETE CASCADE``), then the timers left without a run."""
    return (
        render(
            "DELETE FROM {s}.leases WHERE run_id IN (SELECT run_id FROM {s}.runs WHERE run_id = ANY(%(ids)s)"
            + cond
            + ")",
            schema,
        ),
        render("DELETE FROM {s}.runs WHERE run_id = ANY(%(ids)s)" + cond + " RETURNING run_id", schema),
        render(
            """DELETE FROM {s}.timers AS t WHERE t.run_id = ANY(%(ids)s)
            AND NOT EXISTS (SELECT 1 FROM {s}.runs AS r WHERE r.run_id = t.run_id)""",
            schema,
        ),
    )


def _set_clause(schema: str, fields: tuple[str, ...]) -> sql.Composable:
    """``f1 = %(c_f1)s, ..., updated_at = %(now)s`` and, when ``wake_at`` or ``status``
    changes, ``wake_at`` by the earliest-wins rule (:func:`~pyworkflow.storage.base.effective_wake`)."""
    items: list[sql.Composable] = [
        sql.SQL("{} = {}::" + _CASTS[f]).format(sql.Identifier(f), sql.Placeholder(f"c_{f}"))
        for f in fields
        if f != "wake_at"
    ]
    items.append(sql.SQL("updated_at = %(now)s"))
    if "wake_at" in fields or "status" in fields:
        status = sql.SQL("%(c_status)s::text" if "status" in fields else "r.status")
        requested = sql.SQL("%(c_wake_at)s::timestamptz" if "wake_at" in fields else "r.wake_at")
        items.append(
            compose(
                """wake_at = CASE WHEN {status} IN {terminal} THEN NULL
                WHEN ({requested} IS NULL OR {requested} > %(now)s) AND """
                + _PENDING
                + """ THEN %(now)s
                ELSE {requested} END""",
                schema,
                status=status,
                requested=requested,
            )
        )
    return sql.SQL(", ").join(items)


def syncs_timer(fields: tuple[str, ...]) -> bool:
    return "wake_at" in fields or "status" in fields


def update_statement(schema: str, fields: tuple[str, ...]) -> bytes:
    """``update_run``: the changes, the wake time by earliest-wins and the timer, one statement."""
    timer: LiteralString = _SYNC_TIMER if syncs_timer(fields) else ""
    template = (
        """WITH upd AS (
            UPDATE {s}.runs AS r SET {set} WHERE r.run_id = %(run_id)s RETURNING r.run_id, r.wake_at, """
        + RUN_JSON
        + """ AS record
        )"""
        + timer
        + " SELECT record FROM upd"
    )
    return render(template, schema, set=_set_clause(schema, fields), source=sql.Identifier("upd"))


def append_statement(schema: str, fields: tuple[str, ...], with_lease: bool, consume: bool, release: bool) -> bytes:
    """The one-statement append: the guarded ``last_seq`` bump (+ run changes, wake time
    and timer), the batch, the consumed messages and the released lease."""
    lease: LiteralString = (
        " AND EXISTS (SELECT 1 FROM {s}.leases WHERE run_id = %(run_id)s AND token = %(token)s FOR SHARE)"
        if with_lease
        else ""
    )
    consumed: LiteralString = (
        """, consumed AS (
            UPDATE {s}.messages AS m SET consumed = true FROM claim
            WHERE m.run_id = claim.run_id AND m.seq = ANY(%(consume)s::bigint[]) AND NOT m.consumed
        )"""
        if consume
        else ""
    )
    released: LiteralString = (
        """, released AS (
            DELETE FROM {s}.leases AS l USING claim WHERE l.run_id = claim.run_id AND l.token = %(token)s
        )"""
        if release
        else ""
    )
    timer: LiteralString = _SYNC_TIMER if syncs_timer(fields) else ""
    template = (
        """WITH claim AS (
            UPDATE {s}.runs AS r SET last_seq = %(last_seq)s{changes}
            WHERE r.run_id = %(run_id)s AND r.last_seq = %(expected)s"""
        + lease
        + """
            RETURNING r.run_id, r.wake_at
        ), log AS ("""
        + _INSERT_EVENTS
        + ")"
        + consumed
        + released
        + timer
        + " SELECT count(*) FROM claim"
    )
    changes = sql.SQL(", ") + _set_clause(schema, fields) if fields else sql.SQL("")
    return render(template, schema, changes=changes, source=sql.Identifier("claim"))


def list_statement(schema: str, shape: tuple[bool, ...]) -> bytes:
    """``list_runs`` with only the given filters in the WHERE clause (``shape`` follows
    ``LIST_FILTERS``), so each shape gets a plan using its index."""
    conds = [sql.SQL(cond) for (_, cond), given in zip(LIST_FILTERS, shape, strict=True) if given]
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    return render(
        "SELECT r.run_id, " + RUN_JSON + ", r.created_at FROM {s}.runs AS r{where}"
        " ORDER BY created_at DESC, run_id DESC"
        " LIMIT %(limit)s",
        schema,
        where=where,
    )


LIST_FILTERS: Final[tuple[tuple[str, LiteralString], ...]] = (
    ("status", "status = %(status)s"),
    ("workflow_name", "workflow_name = %(workflow_name)s"),
    ("created_after", "created_at > %(created_after)s"),
    ("created_before", "created_at < %(created_before)s"),
    ("cursor_at", "(created_at, run_id) < (%(cursor_at)s, %(cursor_id)s)"),
)
