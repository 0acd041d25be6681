"""Webhooks: a URL that delivers a JSON POST to a waiting run as a signal.

In workflow code::

    hook = await create_webhook("payment", secret="whsec_…")  # secret optional
    await charge_with_callback(hook.url)                      # hand the URL out in a step
    event = await wait_for_signal("payment", timeout="1h")

Serve the endpoint with :func:`app`, an ASGI application (Starlette, from the ``web``
extra) to run alone or mount in FastAPI/Starlette::

    api.mount("/hooks", pyworkflow.webhooks.app())   # PYWORKFLOW_WEBHOOK_BASE_URL=https://…/hooks

``POST <base>/<token>`` with a JSON body sends the body as signal ``name`` to the run:

=== ================================================================================
202 accepted: recorded in the run's inbox (``{"run_id", "signal", "message_id"}``)
400 the body is not valid JSON, or breaks the value policy (NaN, NUL …)
401 the webhook has a secret and ``X-PyWorkflow-Signature: sha256=<hex HMAC-SHA256 of
    the body>`` is missing or wrong (compared in constant time)
404 no webhook has this token (nothing recorded)
410 the run has finished
413 the body is over the limit (default 1 MiB)
415 the body is not ``application/json``
503 storage could not be reached (nothing recorded; ``Retry-After: 5``)
=== ================================================================================

Every refusal is JSON ``{"error": "<what is wrong>"}``, including the router's own (405
for a method other than POST, with ``Allow: POST``).

An ``Idempotency-Key`` header makes repeated deliveries of one event (providers retry)
one signal. A token is the run's id and 192 random bits; the run's log holds it (and the
secret), which is how a POST finds its run without any index.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyworkflow import config, observability
from pyworkflow.errors import ConfigurationError, RunFinishedError, RunNotFoundError, SerializationError, StorageError
from pyworkflow.events import EventType
from pyworkflow.history import CallKind
from pyworkflow.signals import check_name, send_signal_async, workflow_context
from pyworkflow.storage.base import StorageBackend

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

BASE_URL_VARIABLE = "PYWORKFLOW_WEBHOOK_BASE_URL"
SIGNATURE_HEADER = "X-PyWorkflow-Signature"
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_CONCURRENCY = 64
#: ``<run id>.<32 url-safe characters>``: what a token looks like before storage is asked.
_TOKEN = re.compile(r"[0-9A-Za-z_-]{1,64}\.[0-9A-Za-z_-]{32}")
MAX_SECRET_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook of this run: POSTs to :attr:`url` (``None`` without
    ``PYWORKFLOW_WEBHOOK_BASE_URL``; build it from :attr:`token` then) arrive as signal
    :attr:`name`."""

    name: str
    token: str
    url: str | None


def base_url() -> str | None:
    """``PYWORKFLOW_WEBHOOK_BASE_URL`` without its trailing slash, checked: an http(s) URL."""
    value = os.environ.get(BASE_URL_VARIABLE, "").strip()
    if not value:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ConfigurationError(
            f"{BASE_URL_VARIABLE} must be an http:// or https:// URL without query or fragment "
            f"(where the webhooks app is served, e.g. https://api.example.com/hooks), got {value!r}"
        )
    return value.rstrip("/")


async def create_webhook(name: str, *, secret: str | None = None) -> Webhook:
    """Create a webhook that delivers POSTed JSON to this run as signal ``name`` (wait for
    it with :func:`~pyworkflow.wait_for_signal`). Recorded once: replay returns the same
    token and URL. With ``secret``, a POST must carry its HMAC-SHA256 signature (see the
    module docstring). Workflow code only."""
    where = "create_webhook()"
    name = check_name(name, where)
    if secret is not None and (not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_LENGTH):
        raise ValueError(f"{where}: secret must be a non-empty str of at most {MAX_SECRET_LENGTH} characters or None")
    ctx = workflow_context(where)
    call_id, rec = ctx.begin_call(CallKind.WEBHOOK, name)
    if rec is not None:
        return Webhook(name, rec.result["token"], rec.result["url"])
    base = base_url()
    token = f"{ctx.run_id}.{secrets.token_urlsafe(24)}"
    url = f"{base}/{token}" if base else None
    ctx.decide(
        EventType.WEBHOOK_CREATED, {"call_id": call_id, "name": name, "token": token, "url": url, "secret": secret}
    )
    return Webhook(name, token, url)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a token's POSTs go."""

    run_id: str
    name: str
    secret: str | None


async def find_webhook(storage: StorageBackend, token: str) -> Target | None:
    """The webhook a token names, read from its run's log; ``None`` for an unknown one."""
    if not _TOKEN.fullmatch(token):
        return None
    run_id = token.split(".", 1)[0]
    try:
        events = await storage.get_events(run_id)
    except RunNotFoundError:
        return None
    for event in events:
        if event.type == EventType.WEBHOOK_CREATED and hmac.compare_digest(
            str(event.data.get("token", "")).encode(), token.encode()
        ):
            return Target(run_id, str(event.data["name"]), event.data.get("secret"))
    return None


def signature(secret: str, body: bytes) -> str:
    """The ``X-PyWorkflow-Signature`` value for ``body``: ``sha256=<hex digest>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def app(
    storage: StorageBackend | None = None,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
) -> Starlette:
    """The webhooks endpoint as an ASGI app: ``POST /{token}``. ``storage`` defaults to
    the configured one (read at each request). At most ``max_concurrency`` deliveries
    are in flight at once; the others wait their turn (a flood is slowed, never lost)."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ConfigurationError(
            f"pyworkflow.webhooks.app() needs Starlette ({exc}); install it with: pip install 'pyworkflow-celery[web]'"
        ) from None
    if not isinstance(max_body, int) or isinstance(max_body, bool) or max_body < 1:
        raise ValueError(f"webhooks.app(): max_body must be a positive number of bytes, got {max_body!r}")
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ValueError(f"webhooks.app(): max_concurrency must be a positive int, got {max_concurrency!r}")
    limits: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def problem(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return None
        return bytes(body)

    async def deliver(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        limit = limits.get(loop) or limits.setdefault(loop, asyncio.Semaphore(max_concurrency))
        async with limit:
            try:
                return await _deliver(request)
            except Exception as exc:
                store = storage if storage is not None else config.get_storage()
                if not isinstance(exc, StorageError) and not isinstance(exc, store.unavailable_errors):
                    raise
                # nothing was recorded: the sender (a provider retrying on 5xx) tries again
                observability.engine_log("webhook_storage_error", level="warning", error=f"{type(exc).__name__}: {exc}")
                return JSONResponse(
                    {"error": "storage is unavailable; nothing was recorded, retry later"},
                    status_code=503,
                    headers={"Retry-After": "5"},
                )

    async def _deliver(request: Request) -> Response:
        token = request.path_params["token"]
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            return problem(415, f"the body must be application/json, got {media or 'no content type'!r}")
        body = await read_body(request)
        if body is None:
            return problem(413, f"the body is over the limit of {max_body} bytes")
        store = storage if storage is not None else config.get_storage()
        target = await find_webhook(store, token)
        if target is None:
            return problem(404, "no webhook has this token")
        if target.secret is not None:
            given = request.headers.get(SIGNATURE_HEADER, "").strip().lower()  # hex in either case
            if not hmac.compare_digest(given.encode(), signature(target.secret, body).encode()):
                return problem(401, f"the {SIGNATURE_HEADER} header is missing or does not match the body")
        try:
            payload = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return problem(400, f"the body is not valid JSON: {exc}")
        except RecursionError:  # arrays/objects nested deeper than the parser goes
            return problem(400, "the body is not valid JSON: it is nested too deeply")
        try:
            message_id = await send_signal_async(
                target.run_id,
                target.name,
                payload,
                idempotency_key=request.headers.get("idempotency-key") or None,
                storage=store,
            )
        except RunFinishedError:
            return problem(410, "the run has finished; it takes no more signals")
        except RunNotFoundError:
            return problem(404, "no webhook has this token")
        except (SerializationError, TypeError) as exc:
            return problem(400, str(exc))
        return JSONResponse({"run_id": target.run_id, "signal": target.name, "message_id": message_id}, status_code=202)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed: a webhook takes POST"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(routes=[Route("/{token}", deliver, methods=["POST"])], exception_handlers={HTTPException: refused})


__all__ = ["Webhook", "app", "create_webhook", "find_webhook", "signature"]
