"""The webhooks endpoint over real HTTP: ``pyworkflow.webhooks.app()`` served by uvicorn
in a thread of this process, posted to with httpx, alone and mounted in FastAPI.

Runs are driven in-process with :class:`~pyworkflow.local.LocalRuntime` on the test's own
storage object; the server has another one over the same store (as a web process would),
closed on the server's loop when it stops. The main flow runs on SQLite, Redis and
PostgreSQL (real servers); the refusals on SQLite. Every refusal is checked to have
recorded nothing: the run's inbox and its log are the same before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import pyworkflow
from pyworkflow import webhooks, workflow
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import RunStatus, StorageBackend
from pyworkflow.testing import resume_local
from tests import services
from tests.asgi_server import Server

# -- workflows -----------------------------------------------------------------------------


@workflow(name="tests.webhooks.paid")
async def paid(secret: str | None = None) -> Any:
    hook = await pyworkflow.create_webhook("paid", secret=secret)
    pyworkflow.set_state("hook", {"token": hook.token, "url": hook.url})
    return await pyworkflow.wait_for_signal("paid", timeout="1h")


@workflow(name="tests.webhooks.flood")
async def flood(n: int) -> list[Any]:
    hook = await pyworkflow.create_webhook("item")
    pyworkflow.set_state("hook", {"token": hook.token, "url": hook.url})
    return [await pyworkflow.wait_for_signal("item") for _ in range(n)]


@workflow(name="tests.webhooks.bad_hook")
async def bad_hook(name: Any, secret: Any = None) -> None:
    await pyworkflow.create_webhook(name, secret=secret)


@pytest.fixture(autouse=True)
def _in_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No webhook base URL unless a test sets one, and no Celery app: a delivery records
    the signal and sends no activation message (the test activates the run itself)."""
    import pyworkflow.celery.factory as factory

    monkeypatch.delenv(webhooks.BASE_URL_VARIABLE, raising=False)
    monkeypatch.delenv("PYWORKFLOW_BROKER_URL", raising=False)
    monkeypatch.setattr(factory, "_installed", None)


# -- storage: a factory of backends over one store, per kind ------------------------------

Factory = Callable[[], StorageBackend]


def _sqlite(tmp_path: Path) -> Iterator[Factory]:
    from pyworkflow.storage.sqlite import SQLiteStorageBackend

    path = tmp_path / "runs.db"
    yield lambda: SQLiteStorageBackend(path)


def _redis(tmp_path: Path) -> Iterator[Factory]:
    services.require_redis()
    import redis

    from pyworkflow.storage.redis import RedisStorageBackend

    prefix = f"pwtest-webhooks:{uuid.uuid4().hex[:12]}"
    yield lambda: RedisStorageBackend(services.REDIS_URL, prefix=prefix)
    client = redis.Redis.from_url(services.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _postgres(tmp_path: Path) -> Iterator[Factory]:
    services.require_postgres()
    import psycopg

    from pyworkflow.storage.postgres import PostgresStorageBackend

    schema = f"pwtest_{uuid.uuid4().hex[:12]}"
    yield lambda: PostgresStorageBackend(services.POSTGRES_URL, schema=schema)
    with psycopg.connect(services.POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


_KINDS = {"sqlite": _sqlite, "redis": _redis, "postgres": _postgres}
ALL_KINDS = pytest.mark.parametrize("kind", list(_KINDS))


@pytest.fixture
def kind() -> str:
    """The storage of a test; ``@ALL_KINDS`` runs it on each."""
    return "sqlite"


@pytest.fixture
def make_storage(kind: str, tmp_path: Path) -> Iterator[Factory]:
    yield from _KINDS[kind](tmp_path)


@pytest.fixture
async def storage(make_storage: Factory) -> AsyncIterator[StorageBackend]:
    """The test's own backend (the run's side)."""
    backend = make_storage()
    yield backend
    await backend.close()


# -- a real server (tests/asgi_server.py) ------------------------------------------------------


@pytest.fixture
def serve(make_storage: Factory) -> Iterator[Callable[..., Server]]:
    """``serve(**app_options)``: the webhooks app on a backend of its own, started;
    ``serve(wrap=fn)`` serves ``fn(webhooks_app)`` (a FastAPI app mounting it), and
    ``serve(proxy=cls)`` gives the app ``cls(backend)`` instead of the backend."""
    servers: list[Server] = []

    def start(wrap: Callable[[Any], Any] | None = None, proxy: Any = None, **options: Any) -> Server:
        backend = make_storage()
        app = webhooks.app(storage=backend if proxy is None else proxy(backend), **options)
        server = Server(wrap(app) if wrap else app, [backend]).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


# -- helpers -------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


@dataclass
class Run:
    runtime: LocalRuntime
    run_id: str
    token: str
    url: str | None

    @property
    def storage(self) -> StorageBackend:
        return self.runtime.storage


async def start_run(storage: StorageBackend, wf: Any = paid, *args: Any, **kwargs: Any) -> Run:
    """Start ``wf`` in-process and wait for the webhook it publishes; it must be suspended."""
    runtime = LocalRuntime(storage)
    run_id = await runtime.start(wf, *args, **kwargs)
    hook = await pyworkflow.get_state_async(run_id, "hook", timeout=10, storage=storage)
    record = await storage.get_run(run_id)
    assert record is not None and record.status == RunStatus.SUSPENDED, record
    return Run(runtime, run_id, hook["token"], hook["url"])


async def recorded(run: Run) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the run has recorded: its inbox (pending or not) and its log."""
    messages = await run.storage.get_messages(run.run_id, pending_only=False)
    events = await run.storage.get_events(run.run_id)
    return (
        [(m.seq, m.kind, m.payload, m.idempotency_key, m.consumed) for m in messages],
        [(e.seq, str(e.type), e.data) for e in events],
    )


async def refused(run: Run, post: Callable[[], Awaitable[httpx.Response]], status: int, *words: str) -> httpx.Response:
    """``post()`` is answered ``status`` with a JSON error holding every one of ``words``,
    and the run recorded nothing."""
    before = await recorded(run)
    answer = await post()
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.headers
    error = answer.json()["error"]
    for word in words:
        assert word in error, (word, error)
    assert await recorded(run) == before
    return answer


async def resumed(run: Run) -> Any:
    """Tick once (what beat does): the run, due through its inbox, runs to its end."""
    outcomes = await run.runtime.tick()
    assert [o.run_id for o in outcomes] == [run.run_id], outcomes
    record = await run.storage.get_run(run.run_id)
    assert record is not None and record.status == RunStatus.COMPLETED, (record.status, record.error)
    return record.result


# -- 202: the body is the signal -------------------------------------------------------------


@ALL_KINDS
async def test_a_post_is_the_signal_and_resumes_the_run(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    assert run.url is None  # no PYWORKFLOW_WEBHOOK_BASE_URL
    created = [e for e in await storage.get_events(run.run_id) if e.type == "webhook.created"]
    assert [e.data["token"] for e in created] == [run.token]
    assert run.token.startswith(run.run_id + ".")

    body = {"order": 4711, "paid": True, "amount": "12.50", "tags": ["a", "ü"]}
    answer = await client.post(f"{server.url}/{run.token}", json=body)
    assert answer.status_code == 202, answer.text
    reply = answer.json()
    assert reply["run_id"] == run.run_id and reply["signal"] == "paid"
    (message,) = await storage.get_messages(run.run_id, pending_only=False)
    assert reply["message_id"] == f"{run.run_id}:{message.seq}"
    assert message.kind == "signal" and message.payload == {"name": "paid", "payload": body}

    assert await resumed(run) == body
    received = [e for e in await storage.get_events(run.run_id) if e.type == "signal.received"]
    assert [e.data["payload"] for e in received] == [body]


async def test_resume_local_delivers_the_post_too(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    answer = await client.post(
        f"{server.url}/{run.token}", content=b"[1, 2.5, null]", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 202, answer.text
    record = await resume_local(run.run_id, storage)
    assert record is not None and record.status == RunStatus.COMPLETED and record.result == [1, 2.5, None]


async def test_vendor_json_media_types_and_charset_are_json(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    for media in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.stripe+json"):
        answer = await client.post(f"{server.url}/{run.token}", content=b'"x"', headers={"content-type": media})
        assert answer.status_code == 202, (media, answer.text)
    assert len(await storage.get_messages(run.run_id)) == 3


# -- 404 / 410 -------------------------------------------------------------------------------


async def test_unknown_tokens_are_404(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    random_part = run.token.split(".", 1)[1]
    tokens = {
        "well-formed, no such run": f"{'0' * 32}.{random_part}",
        "malformed": "not-a-token",
        "malformed, too short a random part": f"{run.run_id}.{random_part[:-1]}",
        "malformed, a character no token has": f"{run.run_id}.{random_part[:-1]}~",
        "this run, another random part": f"{run.run_id}.{'A' * 32}",
        "this run, the random part in another case": f"{run.run_id}.{random_part.swapcase()}",
    }
    assert tokens["this run, the random part in another case"] != run.token
    for what, token in tokens.items():
        answer = await refused(
            run,
            lambda token=token: client.post(f"{server.url}/{token}", json={"x": 1}),
            404,
            "no webhook has this token",
        )
        assert answer.json() == {"error": "no webhook has this token"}, what
    # the real one still works
    assert (await client.post(f"{server.url}/{run.token}", json={"x": 1})).status_code == 202


async def test_a_finished_run_is_410(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    assert (await client.post(f"{server.url}/{run.token}", json="first")).status_code == 202
    assert await resumed(run) == "first"
    await refused(run, lambda: client.post(f"{server.url}/{run.token}", json="late"), 410, "the run has finished")


# -- 413 -------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve(max_body=100)
    run = await start_run(storage)
    url = f"{server.url}/{run.token}"
    fits = json.dumps({"pad": "x" * 80}).encode()
    over = json.dumps({"pad": "x" * 95}).encode()
    assert len(fits) <= 100 < len(over)

    # declared with Content-Length
    answer = await refused(run, lambda: client.post(url, content=over, headers=JSON), 413, "over the limit", "100")
    assert answer.json() == {"error": "the body is over the limit of 100 bytes"}

    # chunked, without Content-Length: counted while it arrives
    async def chunks(body: bytes, size: int = 16) -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    def chunked(body: bytes) -> Awaitable[httpx.Response]:
        request = client.build_request("POST", url, content=chunks(body), headers=JSON)
        assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
        return client.send(request)

    await refused(run, lambda: chunked(over), 413, "over the limit of 100 bytes")
    big = json.dumps(["y" * 1000] * 50).encode()  # 50 kB in 16-byte chunks
    await refused(run, lambda: chunked(big), 413, "over the limit of 100 bytes")

    # exactly at the limit, both ways: accepted
    exact = json.dumps({"pad": "z" * (100 - len(json.dumps({"pad": ""})))}).encode()
    assert len(exact) == 100
    assert (await client.post(url, content=exact, headers=JSON)).status_code == 202
    answer = await chunked(fits)
    assert answer.status_code == 202, answer.text
    assert [m.payload["payload"] for m in await storage.get_messages(run.run_id)] == [
        json.loads(exact),
        json.loads(fits),
    ]


# -- 415 / 400 -------------------------------------------------------------------------------


async def test_not_json_content_types_are_415(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    url = f"{server.url}/{run.token}"
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data"):
        await refused(
            run,
            lambda media=media: client.post(url, content=b'{"a": 1}', headers={"content-type": media}),
            415,
            "application/json",
            media,
        )
    answer = await refused(run, lambda: client.post(url, content=b'{"a": 1}'), 415, "no content type")
    assert answer.request.headers.get("content-type") is None


async def test_bodies_that_are_not_json_values_are_400(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    url = f"{server.url}/{run.token}"
    cases = {
        b'{"a": ': "not valid JSON",
        b"": "not valid JSON",
        b"{'a': 1}": "not valid JSON",
        b"\xff\xfe\x00": "not valid JSON",
        b'{"a": NaN}': "NaN is not JSON",
        b"[Infinity]": "Infinity is not JSON",
        b"-Infinity": "-Infinity is not JSON",
        b"1e999": "not finite",  # parses as inf: the value policy refuses it
        b'{"s": "a\\u0000b"}': "NUL character",
        b'["\\ud800"]': "lone surrogate",
        b"[" * 5000 + b"]" * 5000: "not valid JSON: it is nested too deeply",  # deeper than the parser goes
        b"[" * 600 + b"]" * 600: "cannot be encoded",  # parses; deeper than a value may be
    }
    for body, words in cases.items():
        await refused(run, lambda body=body: client.post(url, content=body, headers=JSON), 400, words)


# -- 401 -------------------------------------------------------------------------------------


async def test_a_webhook_with_a_secret_needs_the_signature(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    secret = "whsec_" + uuid.uuid4().hex
    run = await start_run(storage, paid, secret)
    url = f"{server.url}/{run.token}"
    body = json.dumps({"event": "payment.succeeded", "id": "evt_1"}).encode()
    good = webhooks.signature(secret, body)
    assert good.startswith("sha256=") and len(good) == len("sha256=") + 64

    wrong = {
        "missing": {},
        "empty": {webhooks.SIGNATURE_HEADER: ""},
        "another secret": {webhooks.SIGNATURE_HEADER: webhooks.signature(secret + "x", body)},
        "another body": {webhooks.SIGNATURE_HEADER: webhooks.signature(secret, body + b" ")},
        "no scheme": {webhooks.SIGNATURE_HEADER: good.removeprefix("sha256=")},
        "truncated": {webhooks.SIGNATURE_HEADER: good[:-1]},
    }
    for what, headers in wrong.items():
        answer = await refused(
            run,
            lambda headers=headers: client.post(url, content=body, headers={**JSON, **headers}),
            401,
            webhooks.SIGNATURE_HEADER,
            "missing or does not match",
        )
        assert "sha256" not in answer.text, what  # the expected signature is not given away

    answer = await client.post(url, content=body, headers={**JSON, webhooks.SIGNATURE_HEADER: good})
    assert answer.status_code == 202, answer.text
    assert await resumed(run) == json.loads(body)


# -- idempotency, methods ---------------------------------------------------------------------


@ALL_KINDS
async def test_an_idempotency_key_makes_retries_one_signal(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    url = f"{server.url}/{run.token}"
    first = await client.post(url, json={"try": 1}, headers={"Idempotency-Key": "evt_4711"})
    again = await client.post(url, json={"try": 2}, headers={"Idempotency-Key": "evt_4711"})
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["message_id"] == again.json()["message_id"]
    messages = await storage.get_messages(run.run_id, pending_only=False)
    assert [m.payload["payload"] for m in messages] == [{"try": 1}]
    assert await resumed(run) == {"try": 1}


async def test_other_methods_are_405(
    storage: StorageBackend, serve: Callable[..., Server], client: httpx.AsyncClient
) -> None:
    server = serve()
    run = await start_run(storage)
    before = await recorded(run)
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        answer = await client.request(method, f"{server.url}/{run.token}")
        assert answer.status_code == 405, (method, answer.text)
        assert answer.headers["allow"] == "POST"
        assert answer.json() == {"error": f"method {method} is not allowed: a webhook takes POST"}
    answer = await client.post(f"{server.url}/{run.token}/more", json={})  # not a route at all
    assert answer.status_code == 404 and answer.json() == {"error": "Not Found"}
    assert await recorded(run) == before


# -- mounted in FastAPI ------------------------------------------------------------------------


async def test_mounted_in_fastapi_with_the_base_url(
    storage: StorageBackend,
    serve: Callable[..., Server],
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi import FastAPI

    def mount(hooks: Any) -> FastAPI:
        api = FastAPI()

        @api.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        api.mount("/hooks", hooks)
        return api

    server = serve(wrap=mount)
    assert (await client.get(f"{server.url}/health")).json() == {"status": "ok"}
    monkeypatch.setenv(webhooks.BASE_URL_VARIABLE, f"{server.url}/hooks/")  # the trailing slash goes
    run = await start_run(storage)
    assert run.url == f"{server.url}/hooks/{run.token}"

    answer = await client.post(run.url, json={"paid": 12.5})
    assert answer.status_code == 202, answer.text
    assert answer.json()["run_id"] == run.run_id
    assert await resumed(run) == {"paid": 12.5}
    # the refusals are the mounted app's own
    answer = await client.post(run.url, json={"paid": 1})
    assert answer.status_code == 410 and "finished" in answer.json()["error"]
    answer = await client.post(f"{server.url}/hooks/{'0' * 32}.{'A' * 32}", json={})
    assert answer.status_code == 404 and answer.json() == {"error": "no webhook has this token"}


# -- a flood -----------------------------------------------------------------------------------


class SlowStorage:
    """A backend whose ``post_message`` takes 10 ms longer, counting how many deliveries
    are inside it at once: the app's ``max_concurrency`` must bound them."""

    def __init__(self, inner: StorageBackend) -> None:
        self.inner, self.inside, self.most = inner, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def post_message(self, *args: Any, **kwargs: Any) -> str:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await asyncio.sleep(0.01)
            return await self.inner.post_message(*args, **kwargs)
        finally:
            self.inside -= 1


async def test_a_flood_of_posts_is_neither_lost_nor_duplicated(
    storage: StorageBackend, serve: Callable[..., Server]
) -> None:
    n, in_flight, clients = 1000, 100, 10
    proxies: list[SlowStorage] = []
    server = serve(max_concurrency=16, proxy=lambda inner: proxies.append(SlowStorage(inner)) or proxies[-1])
    run = await start_run(storage, flood, n)
    url = f"{server.url}/{run.token}"
    gate = asyncio.Semaphore(in_flight)
    # 100 requests in flight over 10 clients of 10 connections each: one httpx pool of
    # 100 connections costs the client ~10x the CPU per request (the pool scans them all)
    per_client = httpx.Limits(max_connections=in_flight // clients, max_keepalive_connections=in_flight // clients)

    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(httpx.AsyncClient(timeout=60, limits=per_client)) for _ in range(clients)
        ]

        async def post(i: int) -> tuple[int, httpx.Response]:
            async with gate:
                return i, await https[i % clients].post(url, json={"i": i})

        answers = await asyncio.gather(*(post(i) for i in range(n)))

    (slow,) = proxies
    assert 2 <= slow.most <= 16, slow.most  # deliveries overlapped, never more than max_concurrency
    statuses = {answer.status_code for _, answer in answers}
    assert statuses == {202}, [(i, a.status_code, a.text) for i, a in answers if a.status_code != 202][:5]
    ids = [answer.json()["message_id"] for _, answer in answers]
    assert len(set(ids)) == n

    messages = await storage.get_messages(run.run_id, pending_only=False)
    payloads = [m.payload["payload"]["i"] for m in messages]
    assert len(messages) == n and sorted(payloads) == list(range(n)), "lost or duplicated"
    assert {f"{run.run_id}:{m.seq}" for m in messages} == set(ids)
    assert [m.seq for m in messages] == list(range(1, n + 1))

    # one activation takes them all, in the order they arrived
    assert await resumed(run) == [{"i": i} for i in payloads]


# -- bad input -------------------------------------------------------------------------------


def test_app_refuses_bad_options() -> None:
    for options, word in (
        ({"max_body": 0}, "max_body"),
        ({"max_body": -1}, "max_body"),
        ({"max_body": 1.5}, "max_body"),
        ({"max_body": True}, "max_body"),
        ({"max_concurrency": "x"}, "max_concurrency"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": None}, "max_concurrency"),
    ):
        with pytest.raises(ValueError, match=word):
            webhooks.app(**options)


async def test_create_webhook_refuses_a_bad_name_or_secret(storage: StorageBackend) -> None:
    runtime = LocalRuntime(storage)
    for name, secret, error, words in (
        ("", None, "ValueError", ("create_webhook()", "name")),
        (" paid", None, "ValueError", ("create_webhook()", "name")),
        ("a\tb", None, "ValueError", ("create_webhook()", "control characters")),
        ("x" * 256, None, "ValueError", ("create_webhook()", "255")),
        (42, None, "TypeError", ("create_webhook()", "name")),
        ("paid", "", "ValueError", ("create_webhook()", "secret")),
        ("paid", 42, "ValueError", ("create_webhook()", "secret")),
        ("paid", "s" * 1025, "ValueError", ("create_webhook()", "secret", "1024")),
    ):
        run_id = await runtime.start(bad_hook, name, secret)
        record = await storage.get_run(run_id)
        assert record is not None and record.status == RunStatus.FAILED, (name, secret, record)
        assert record.error["type"].endswith(error), (name, secret, record.error)
        for word in words:
            assert word in record.error["message"], (name, secret, word, record.error["message"])
        assert not [e for e in await storage.get_events(run_id) if e.type == "webhook.created"]

    # outside a run, the arguments are checked first, then where it is called
    with pytest.raises(ValueError, match="secret"):
        await pyworkflow.create_webhook("paid", secret="")
    with pytest.raises(RuntimeError, match="workflow code"):
        await pyworkflow.create_webhook("paid")


async def test_a_bad_base_url_fails_the_run_naming_the_variable(
    storage: StorageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = LocalRuntime(storage)
    for value in ("ftp://x", "example.com/hooks", "https://api.example.com/hooks?x=1", "http:// spaced"):
        monkeypatch.setenv(webhooks.BASE_URL_VARIABLE, value)
        run_id = await runtime.start(paid)
        record = await storage.get_run(run_id)
        assert record is not None and record.status == RunStatus.FAILED, (value, record)
        assert record.error["type"].endswith("ConfigurationError"), record.error
        assert webhooks.BASE_URL_VARIABLE in record.error["message"] and repr(value) in record.error["message"]
        assert not [e for e in await storage.get_events(run_id) if e.type == "webhook.created"]
    monkeypatch.setenv(webhooks.BASE_URL_VARIABLE, "  ")  # blank: no URL, as unset
    run = await start_run(storage)
    assert run.url is None


async def test_a_storage_outage_answers_503_with_retry_after_and_records_nothing(tmp_path: Path) -> None:
    # Providers retry on 5xx: a POST that storage could not take must say so, not 500.
    from pyworkflow.errors import StorageUnavailableError
    from pyworkflow.storage.sqlite import SQLiteStorageBackend

    class Down(SQLiteStorageBackend):
        async def get_events(self, run_id: str, *, after_seq: int = 0, limit: int | None = None) -> Any:
            raise StorageUnavailableError("storage unavailable: connection refused")

    store = Down(str(tmp_path / "down.db"))
    transport = httpx.ASGITransport(app=pyworkflow.webhooks.app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://hooks") as client:
        reply = await client.post("/" + "a" * 32 + "." + "b" * 32, json={"x": 1})
    assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
    assert "retry later" in reply.json()["error"]
    await store.close()
