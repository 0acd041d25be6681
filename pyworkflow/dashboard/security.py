"""Who may use the dashboard, and proof that a form was sent from it.

**Binding.** :func:`check_bind` refuses a non-loopback address unless an access token is
set (``PYWORKFLOW_DASHBOARD_TOKEN``): the dashboard can cancel runs and send signals.

**The access token.** With a token, :class:`Guard` lets a request through when it
carries ``Authorization: Bearer <token>``, or the session cookie a login set: the login
form at ``/login``, or ``?token=<token>`` on any page once (answered with a redirect to
the same page without it, so the token does not stay in the address bar or the history).
The cookie holds an HMAC of the token, never the token. Anything else is answered 401.

**Host names.** Served on a loopback address without a token, :class:`Guard` may also
be given the host names it answers to: a page of another site that rebinds its own name
to 127.0.0.1 (DNS rebinding) is refused with 400.

**CSRF.** Every form that changes a run carries a per-session token in a hidden field,
and the same token is in a cookie (double submit, ``SameSite=Strict``): a POST whose
field is missing or does not match the cookie is refused with 403 before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import URL, Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pyworkflow.dashboard import TOKEN_VARIABLE
from pyworkflow.errors import ConfigurationError

MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "pyworkflow_dashboard_session"
CSRF_COOKIE = "pyworkflow_dashboard_csrf"
CSRF_FIELD = "csrf_token"
LOGIN_PATH = "/login"


def check_token(token: str | None) -> str | None:
    """``token`` stripped, or ``None`` when empty; :class:`ConfigurationError` when it is
    too short to guard anything."""
    if token is None or not token.strip():
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"{TOKEN_VARIABLE} is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is served only to this machine: every
    address it resolves to is a loopback address."""
    name = host.strip().strip("[]")
    if not name:
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addresses)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on ``host`` when it is reachable from other machines and no access
    token guards the dashboard (:class:`~pyworkflow.errors.ConfigurationError`)."""
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host}: it is not a loopback address and {TOKEN_VARIABLE} is "
            "not set; set a token (every request must then carry it) or bind 127.0.0.1"
        )


def session_value(token: str) -> str:
    """What the session cookie holds for ``token``: an HMAC of it, not the token itself."""
    return hmac.new(token.encode(), b"pyworkflow-dashboard-session", hashlib.sha256).hexdigest()


def cookie_path(scope: Scope) -> str:
    """The path the dashboard is served under (its mount point), for its cookies."""
    root = str(scope.get("root_path") or "")
    return root if root else "/"


def loopback_hosts(host: str) -> list[str]:
    """The ``Host`` names a dashboard bound to the loopback address ``host`` answers to."""
    return sorted({"localhost", "127.0.0.1", "::1", host.strip().strip("[]").lower()})


class Guard:
    """ASGI middleware: the access token (when set) and the allowed host names (when
    given) for every request, before the dashboard sees it."""

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else None
        self.allowed = {h.lower() for h in allowed_hosts} if allowed_hosts is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.allowed is not None and _host_name(headers.get("host", "")) not in self.allowed:
            response: Response = HTMLResponse("unexpected Host header", status_code=400)
            await response(scope, receive, send)
            return
        if self.token is None or self._authorized(scope, headers):
            await self.app(scope, receive, send)
            return
        response = await self._challenge(scope, receive)
        await response(scope, receive, send)

    def _authorized(self, scope: Scope, headers: Headers) -> bool:
        assert self.token is not None and self.session is not None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        cookie = Request(scope).cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session.encode())

    async def _challenge(self, scope: Scope, receive: Receive) -> Response:
        """A request without the token: ``?token=`` or the login form may log it in;
        anything else is 401."""
        assert self.token is not None and self.session is not None
        request = Request(scope, receive)
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            rest = urlencode([(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "token"])
            return self._logged_in(scope, str(URL(scope=scope).replace(query=rest)))
        path = scope.get("path", "")
        root = str(scope.get("root_path") or "")
        if path in (LOGIN_PATH, root + LOGIN_PATH) and request.method == "POST":
            try:
                form = await read_form(request)
            except FormError:
                form = {}
            value = form.get("token")
            if value is not None and hmac.compare_digest(value.encode(), self.token.encode()):
                return self._logged_in(scope, (root or "") + "/")
            return _login_page(scope, "wrong token", 401)
        if (
            path.rstrip("/").endswith("/api")
            or "/api/" in path
            or "application/json" in request.headers.get("accept", "")
        ):
            return JSONResponse({"error": "this dashboard needs its access token"}, status_code=401)
        return _login_page(scope, None, 401)

    def _logged_in(self, scope: Scope, target: str) -> Response:
        assert self.session is not None
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            self.session,
            httponly=True,
            samesite="strict",
            path=cookie_path(scope),
            secure=scope.get("scheme") == "https",
        )
        return response


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _login_page(scope: Scope, problem: str | None, status: int) -> Response:
    action = html.escape(str(scope.get("root_path") or "") + LOGIN_PATH)
    note = f'<p class="problem">{problem}</p>' if problem else ""
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>PyWorkflow dashboard: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px system-ui,sans-serif;background:#f5f6f8;display:grid;place-items:center;height:90vh}}
form{{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}}
input{{font:inherit;padding:.4rem;width:20rem}}button{{font:inherit;padding:.4rem 1rem}}
.problem{{color:#b42318}}</style>
</head><body><form method="post" action="{action}"><h1>PyWorkflow dashboard</h1>{note}
<p><label>Access token<br><input type="password" name="token" autofocus autocomplete="current-password"></label></p>
<p><button type="submit">Log in</button></p></form></body></html>"""
    return HTMLResponse(body, status_code=status)


MAX_FORM = 64 * 1024


class FormError(ValueError):
    """A form body that is not a URL-encoded form within :data:`MAX_FORM` bytes."""


async def read_form(request: Request) -> dict[str, str]:
    """The URL-encoded form of a POST (the dashboard's forms are all small text): last
    value wins per field. Parsed here so the ``web`` extra needs no multipart parser."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise FormError(f"the body must be a form (application/x-www-form-urlencoded), got {media or 'none'!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise FormError(f"the form is larger than {MAX_FORM} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError("the form is not UTF-8") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, field: object) -> bool:
    """Whether a form's CSRF field matches the session's cookie (constant time)."""
    if not cookie or not isinstance(field, str) or not field:
        return False
    return hmac.compare_digest(cookie.encode(), field.encode())
