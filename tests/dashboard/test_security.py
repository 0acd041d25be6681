"""Who may use the dashboard: the access token (Bearer, ``?token=`` once, the login
form), the Host names of a local dashboard, and the rule that refuses a non-loopback
address without a token."""

from __future__ import annotations

import pytest

from pyworkflow.dashboard import create_app
from pyworkflow.dashboard.security import SESSION_COOKIE, check_bind, check_token, is_loopback, loopback_hosts
from pyworkflow.errors import ConfigurationError
from tests.dashboard.conftest import Store, client_of

TOKEN = "s3cret-token-for-the-tests"


async def test_without_the_token_every_page_is_401(store: Store) -> None:
    async with client_of(create_app(storage=store.storage, token=TOKEN)) as http:
        for path in ("/", f"/runs/{store.ids['order']}", "/schedules", "/runs/nope"):
            page = await http.get(path)
            assert page.status_code == 401, path
            assert 'type="password" name="token"' in page.text  # the login form
            assert store.ids["order"] not in page.text
        api = await http.get("/api/counts")
        assert api.status_code == 401 and api.json() == {"error": "this dashboard needs its access token"}
        wrong = await http.get("/", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401
        posted = await http.post(f"/runs/{store.ids['approval']}/cancel", data={"csrf_token": "x"})
        assert posted.status_code == 401
    assert await store.storage.get_messages(store.ids["approval"]) == []


async def test_a_bearer_token_opens_every_page(store: Store) -> None:
    async with client_of(create_app(storage=store.storage, token=TOKEN)) as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.get("/", headers=headers)).status_code == 200
        assert (await http.get("/api/counts", headers=headers)).status_code == 200


async def test_token_in_the_query_once_sets_a_cookie(store: Store) -> None:
    async with client_of(create_app(storage=store.storage, token=TOKEN)) as http:
        first = await http.get("/", params={"token": TOKEN, "status": "failed"})
        assert first.status_code == 303
        assert first.headers["location"].endswith("/?status=failed")  # the token is gone from the URL
        cookie = first.headers["set-cookie"]
        assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        page = await http.get("/?status=failed")
        assert page.status_code == 200 and store.ids["explode"] in page.text
        bad = await http.get("/", params={"token": "nope"})
        assert bad.status_code == 200  # the cookie from before still holds
    async with client_of(create_app(storage=store.storage, token=TOKEN)) as fresh:
        assert (await fresh.get("/", params={"token": "nope"})).status_code == 401


async def test_the_login_form(store: Store) -> None:
    async with client_of(create_app(storage=store.storage, token=TOKEN)) as http:
        wrong = await http.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert SESSION_COOKIE not in http.cookies
        done = await http.post("/login", data={"token": TOKEN})
        assert done.status_code == 303 and SESSION_COOKIE in http.cookies
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/login")).status_code == 303  # logged in already


async def test_the_token_comes_from_the_environment(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYWORKFLOW_DASHBOARD_TOKEN", TOKEN)
    async with client_of(create_app(storage=store.storage)) as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(storage="memory://", token="short")
    assert check_token("   ") is None and check_token(None) is None


async def test_allowed_hosts_refuse_a_rebound_name(store: Store) -> None:
    app = create_app(storage=store.storage, allowed_hosts=loopback_hosts("127.0.0.1"))
    async with client_of(app) as http:
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/", headers={"Host": "localhost:8787"})).status_code == 200
        assert (await http.get("/", headers={"Host": "[::1]:8787"})).status_code == 200
        evil = await http.get("/", headers={"Host": "evil.example:8787"})
        assert evil.status_code == 400 and "Host" in evil.text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("192.168.0.10", False),
        ("", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind_needs_a_token_off_loopback() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(ConfigurationError, match="PYWORKFLOW_DASHBOARD_TOKEN is not set"):
        check_bind("0.0.0.0", None)
