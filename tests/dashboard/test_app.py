"""The dashboard's pages and actions over a store of real runs: what each page shows,
filters and keyset pages, and bad input on every endpoint (400 naming the parameter, 403
without the CSRF token, 404 for an unknown run, 409 for an action the run refuses).
Every refused action is checked to have recorded nothing."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from pyworkflow.clock import VirtualClock
from pyworkflow.dashboard import create_app
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import RunStatus
from tests.dashboard.conftest import Store, client_of
from tests.dashboard.workflows import order

CSRF = "pyworkflow_dashboard_csrf"


def run_ids_on(page: str) -> list[str]:
    return re.findall(r'data-run="([^"]+)"', page)


async def csrf_token(client: httpx.AsyncClient, run_id: str) -> str:
    page = await client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the run page has no CSRF field"
    assert client.cookies.get(CSRF) == found.group(1)
    return found.group(1)


async def inbox(store: Store, run_id: str) -> list[tuple[Any, ...]]:
    return [(m.seq, m.kind, m.payload) for m in await store.storage.get_messages(run_id, pending_only=False)]


# -- the runs list -----------------------------------------------------------------------------


async def test_the_list_shows_every_run_newest_first(client: httpx.AsyncClient, store: Store) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    shown = run_ids_on(page.text)
    everything = await store.storage.list_runs(limit=100)
    assert shown == [r.run_id for r in everything.runs]
    assert set(store.ids.values()) <= set(shown)
    assert "text/html" in page.headers["content-type"]


async def test_filters_by_status_workflow_and_since(client: httpx.AsyncClient, store: Store) -> None:
    failed = await client.get("/", params={"status": "failed"})
    assert run_ids_on(failed.text) == [store.ids["explode"]]
    orders = await client.get("/", params={"workflow": "dash.order"})
    assert run_ids_on(orders.text) == [store.ids["order"]]
    both = await client.get("/", params={"workflow": "dash.order", "status": "failed"})
    assert run_ids_on(both.text) == [] and 'data-testid="no-runs"' in both.text
    recent = await client.get("/", params={"since": "1h"})
    assert set(store.ids.values()) <= set(run_ids_on(recent.text))
    future = await client.get("/", params={"since": "2999-01-01T00:00:00"})
    assert run_ids_on(future.text) == []
    upper = await client.get("/", params={"status": "SUSPENDED"})
    assert run_ids_on(upper.text) == [store.ids["approval"]]


async def test_keyset_pages_cover_every_run_once(client: httpx.AsyncClient, store: Store) -> None:
    seen: list[str] = []
    url: str | None = "/?limit=2"
    pages = 0
    while url is not None:
        page = await client.get(url)
        assert page.status_code == 200
        ids = run_ids_on(page.text)
        assert 1 <= len(ids) <= 2
        seen += ids
        pages += 1
        found = re.search(r'href="([^"]+)" rel="next"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    everything = await store.storage.list_runs(limit=100)
    assert seen == [r.run_id for r in everything.runs]
    assert pages == -(-len(seen) // 2)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2h later"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"workflow": "w" * 300}, "workflow"),
        ({"workflow": "a\x01b"}, "workflow"),
        ({"q": "x" * 300}, "q"),
    ],
)
async def test_a_bad_filter_is_400_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], named: str
) -> None:
    page = await client.get("/", params=params)
    assert page.status_code == 400, page.text
    problem = re.search(r'data-testid="problem">([^<]*)<', page.text)
    assert problem and f"parameter &#39;{named}&#39;" in problem.group(1), page.text


async def test_search_by_run_id_opens_the_run(client: httpx.AsyncClient, store: Store) -> None:
    found = await client.get("/", params={"q": store.ids["order"]})
    assert found.status_code == 303
    assert found.headers["location"].endswith(f"/runs/{store.ids['order']}")
    missing = await client.get("/", params={"q": "no-such-run"})
    assert missing.status_code == 404 and "no run &#39;no-such-run&#39;" in missing.text


async def test_counts_by_status_and_workflow(client: httpx.AsyncClient, store: Store) -> None:
    counts = (await client.get("/api/counts")).json()
    everything = (await store.storage.list_runs(limit=100)).runs
    assert counts["total"] == len(everything)
    assert counts["by_status"]["failed"] == 1 and counts["by_status"]["suspended"] == 1
    assert counts["by_status"]["completed"] == len(everything) - 2
    assert counts["by_workflow"]["dash.child"] == 2 and counts["by_workflow"]["dash.order"] == 1
    assert list(counts["by_status"]) == [s.value for s in RunStatus]
    assert list(counts["by_workflow"].values()) == sorted(counts["by_workflow"].values(), reverse=True)
    assert set(counts) == {"total", "by_status", "by_workflow", "counted_at"}


async def test_counts_are_one_storage_count_reused_for_their_ttl(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.dashboard import app as dashboard_app

    calls: list[object] = []
    count_runs = store.storage.count_runs

    async def counting(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return await count_runs(**kwargs)

    async def no_paging(**kwargs: Any) -> Any:
        raise AssertionError("the counts page through list_runs")

    monkeypatch.setattr(store.storage, "count_runs", counting)
    monkeypatch.setattr(store.storage, "list_runs", no_paging)
    async with client_of(create_app(storage=store.storage)) as http:
        first = (await http.get("/api/counts")).json()
        assert (await http.get("/api/counts")).json() == first  # from the cache
        assert calls == [{}]
        monkeypatch.setattr(dashboard_app, "COUNTS_TTL", 0.0)
        again = (await http.get("/api/counts")).json()
        assert len(calls) == 2 and again["total"] == first["total"]


# -- a run's page ---------------------------------------------------------------------------------


async def test_a_completed_run_shows_its_result_state_and_timeline(client: httpx.AsyncClient, store: Store) -> None:
    page = await client.get(f"/runs/{store.ids['order']}")
    assert page.status_code == 200
    text = page.text
    assert 'data-testid="status">completed<' in text
    assert "parcel-ORD-1" in text and "ORD-1" in text  # result and input
    assert "&#34;done&#34;" in text  # the published state "stage"
    charge = re.search(
        r'<div class="row" data-kind="step" data-state="completed">\s*'
        r'<div class="label"[^>]*>.*?dash\.charge(.*?)</div>\s*</div>',
        text,
        re.S,
    )
    assert charge is not None, "no row for dash.charge"
    bars = re.findall(r'data-bar="(\w+)"', charge.group(1))
    assert bars == ["attempt", "backoff", "attempt", "backoff", "attempt"]
    assert 'data-kind="sleep"' in text and 'data-kind="activations"' in text


async def test_a_failed_run_shows_its_error_and_traceback(client: httpx.AsyncClient, store: Store) -> None:
    page = await client.get(f"/runs/{store.ids['explode']}")
    assert 'data-testid="status">failed<' in page.text
    assert "ValueError: the warehouse is on fire" in page.text
    assert 'data-testid="traceback">Traceback' in page.text
    assert 'data-testid="retry"' in page.text and 'data-testid="cancel"' not in page.text


async def test_a_parent_links_its_children(client: httpx.AsyncClient, store: Store) -> None:
    page = await client.get(f"/runs/{store.ids['parent']}")
    children = re.findall(r'data-kind="child"', page.text)
    assert len(children) == 2
    child_ids = re.findall(r'<a class="mono" href="[^"]*/runs/([0-9a-f]+)">dash\.child</a>', page.text)
    assert len(child_ids) == 2
    child = await client.get(f"/runs/{child_ids[0]}")
    assert child.status_code == 200 and store.ids["parent"] in child.text  # the parent link


async def test_unknown_runs_are_404_on_every_run_endpoint(client: httpx.AsyncClient) -> None:
    for path in ("/runs/nope", "/runs/nope/live", "/runs/nope/events", "/runs/" + "z" * 300):
        page = await client.get(path)
        assert page.status_code == 404, path
        assert "Run not found" in page.text
    poll = await client.get("/runs/nope/poll")
    assert poll.status_code == 404 and poll.json() == {"error": "no run 'nope'"}
    assert (await client.get("/no/such/page")).status_code == 404


async def test_poll_live_and_events(client: httpx.AsyncClient, store: Store) -> None:
    run_id = store.ids["order"]
    events = await store.storage.get_events(run_id)
    poll = (await client.get(f"/runs/{run_id}/poll")).json()
    assert poll == {"status": "completed", "last_seq": events[-1].seq, "terminal": True}
    assert (await client.get(f"/runs/{run_id}/poll", params={"after": events[-1].seq})).json()["last_seq"] == events[
        -1
    ].seq
    bad = await client.get(f"/runs/{run_id}/poll", params={"after": "-1"})
    assert bad.status_code == 400 and "after" in bad.json()["error"]
    live = await client.get(f"/runs/{run_id}/live")
    assert live.status_code == 200 and "<html" not in live.text and 'data-testid="timeline"' in live.text
    log = await client.get(f"/runs/{run_id}/events", params={"limit": 5})
    assert re.findall(r'<tr><td class="mono">(\d+)</td>', log.text) == ["1", "2", "3", "4", "5"]
    nxt = re.search(r'href="([^"]+)" rel="next"', log.text)
    assert nxt is not None and "after=5" in nxt.group(1)
    for params in ({"limit": "0"}, {"after": "x"}):
        page = await client.get(f"/runs/{run_id}/events", params=params)
        assert page.status_code == 400 and list(params)[0] in page.text


# -- actions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["cancel", "retry", "signal", "pause", "unpause"])
async def test_an_action_without_its_csrf_token_is_403_and_records_nothing(
    client: httpx.AsyncClient, store: Store, action: str
) -> None:
    run_id = store.ids["approval"] if action != "retry" else store.ids["explode"]
    before = (await inbox(store, run_id), await store.storage.get_events(run_id))
    form = {"name": "approve", "payload": "1"}
    no_cookie = await client.post(f"/runs/{run_id}/{action}", data={**form, "csrf_token": "forged"})
    assert no_cookie.status_code == 403 and "CSRF" in no_cookie.text
    token = await csrf_token(client, run_id)
    missing = await client.post(f"/runs/{run_id}/{action}", data=form)
    assert missing.status_code == 403
    wrong = await client.post(f"/runs/{run_id}/{action}", data={**form, "csrf_token": token[:-2] + "xx"})
    assert wrong.status_code == 403
    assert (await inbox(store, run_id), await store.storage.get_events(run_id)) == before


async def test_cancel_through_the_form_cancels_the_run(client: httpx.AsyncClient, store: Store) -> None:
    run_id = store.ids["approval"]
    token = await csrf_token(client, run_id)
    done = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token, "reason": "customer left"})
    assert done.status_code == 303 and done.headers["location"].endswith(f"/runs/{run_id}?notice=cancelled")
    assert (await inbox(store, run_id))[-1] == (1, "cancel", {"reason": "customer left"})
    await LocalRuntime(store.storage).resume(run_id)
    page = await client.get(f"/runs/{run_id}")
    assert 'data-testid="status">cancelled<' in page.text
    assert 'data-marker="cancel"' in page.text
    again = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token})
    assert again.status_code == 303 and again.headers["location"].endswith("notice=cancel-finished")


async def test_a_bad_cancellation_reason_is_400_and_records_nothing(client: httpx.AsyncClient, store: Store) -> None:
    run_id = store.ids["approval"]
    token = await csrf_token(client, run_id)
    for reason in ("r" * 256, "left\x07", "two\nlines"):
        refused = await client.post(f"/runs/{run_id}/cancel", data={"csrf_token": token, "reason": reason})
        assert refused.status_code == 400 and "reason" in refused.text, reason
    assert await inbox(store, run_id) == []


async def test_pause_and_unpause_through_the_form(client: httpx.AsyncClient, store: Store) -> None:
    clock = VirtualClock()
    runtime = LocalRuntime(store.storage, clock=clock)
    run_id = await runtime.start(order, "ORD-P", pause="1m")  # runs to its sleep
    token = await csrf_token(client, run_id)
    page = await client.get(f"/runs/{run_id}")
    assert 'data-testid="pause"' in page.text and 'data-testid="unpause"' not in page.text
    paused = await client.post(f"/runs/{run_id}/pause", data={"csrf_token": token})
    assert paused.status_code == 303 and paused.headers["location"].endswith(f"/runs/{run_id}?notice=paused")
    assert [kind for _, kind, _ in await inbox(store, run_id)] == ["pause"]
    clock.advance(60)
    await runtime.resume(run_id)  # the sleep ends; the next step does not start
    record = await store.storage.get_run(run_id)
    assert record is not None and record.status == RunStatus.PAUSED
    page = await client.get(f"/runs/{run_id}")
    assert 'data-testid="unpause"' in page.text and 'data-testid="pause"' not in page.text
    assert 'data-testid="cancel"' in page.text  # a paused run can be cancelled
    unpaused = await client.post(f"/runs/{run_id}/unpause", data={"csrf_token": token})
    assert unpaused.status_code == 303 and unpaused.headers["location"].endswith("notice=unpaused")
    await runtime.resume(run_id)
    record = await store.storage.get_run(run_id)
    assert record is not None and record.status == RunStatus.COMPLETED
    finished = store.ids["order"]
    for action in ("pause", "unpause"):
        done = await client.post(f"/runs/{finished}/{action}", data={"csrf_token": token})
        assert done.status_code == 303 and done.headers["location"].endswith("notice=pause-finished"), action


async def test_retry_through_the_form(client: httpx.AsyncClient, store: Store) -> None:
    run_id = store.ids["explode"]
    token = await csrf_token(client, run_id)
    done = await client.post(f"/runs/{run_id}/retry", data={"csrf_token": token})
    assert done.status_code == 303
    record = await store.storage.get_run(run_id)
    assert record is not None and record.status == RunStatus.SUSPENDED
    refused = await client.post(f"/runs/{store.ids['order']}/retry", data={"csrf_token": token})
    assert refused.status_code == 409 and "only a failed or blocked run can be retried" in refused.text


async def test_signal_through_the_form(client: httpx.AsyncClient, store: Store) -> None:
    run_id = store.ids["approval"]
    token = await csrf_token(client, run_id)
    for form, named in (
        ({"name": "", "payload": "1"}, "name"),
        ({"name": "approve", "payload": "{not json"}, "payload"),
        ({"name": " approve\x01", "payload": "1"}, "name"),
        ({"name": "approve", "payload": "1", "idempotency_key": "k" * 400}, "idempotency_key"),
    ):
        refused = await client.post(f"/runs/{run_id}/signal", data={**form, "csrf_token": token})
        assert refused.status_code == 400 and named in refused.text, (form, refused.text)
    assert await inbox(store, run_id) == []
    sent = await client.post(
        f"/runs/{run_id}/signal", data={"csrf_token": token, "name": "approve", "payload": '{"ok": true}'}
    )
    assert sent.status_code == 303 and sent.headers["location"].endswith("notice=signalled")
    assert await inbox(store, run_id) == [(1, "signal", {"name": "approve", "payload": {"ok": True}})]
    run = await LocalRuntime(store.storage).run_until_complete(run_id)
    assert run.status == RunStatus.COMPLETED and run.result == {"order": "ORD-2", "decision": {"ok": True}}
    finished = await client.post(f"/runs/{run_id}/signal", data={"csrf_token": token, "name": "approve"})
    assert finished.status_code == 409 and "has finished" in finished.text


async def test_actions_on_an_unknown_run_are_404(client: httpx.AsyncClient, store: Store) -> None:
    token = await csrf_token(client, store.ids["order"])
    for action in ("cancel", "retry", "signal", "pause", "unpause"):
        page = await client.post(f"/runs/nope/{action}", data={"csrf_token": token, "name": "x"})
        assert page.status_code == 404, action
    assert (await client.get(f"/runs/{store.ids['order']}/cancel")).status_code == 405
    assert (await client.get(f"/runs/{store.ids['order']}/pause")).status_code == 405


# -- schedules ------------------------------------------------------------------------------------


async def test_schedules_page_without_schedules_in_this_version(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyworkflow.cli import features
    from pyworkflow.cli.context import NotAvailableError

    def missing(key: str) -> Any:
        raise NotAvailableError("schedules (pyworkflow.list_schedules)")

    monkeypatch.setattr(features, "lookup", missing)
    page = await client.get("/schedules")
    assert page.status_code == 200
    assert "Schedules are not available in this version of pyworkflow." in page.text


async def test_schedules_page_lists_schedules(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.cli import features

    seen: dict[str, Any] = {}

    async def list_schedules(**kwargs: Any) -> list[dict[str, Any]]:
        seen.update(kwargs)
        return [{"schedule_id": "nightly", "workflow": "dash.order", "cron": "0 3 * * *", "paused": False}]

    monkeypatch.setattr(features, "lookup", lambda key: list_schedules)
    page = await client.get("/schedules")
    assert page.status_code == 200 and "nightly" in page.text and "0 3 * * *" in page.text
    assert "storage" in seen


# -- mounted in another app ------------------------------------------------------------------------


async def test_mounted_under_a_path(store: Store) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/ops", app=create_app(storage=store.storage))])
    async with client_of(outer) as http:
        page = await http.get("/ops/")
        assert page.status_code == 200
        links = re.findall(r'href="([^"]+)" data-run=', page.text)
        assert links and all(link.startswith(f"{http.base_url}/ops/runs/") for link in links)
        run_id = store.ids["approval"]
        run = await http.get(f"/ops/runs/{run_id}")
        assert f'action="{http.base_url}/ops/runs/{run_id}/cancel"' in run.text
        cookie = page.headers["set-cookie"]  # set by the first page seen
        assert "Path=/ops" in cookie and "SameSite=strict" in cookie and "HttpOnly" in cookie
        token = re.search(r'name="csrf_token" value="([^"]+)"', run.text)
        assert token is not None
        done = await http.post(f"/ops/runs/{run_id}/cancel", data={"csrf_token": token.group(1)})
        assert done.status_code == 303 and done.headers["location"].startswith(f"{http.base_url}/ops/runs/")


async def test_schedules_page_with_the_real_functions(client: httpx.AsyncClient, store: Store) -> None:
    import pyworkflow
    from tests.dashboard import workflows

    create = getattr(pyworkflow, "create_schedule_async", None)
    if create is None:
        pytest.skip("this version has no schedules")
    await create("nightly-orders", workflows.order, cron="0 3 * * *", args=("N-1",), storage=store.storage)
    await create("poll", workflows.explode, every="5m", args=("x",), storage=store.storage)
    page = await client.get("/schedules")
    assert page.status_code == 200
    rows = re.findall(r'<tr data-schedule="([^"]+)">', page.text)
    assert rows == ["nightly-orders", "poll"]
    assert "0 3 * * *" in page.text and "every 5m" in page.text


async def test_a_continued_run_links_the_next_one(client: httpx.AsyncClient, store: Store) -> None:
    from tests.dashboard import workflows

    runtime = LocalRuntime(store.storage)
    first = await runtime.start(workflows.countdown, 1)
    await runtime.run_until_complete(first)
    page = await client.get(f"/runs/{first}")
    assert 'data-testid="status">continued<' in page.text
    found = re.search(r'data-testid="continued-as">([^<]+)<', page.text)
    assert found is not None
    after = await client.get(f"/runs/{found.group(1)}")
    assert 'data-testid="status">completed<' in after.text and f">{first}</a>" in after.text


async def test_a_long_log_is_read_once_then_only_what_is_new(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.clock import utcnow
    from pyworkflow.dashboard import app as dashboard_app
    from pyworkflow.events import new_event

    run_id = store.ids["approval"]  # suspended: its log may grow
    log = await store.storage.get_events(run_id)

    async def append(n: int) -> None:
        seq = (await store.storage.get_events(run_id))[-1].seq
        batch = [new_event(seq + i + 1, "log.info", utcnow(), {"message": f"line {i}", "fields": {}}) for i in range(n)]
        await store.storage.append_events(run_id, batch)

    await append(dashboard_app.CACHE_FROM_EVENTS - len(log))
    app = create_app(storage=store.storage)
    reads: list[int] = []
    real = store.storage.get_events

    async def counting(run: str, *, after_seq: int = 0, limit: int | None = None) -> Any:
        found = await real(run, after_seq=after_seq, limit=limit)
        reads.append(len(found))
        return found

    monkeypatch.setattr(store.storage, "get_events", counting)
    async with client_of(app) as http:
        first = await http.get(f"/runs/{run_id}")
        assert f"<dd>{dashboard_app.CACHE_FROM_EVENTS} ·" in first.text
        await append(3)
        second = await http.get(f"/runs/{run_id}")
        assert f"<dd>{dashboard_app.CACHE_FROM_EVENTS + 3} ·" in second.text
        assert reads[0] == dashboard_app.CACHE_FROM_EVENTS and reads[-1] == 3  # only the new ones
        monkeypatch.setattr(dashboard_app, "MAX_CACHED_EVENTS", 10)
        app.state.dashboard.forget_events()
        await http.get(f"/runs/{run_id}")
        assert app.state.dashboard._cached == 0  # too long to keep under this bound


async def test_storage_failures_are_pages_not_tracebacks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyworkflow.errors import CorruptedStorageError, StorageUnavailableError

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailableError("connection refused")

    async def damaged(run_id: str) -> Any:
        raise CorruptedStorageError(f"run {run_id!r}: the record is not JSON", run_id=run_id)

    async with client_of(create_app(storage=store.storage)) as http:
        monkeypatch.setattr(store.storage, "list_runs", down)
        monkeypatch.setattr(store.storage, "count_runs", down)
        page = await http.get("/")
        assert page.status_code == 503 and "storage is unavailable" in page.text
        counts = await http.get("/api/counts")
        assert counts.status_code == 503 and "storage is unavailable" in counts.json()["error"]
        monkeypatch.setattr(store.storage, "get_run", damaged)
        run = await http.get(f"/runs/{store.ids['order']}")
        assert run.status_code == 500 and "the record is not JSON" in run.text
