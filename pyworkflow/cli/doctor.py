"""``pyworkflow doctor``: is this process set up to run workflows? One line per check,
OK or what to fix: settings, storage, its schema version, the broker, the workflow
modules, and the clock against the storage server's. Exit 1 when a check fails.

The schema version is read before anything else touches the storage: the backends
migrate an old schema on first use, and the doctor reports what it found.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click

from pyworkflow.cli import output
from pyworkflow.cli.context import Cli, cli_of
from pyworkflow.cli.runs import json_option
from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.base import redact_url

#: Seconds each network check may take.
TIMEOUT = 5.0
#: Clock skew above this is reported (leases, timers and deadlines use each process's
#: wall clock; workers whose clocks disagree wake runs early or late and judge leases
#: expired too soon).
SKEW_WARNING = 0.5


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str | None = None


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return {"postgres": "postgresql", "rediss": "redis"}.get(scheme, scheme)


def _without_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(kept)))


# -- settings, imports, broker -----------------------------------------------------------------


def check_settings() -> tuple[Check, Any]:
    from pyworkflow.celery.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        return Check("settings", "fail", str(exc), "correct the variable named above"), None
    detail = (
        f"tick {settings.tick_interval:g}s, lease {settings.lease_ttl:g}s, visibility timeout "
        f"{settings.visibility_timeout:g}s, countdown hint {settings.countdown_hint:g}s, "
        f"start guard {settings.start_guard:g}s"
        + (", payloads encrypted" if os.environ.get("PYWORKFLOW_ENCRYPTION_KEY") else "")
    )
    return Check("settings", "ok", detail), settings


def check_imports(cli: Cli) -> list[Check]:
    from pyworkflow import config
    from pyworkflow.registry import get_workflow, workflow_names

    modules = cli.modules()
    if not modules:
        return [
            Check(
                "imports",
                "warn",
                "no workflow modules configured: workers would know no workflows",
                "set PYWORKFLOW_IMPORTS=myapp.workflows (comma-separated), or pass --import",
            )
        ]
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    checks = []
    for module in modules:
        try:
            config.import_modules([module])
        except ConfigurationError as exc:
            checks.append(Check("imports", "fail", str(exc), "fix the module name or PYTHONPATH"))
            continue
        except Exception as exc:  # noqa: BLE001 - a module may raise anything while importing
            checks.append(Check("imports", "fail", f"{module}: {_error(exc)}", "fix the error in the module"))
            continue
        names = [n for n in workflow_names() if _defined_in(get_workflow(n).fn, module)]
        shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
        detail = f"{module}: {len(names)} workflow(s)" + (f" ({shown})" if names else "")
        checks.append(Check("imports", "ok" if names else "warn", detail, None if names else "no @workflow in it"))
    return checks


def _defined_in(fn: Any, module: str) -> bool:
    name = getattr(fn, "__module__", "") or ""
    return name == module or name.startswith(module + ".")


def check_broker(cli: Cli) -> Check:
    from pyworkflow.celery.factory import create_app
    from pyworkflow.celery.settings import DEFAULT_BROKER_URL, Settings

    url = cli.broker_url or os.environ.get("PYWORKFLOW_BROKER_URL") or DEFAULT_BROKER_URL
    shown = redact_url(url)
    try:
        app = create_app(settings=Settings(broker_url=url))
    except ConfigurationError as exc:
        return Check("broker", "fail", str(exc), "set --broker or PYWORKFLOW_BROKER_URL to a redis:// or amqp:// URL")
    started = time.monotonic()
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - whatever the transport raises, it is unreachable
        return Check(
            "broker",
            "fail",
            f"{shown} unreachable: {_error(exc)}",
            "start the broker, or point --broker / PYWORKFLOW_BROKER_URL at it",
        )
    return Check("broker", "ok", f"{shown} reachable ({(time.monotonic() - started) * 1000:.0f} ms)")


# -- storage: schema version, reachability, clock ------------------------------------------------


def _schema_check(found: int | None, current: int, where: str) -> Check:
    if not found:
        return Check("schema", "warn", f"{where}: no PyWorkflow schema yet", "it is created on first use")
    if found == current:
        return Check("schema", "ok", f"{where}: version {found} (this release's)")
    if found < current:
        return Check(
            "schema",
            "warn",
            f"{where}: version {found}, this release uses {current}",
            "migrated on first use by any process of this release",
        )
    return Check(
        "schema", "fail", f"{where}: version {found}, newer than this release ({current})", "upgrade pyworkflow"
    )


def _missing(what: str, where: str) -> Check:
    return Check(
        "storage",
        "warn",
        f"no {what} at {where!r} yet",
        "it is created by the first run; check the URL if runs were expected here",
    )


def _sqlite_schema(cli: Cli) -> Check:
    """The version of an existing SQLite file, read only; a warning when there is none."""
    from pyworkflow.storage.sqlite import SCHEMA_VERSION, SQLiteStorageBackend

    path = SQLiteStorageBackend.from_url(cli.url).path
    if not os.path.exists(path):
        return _missing("database file", os.path.abspath(path))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()
    return _schema_check(version, SCHEMA_VERSION, path)


async def _postgres(cli: Cli) -> tuple[Check, Check]:
    """Schema version and clock skew, on one plain connection of the storage's server."""
    import psycopg

    from pyworkflow.storage.postgres import SCHEMA_VERSION, PostgresStorageBackend

    schema = PostgresStorageBackend.from_url(cli.url).schema
    conninfo = _without_param(cli.url, "schema")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=int(TIMEOUT)) as conn:
        try:
            query = f'SELECT max(version) FROM "{schema}".pyworkflow_migrations'
            row = await (await conn.execute(query)).fetchone()  # the schema name is checked by the backend
            version = None if row is None or row[0] is None else int(row[0])
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            version = None
        before = time.time()
        row = await (await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")).fetchone()
        after = time.time()
    assert row is not None
    clock = _skew("PostgreSQL", float(row[0]), before, after)
    return _schema_check(version, SCHEMA_VERSION, f"schema {schema!r}"), clock


async def _redis_clock(cli: Cli) -> Check:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(_without_param(cli.url, "prefix"), socket_connect_timeout=TIMEOUT)
    try:
        before = time.time()
        seconds, micros = await client.time()
        after = time.time()
    finally:
        await client.aclose()
    return _skew("Redis", seconds + micros / 1e6, before, after)


def _skew(server: str, server_time: float, before: float, after: float) -> Check:
    skew = server_time - (before + after) / 2
    detail = f"{round(skew * 1000):+d} ms against the {server} server (round trip {(after - before) * 1000:.0f} ms)"
    if abs(skew) > SKEW_WARNING:
        return Check(
            "clock skew", "warn", detail, "synchronise clocks with NTP (chrony, systemd-timesyncd) on every host"
        )
    return Check("clock skew", "ok", detail)


async def _probe(cli: Cli, scheme: str) -> tuple[list[Check], Check]:
    """What can be learnt before the backend is used: the schema (read only), the clock,
    and whether there is anything to reach. Raises when the server is unreachable."""
    if scheme == "sqlite":
        return [_sqlite_schema(cli)], _no_clock(scheme)
    if scheme == "postgresql":
        schema, clock = await asyncio.wait_for(_postgres(cli), TIMEOUT * 2)
        return [schema], clock
    no_schema = Check("schema", "skip", f"the {scheme} backend has no schema version")
    if scheme == "redis":
        return [no_schema], await asyncio.wait_for(_redis_clock(cli), TIMEOUT * 2)
    if scheme == "file":
        root = cli.url[len("file://") :]  # what FileStorageBackend.from_url reads
        if not os.path.isdir(root):
            return [_missing("directory", os.path.abspath(root))], _no_clock(scheme)
    if scheme == "memory":
        memory = Check(
            "storage", "warn", "memory:// lives in one process: no worker sees its runs", "use sqlite, postgresql…"
        )
        return [memory], _no_clock(scheme)
    return [no_schema], _no_clock(scheme)


async def check_storage(cli: Cli) -> list[Check]:
    """Reach the storage without changing it: a schema that is missing or behind is
    reported, not created or migrated (the backend would do that on first use)."""
    from pyworkflow.storage import check_storage_url

    try:
        check_storage_url(cli.url)
    except ConfigurationError as exc:
        return [Check("storage", "fail", str(exc), "set --storage or PYWORKFLOW_STORAGE_URL")]
    scheme = _scheme(cli.url)
    try:
        found, clock = await _probe(cli, scheme)
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, it is unreachable
        return [_unreachable(cli, exc)]
    if any(c.name == "storage" for c in found):  # nothing there to reach yet, or memory
        return [*found, clock]
    if any(c.name == "schema" and c.status != "ok" and c.status != "skip" for c in found):
        reach = Check("storage", "ok", f"{cli.shown_url}: server reachable (the doctor changes nothing)")
        return [reach, *found, clock]
    started = time.monotonic()
    try:
        await asyncio.wait_for(cli.storage().list_runs(limit=1), TIMEOUT * 2)
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, it is unreachable
        return [_unreachable(cli, exc), *found]
    took = (time.monotonic() - started) * 1000
    backend = getattr(cli.storage(), "inner", cli.storage())
    reach = Check("storage", "ok", f"{cli.shown_url} reachable ({type(backend).__name__}, {took:.0f} ms)")
    return [reach, *found, clock]


def _unreachable(cli: Cli, exc: BaseException) -> Check:
    return Check(
        "storage",
        "fail",
        f"{cli.shown_url} unreachable: {_error(exc)}",
        "check the URL, that the server runs and the credentials (--storage / PYWORKFLOW_STORAGE_URL)",
    )


def _no_clock(scheme: str) -> Check:
    return Check("clock skew", "skip", f"the {scheme} backend has no clock of its own to compare with")


# -- the command -----------------------------------------------------------------------------------


_LABELS = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}


@click.command("doctor")
@json_option
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check settings, storage, schema, broker, workflow modules and clock skew."""
    cli = cli_of(ctx)
    settings_check, _ = check_settings()
    checks = [settings_check]
    checks += cli.run(lambda: check_storage(cli))
    checks.append(check_broker(cli))
    checks += check_imports(cli)
    failed = any(c.status == "fail" for c in checks)
    if cli.json:
        output.emit_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        for c in checks:
            click.echo(f"{_LABELS[c.status]:<5} {c.name:<11} {c.detail}")
            if c.fix and c.status in ("warn", "fail"):
                click.echo(f"{'':<5} {'':<11} fix: {c.fix}")
    if failed:
        ctx.exit(1)
