"""The dashboard's routes: pages rendered on the server with Jinja2, a little inline
JavaScript for live updates, and forms for the actions.

============================== ====================================================
``GET  /``                     runs, newest first: filters ``status``, ``workflow``,
                               ``since`` (``2h``, ``3d`` or an ISO time), ``limit``
                               (1-500), keyset pages by ``cursor``; ``q`` opens a run
                               by id
``GET  /runs/{id}``            one run: status, input, result, error, published
                               state, its timeline and its last events
``GET  /runs/{id}/live``       the part of that page that moves (HTML, polled)
``GET  /runs/{id}/poll``       ``{"status", "last_seq", "terminal"}``: has it moved?
``GET  /runs/{id}/events``     its whole log, ``after`` a seq, ``limit`` per page
``POST /runs/{id}/cancel``     :func:`pyworkflow.cancel_async` (``reason`` optional)
``POST /runs/{id}/retry``      :func:`pyworkflow.retry_async`
``POST /runs/{id}/pause``      :func:`pyworkflow.pause_async`
``POST /runs/{id}/unpause``    :func:`pyworkflow.unpause_async`
``POST /runs/{id}/signal``     :func:`pyworkflow.send_signal_async` (``name``, JSON
                               ``payload``, ``idempotency_key`` optional)
``GET  /schedules``            the schedules, when this version has them
``GET  /api/counts``           runs by status and by workflow (JSON)
``GET  /metrics``              Prometheus metrics of this process (see
                               :mod:`pyworkflow.metrics`), when prometheus-client
                               is installed
============================== ====================================================

Bad input is answered with the page of the problem and its status: 400 naming the
parameter, 403 for a form without its CSRF token, 404 for an unknown run, 409 for an
action the run refuses (finished, not retryable), 503 when storage cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from pyworkflow import config, metrics
from pyworkflow.clock import utcnow
from pyworkflow.dashboard import security
from pyworkflow.dashboard.timeline import build as build_timeline
from pyworkflow.dashboard.timeline import short_duration
from pyworkflow.durations import parse_duration
from pyworkflow.errors import (
    CorruptedStorageError,
    PyWorkflowError,
    RunFinishedError,
    RunNotFoundError,
    RunNotRetryableError,
    StorageError,
)
from pyworkflow.events import Event, EventType
from pyworkflow.storage.base import RunStatus, StorageBackend, WorkflowRun, decode_cursor

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Events shown on a run's page (its whole log is one click away).
RECENT_EVENTS = 50
EVENTS_PAGE = 500
#: How long counts by status and workflow are reused before they are counted again.
COUNTS_TTL = 60.0
MAX_TEXT = 255
#: Logs at least this long are kept in memory between requests, at most this many events in
#: all (least recently viewed first out): a log is append-only, so a view of a long run
#: that moves (polled every second) reads only the events new since the last one.
CACHE_FROM_EVENTS = 2_000
MAX_CACHED_EVENTS = 50_000
#: Event data keys never shown: a webhook's secret signs its deliveries.
HIDDEN_KEYS = frozenset({"secret"})
NOTICES = {
    "cancelled": "Cancellation requested: the run stops at the durable call it waits in.",
    "cancel-finished": "The run had already finished: nothing to cancel.",
    "retried": "Retry recorded: the failed steps run again with fresh attempts.",
    "signalled": "Signal sent.",
    "paused": "Pause requested: the run finishes the step it is running, then holds at its next durable call.",
    "unpaused": "Unpause requested: the run goes on from where it was held.",
    "pause-finished": "The run had already finished: nothing to pause or unpause.",
}


class BadRequest(Exception):
    """A request the dashboard refuses: ``status`` and a message naming what is wrong."""

    def __init__(self, status: int, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title or {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Refused"}.get(
            status, "Error"
        )


class Dashboard:
    """The state behind one app: its storage, templates and cached counts."""

    def __init__(self, storage: StorageBackend | str | None, title: str) -> None:
        if isinstance(storage, str):
            from pyworkflow.storage import storage_from_url

            storage = storage_from_url(storage)
        self._storage = storage
        self.title = title
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=when, when_text=when_text, duration=duration_text, pretty=pretty, errline=error_line
        )
        self.env.globals.update(statuses=[s.value for s in RunStatus], notices=NOTICES)
        self._counts: dict[str, Any] | None = None
        self._counted_at = 0.0
        self._counting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._logs: OrderedDict[str, list[Event]] = OrderedDict()
        self._cached = 0

    @property
    def storage(self) -> StorageBackend:
        return self._storage if self._storage is not None else config.get_storage()

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        """A page, with the session's CSRF token in its forms (and its cookie set)."""
        csrf = request.cookies.get(security.CSRF_COOKIE) or ""
        fresh = not csrf
        if fresh:
            csrf = security.new_csrf_token()
        base = str(request.scope.get("root_path") or "")
        body = self.env.get_template(name).render(
            request=request,
            url_for=request.url_for,
            base=base,
            csrf=csrf,
            title=self.title,
            csrf_field=security.CSRF_FIELD,
            **context,
        )
        response = HTMLResponse(body, status_code=status)
        if fresh:
            response.set_cookie(
                security.CSRF_COOKIE,
                csrf,
                httponly=True,
                samesite="strict",
                path=security.cookie_path(request.scope),
                secure=request.url.scheme == "https",
            )
        return response

    async def events(self, run_id: str) -> list[Event]:
        """The run's whole log: from the cache of long logs plus what was appended since,
        or from storage."""
        cached = self._logs.pop(run_id, None)
        if cached is not None:
            self._cached -= len(cached)
        after = cached[-1].seq if cached else 0
        newer = await self.storage.get_events(run_id, after_seq=after)
        if cached is None or (newer and newer[0].seq != after + 1):
            events = newer if cached is None or after == 0 else await self.storage.get_events(run_id)
        else:
            events = cached + newer if newer else cached
        if CACHE_FROM_EVENTS <= len(events) <= MAX_CACHED_EVENTS:
            self._logs[run_id] = events
            self._cached += len(events)
            while self._cached > MAX_CACHED_EVENTS:
                _, dropped = self._logs.popitem(last=False)
                self._cached -= len(dropped)
        return events

    def forget_events(self) -> None:
        """Empty the cache of long logs (benchmarks measure a first view with it)."""
        self._logs.clear()
        self._cached = 0

    async def counts(self) -> dict[str, Any]:
        """Runs by status and by workflow (:meth:`StorageBackend.count_runs`, one query
        on the SQL backends), counted at most every :data:`COUNTS_TTL` seconds, one count
        at a time."""
        loop = asyncio.get_running_loop()
        lock = self._counting.get(loop) or self._counting.setdefault(loop, asyncio.Lock())
        async with lock:
            if self._counts is not None and time.monotonic() - self._counted_at < COUNTS_TTL:
                return self._counts
            counted = await self.storage.count_runs()
            self._counts = {
                "total": counted.total,
                "by_status": counted.by_status,
                "by_workflow": counted.by_workflow,
                "counted_at": utcnow().isoformat(),
            }
            self._counted_at = time.monotonic()
            return self._counts


# -- formatting ------------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    """``2025-01-31 12:00:00`` (UTC), or an em dash."""
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def when_text(value: Any) -> str:
    """:func:`when` of an ISO time given as text (schedules come as JSON data)."""
    if isinstance(value, str):
        try:
            return when(datetime.fromisoformat(value))
        except ValueError:
            return value
    return when(value) if isinstance(value, datetime) or value is None else str(value)


def duration_text(value: timedelta | float | None) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return short_duration(seconds)


def pretty(value: Any) -> str:
    """A JSON value, indented (escaped by the template)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=False)


def error_line(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    kind, message = error.get("type"), error.get("message")
    return f"{kind}: {message}" if kind and message else str(message or kind or error)


def shown_data(event: Event) -> dict[str, Any]:
    """An event's data as the page shows it, without secrets."""
    data = event.data
    if HIDDEN_KEYS.isdisjoint(data):
        return data
    return {k: ("***" if k in HIDDEN_KEYS and v is not None else v) for k, v in data.items()}


# -- parameters ------------------------------------------------------------------------------


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadRequest(400, f"parameter {name!r}: at most {MAX_TEXT} printable characters")
    return value


def _status(request: Request) -> str | None:
    value = _text(request, "status")
    if value is None:
        return None
    try:
        return RunStatus(value.lower()).value
    except ValueError:
        raise BadRequest(
            400, f"parameter 'status': {value!r} is not a status; one of {', '.join(s.value for s in RunStatus)}"
        ) from None


def _since(request: Request) -> datetime | None:
    value = _text(request, "since")
    if value is None:
        return None
    try:
        return utcnow() - parse_duration(value, what="since")
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            400,
            f"parameter 'since': {value!r} is neither a duration (2h, 3d, 1h30m) nor an ISO time "
            "(2025-01-31T12:00:00Z)",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise BadRequest(400, f"parameter {name!r}: {value[:40]!r} is not a whole number from {low} to {high}")
    return number


def _cursor(request: Request) -> str | None:
    value = request.query_params.get("cursor")
    if not value:
        return None
    try:
        decode_cursor(value)
    except ValueError:
        raise BadRequest(
            400, f"parameter 'cursor': {value[:60]!r} is not a cursor; follow the page's 'next' link"
        ) from None
    return value


def _query(params: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


# -- the app ---------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    storage: StorageBackend | str | None = None,
    *,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    title: str = "PyWorkflow",
) -> Starlette:
    """See :func:`pyworkflow.dashboard.create_app`."""
    token = security.check_token(token)
    dash = Dashboard(storage, title)

    def guarded(endpoint: Endpoint) -> Endpoint:
        """Bad input, unknown runs and storage failures as pages with their status."""

        async def handle(request: Request) -> Response:
            try:
                return await endpoint(request)
            except BadRequest as exc:
                return problem(request, exc)
            except CorruptedStorageError as exc:
                return problem(request, BadRequest(500, f"stored data cannot be read: {exc}", title="Unreadable"))
            except Exception as exc:
                if isinstance(exc, StorageError) or isinstance(exc, dash.storage.unavailable_errors):
                    return problem(
                        request,
                        BadRequest(503, f"storage is unavailable: {type(exc).__name__}: {exc}", title="Unavailable"),
                    )
                raise

        handle.__name__ = endpoint.__name__
        return handle

    def problem(request: Request, exc: BadRequest) -> Response:
        if request.url.path.endswith("/poll") or "/api/" in request.url.path:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return dash.render(
            request, "error.html", {"status": exc.status, "heading": exc.title, "message": exc.message}, exc.status
        )

    async def load_run(request: Request) -> WorkflowRun:
        run_id = request.path_params["run_id"]
        try:
            run = await dash.storage.get_run(run_id)
        except ValueError:  # an id no run can have
            run = None
        if run is None:
            raise BadRequest(404, f"no run {run_id!r}", title="Run not found")
        return run

    async def check_csrf(request: Request) -> dict[str, str]:
        try:
            form = await security.read_form(request)
        except security.FormError as exc:
            form = {}
            if request.cookies.get(security.CSRF_COOKIE):  # a page's own form would never be this
                raise BadRequest(400, str(exc)) from None
        if not security.csrf_ok(request.cookies.get(security.CSRF_COOKIE), form.get(security.CSRF_FIELD)):
            raise BadRequest(
                403, "the form's CSRF token is missing or does not match this session; reload the page and try again"
            )
        return form

    # -- pages ---------------------------------------------------------------------------------

    async def runs_page(request: Request) -> Response:
        q = _text(request, "q")
        if q is not None:
            try:
                found = await dash.storage.get_run(q)
            except ValueError:
                found = None
            if found is None:
                raise BadRequest(404, f"no run {q!r}", title="Run not found")
            return RedirectResponse(str(request.url_for("run", run_id=found.run_id)), status_code=303)
        status, workflow, since = _status(request), _text(request, "workflow"), _since(request)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        cursor = _cursor(request)
        started = time.perf_counter()
        page = await dash.storage.list_runs(
            status=status, workflow_name=workflow, created_after=since, limit=limit, cursor=cursor
        )
        filters = {
            "status": status,
            "workflow": workflow,
            "since": request.query_params.get("since", "").strip() or None,
            "limit": limit if limit != DEFAULT_LIMIT else None,
        }
        now = utcnow()
        return dash.render(
            request,
            "runs.html",
            {
                "runs": page.runs,
                "filters": filters,
                "next_query": _query({**filters, "cursor": page.next_cursor}) if page.next_cursor else None,
                "first_query": _query(filters) if cursor else None,
                "now": now,
                "query_ms": (time.perf_counter() - started) * 1000,
            },
        )

    async def run_context(run: WorkflowRun) -> dict[str, Any]:
        events = await dash.events(run.run_id)
        pending = await dash.storage.get_messages(run.run_id)
        now = utcnow()
        timeline = build_timeline(events, now=now)
        state: dict[str, Any] = {}
        parent: dict[str, Any] | None = None
        chain: dict[str, Any] = {}  # continue-as-new: the runs before and after this one
        children: list[dict[str, Any]] = []
        for event in events:
            kind = event.type
            if kind == EventType.STATE_SET:
                key = event.data.get("key")
                if isinstance(key, str):
                    state[key] = event.data.get("value")
            elif kind == EventType.CHILD_STARTED:
                children.append(event.data)
            elif kind == EventType.WORKFLOW_STARTED:
                if isinstance(event.data.get("parent"), dict):
                    parent = event.data["parent"]
                if isinstance(event.data.get("continued"), dict):
                    chain["previous"] = event.data["continued"].get("from")
            elif kind == "workflow.continued":
                chain["next"] = event.data.get("run_id")
        last_seq = events[-1].seq if events else 0
        recent = events[-RECENT_EVENTS:]
        return {
            "run": run,
            "timeline": timeline,
            "state": state,
            "parent": parent,
            "chain": chain,
            "children": children,
            "pending": len(pending),
            "event_count": len(events),
            "last_seq": last_seq,
            "recent": [(e, shown_data(e)) for e in reversed(recent)],
            "terminal": run.status.is_terminal,
            "now": now,
            "took": max(timedelta(0), (run.completed_at or now) - run.created_at),
        }

    async def run_page(request: Request) -> Response:
        run = await load_run(request)
        context = await run_context(run)
        notice = request.query_params.get("notice")
        context["notice"] = NOTICES.get(notice or "")
        return dash.render(request, "run.html", context)

    async def run_live(request: Request) -> Response:
        run = await load_run(request)
        return dash.render(request, "_live.html", await run_context(run))

    async def run_poll(request: Request) -> Response:
        run = await load_run(request)
        after = _int(request, "after", 0, 0, 2**62)
        newer = await dash.storage.get_events(run.run_id, after_seq=after)
        last = newer[-1].seq if newer else after
        return JSONResponse(
            {"status": run.status.value, "last_seq": last, "terminal": run.status.is_terminal},
            headers={"Cache-Control": "no-store"},
        )

    async def run_events(request: Request) -> Response:
        run = await load_run(request)
        after = _int(request, "after", 0, 0, 2**62)
        limit = _int(request, "limit", EVENTS_PAGE, 1, 5000)
        events = await dash.storage.get_events(run.run_id, after_seq=after, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return dash.render(
            request,
            "events.html",
            {
                "run": run,
                "events": [(e, shown_data(e)) for e in events],
                "next_after": events[-1].seq if more and events else None,
                "limit": limit,
            },
        )

    async def schedules_page(request: Request) -> Response:
        from pyworkflow.cli import features
        from pyworkflow.cli.context import NotAvailableError
        from pyworkflow.cli.schedules import plain

        try:
            list_schedules = features.lookup("schedules.list")
        except NotAvailableError:
            return dash.render(request, "schedules.html", {"available": False, "schedules": []})
        found = plain(await list_schedules(storage=dash.storage))
        rows = [s for s in found if isinstance(s, dict)] if isinstance(found, list) else []
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return dash.render(request, "schedules.html", {"available": True, "schedules": rows, "columns": columns})

    async def counts_api(request: Request) -> Response:
        return JSONResponse(await dash.counts(), headers={"Cache-Control": "no-store"})

    # -- actions -------------------------------------------------------------------------------

    def back(request: Request, run_id: str, notice: str) -> Response:
        url = str(request.url_for("run", run_id=run_id)) + "?" + _query({"notice": notice})
        return RedirectResponse(url, status_code=303)

    async def cancel(request: Request) -> Response:
        form = await check_csrf(request)
        run = await load_run(request)
        reason = form.get("reason", "").strip() or None
        if reason is not None and (len(reason) > MAX_TEXT or any(ord(c) < 32 for c in reason)):
            raise BadRequest(400, f"field 'reason': at most {MAX_TEXT} printable characters")
        from pyworkflow.control import cancel_async

        try:
            done = await cancel_async(run.run_id, reason=reason, storage=dash.storage)
        except RunNotFoundError:
            raise BadRequest(404, f"no run {run.run_id!r}", title="Run not found") from None
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, f"field 'reason': {exc}") from None
        return back(request, run.run_id, "cancelled" if done else "cancel-finished")

    async def hold(request: Request) -> Response:
        """``pause`` and ``unpause``: the same functions as ``pyworkflow.pause`` and
        ``unpause`` (idempotent; a finished run is said to be finished)."""
        await check_csrf(request)
        run = await load_run(request)
        from pyworkflow.control import pause_async, unpause_async

        pausing = request.url.path.rstrip("/").endswith("/pause")
        try:
            done = await (pause_async if pausing else unpause_async)(run.run_id, storage=dash.storage)
        except RunNotFoundError:
            raise BadRequest(404, f"no run {run.run_id!r}", title="Run not found") from None
        return back(request, run.run_id, ("paused" if pausing else "unpaused") if done else "pause-finished")

    async def retry(request: Request) -> Response:
        await check_csrf(request)
        run = await load_run(request)
        from pyworkflow.control import retry_async

        try:
            await retry_async(run.run_id, storage=dash.storage)
        except RunNotRetryableError as exc:
            raise BadRequest(409, str(exc)) from None
        except RunNotFoundError:
            raise BadRequest(404, f"no run {run.run_id!r}", title="Run not found") from None
        return back(request, run.run_id, "retried")

    async def signal(request: Request) -> Response:
        form = await check_csrf(request)
        run = await load_run(request)
        from pyworkflow.signals import send_signal_async

        name = form.get("name", "").strip()
        if not name:
            raise BadRequest(400, "field 'name': the signal's name is required")
        text = form.get("payload", "").strip()
        try:
            payload = json.loads(text) if text else None
        except ValueError as exc:
            raise BadRequest(400, f"field 'payload': not valid JSON ({exc})") from None
        key = form.get("idempotency_key", "").strip() or None
        try:
            await send_signal_async(run.run_id, name, payload, idempotency_key=key, storage=dash.storage)
        except RunFinishedError:
            raise BadRequest(
                409, f"run {run.run_id!r} has finished ({run.status.value}): it takes no signals"
            ) from None
        except RunNotFoundError:
            raise BadRequest(404, f"no run {run.run_id!r}", title="Run not found") from None
        except PyWorkflowError as exc:  # SerializationError: a payload or key the value policy refuses
            raise BadRequest(400, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc)) from None
        return back(request, run.run_id, "signalled")

    async def logged_in(request: Request) -> Response:
        return RedirectResponse(str(request.url_for("runs")), status_code=303)

    async def not_found(request: Request, exc: Exception) -> Response:
        return problem(request, BadRequest(404, f"no page {request.url.path!r}"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return problem(request, BadRequest(405, f"{request.method} is not allowed here", title="Method not allowed"))

    routes: list[BaseRoute] = [
        Route("/", guarded(runs_page), name="runs"),
        Route("/runs/{run_id}", guarded(run_page), name="run"),
        Route("/runs/{run_id}/live", guarded(run_live), name="run_live"),
        Route("/runs/{run_id}/poll", guarded(run_poll), name="run_poll"),
        Route("/runs/{run_id}/events", guarded(run_events), name="run_events"),
        Route("/runs/{run_id}/cancel", guarded(cancel), methods=["POST"], name="cancel"),
        Route("/runs/{run_id}/retry", guarded(retry), methods=["POST"], name="retry"),
        Route("/runs/{run_id}/pause", guarded(hold), methods=["POST"], name="pause"),
        Route("/runs/{run_id}/unpause", guarded(hold), methods=["POST"], name="unpause"),
        Route("/runs/{run_id}/signal", guarded(signal), methods=["POST"], name="signal"),
        Route("/schedules", guarded(schedules_page), name="schedules"),
        Route("/api/counts", guarded(counts_api), name="counts"),
        Route(security.LOGIN_PATH, logged_in, methods=["GET", "POST"], name="login"),
        # Routes added later come in through ``extra_routes`` and sit behind the same
        # access token, as GET /metrics does (Prometheus, when prometheus-client is installed).
        *extra_routes,
        *metrics.dashboard_routes(extra_routes),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.dashboard = dash
    app.add_middleware(security.Guard, token=token, allowed_hosts=allowed_hosts)
    return app
