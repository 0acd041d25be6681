"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against uvicorn serving a SQLite store of real runs.

A person's path: the runs list → a run waiting for a signal → its timeline → the cancel
button → the page follows the run to ``cancelled`` on its own (polling), with the
cancellation on the timeline. Runs move only when this test activates them (no Celery):
the dashboard records the request, the test plays the worker. Every wait has a deadline;
nothing sleeps for a fixed time. Without chromium the tests skip, or fail when
``PYWORKFLOW_REQUIRE_SERVICES`` is set.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyworkflow.dashboard import create_app
from pyworkflow.local import LocalRuntime
from pyworkflow.storage.base import RunStatus
from pyworkflow.storage.sqlite import SQLiteStorageBackend
from tests import services
from tests.asgi_server import Server
from tests.dashboard.workflows import populate

CHROMIUM = os.environ.get("PYWORKFLOW_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
TIMEOUT_MS = 15_000


def in_thread(coro: Any) -> Any:
    """Run a coroutine to the end on a loop of its own thread (Playwright's sync API holds
    this thread's)."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(60)
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        services.unavailable(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        services.unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Server, Path, dict[str, str]]]:
    path = tmp_path / "runs.db"

    async def fill() -> dict[str, str]:
        storage = SQLiteStorageBackend(path)
        try:
            return await populate(storage)
        finally:
            await storage.close()

    ids = in_thread(fill())
    backend = SQLiteStorageBackend(path)
    server = Server(create_app(storage=backend), [backend]).start()
    yield server, path, ids
    server.stop()


async def drive(path: Path, run_id: str) -> RunStatus:
    """What a worker would do now: activate the run once."""
    storage = SQLiteStorageBackend(path)
    try:
        await LocalRuntime(storage).resume(run_id)
        run = await storage.get_run(run_id)
        assert run is not None
        return run.status
    finally:
        await storage.close()


def test_list_to_run_to_cancel(browser: Any, site: tuple[Server, Path, dict[str, str]]) -> None:
    from playwright.sync_api import expect

    server, path, ids = site
    run_id = ids["approval"]
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this run?"

    page.goto(server.url + "/")
    expect(page.locator("[data-counts=total]")).to_have_text(re.compile(r"^\d+$"))  # counts arrived
    page.click(f"a[data-run='{run_id}']")
    page.wait_for_url(f"**/runs/{run_id}")
    expect(page.get_by_test_id("status")).to_have_text("suspended")

    timeline = page.get_by_test_id("timeline")
    expect(timeline.locator(".row[data-kind=step] .bar.attempt.completed")).to_have_count(1)
    wait = timeline.locator(".row[data-kind=signal] .bar.wait")
    expect(wait).to_have_count(1)
    expect(wait).to_have_class(re.compile(r"\bongoing\b"))
    expect(page.get_by_test_id("state")).to_contain_text("waiting for approval")

    page.get_by_test_id("cancel-reason").fill("customer left")
    page.get_by_test_id("cancel").click()
    page.wait_for_url(re.compile(r"notice=cancelled"))
    expect(page.get_by_test_id("notice")).to_contain_text("Cancellation requested")
    expect(page.get_by_test_id("status")).to_have_text("suspended")  # recorded, not yet taken in

    assert in_thread(drive(path, run_id)) == RunStatus.CANCELLED
    # the page follows the run by itself (it polls every second)
    expect(page.get_by_test_id("status")).to_have_text("cancelled")
    expect(timeline.locator(".marker.cancel")).to_have_count(1)
    expect(wait).to_have_class(re.compile(r"\bcancelled\b"))
    expect(page.get_by_test_id("cancel")).to_have_count(0)
    expect(page.locator("#signal-form")).to_be_hidden()
    expect(page.get_by_test_id("pause")).to_have_count(0)
    page.goto(f"{server.url}/runs/{run_id}/events")  # the reason typed is the one recorded
    expect(page.locator("body")).to_contain_text("customer left")
    assert errors == []
    page.close()


def test_a_completed_run_timeline_and_the_event_log(browser: Any, site: tuple[Server, Path, dict[str, str]]) -> None:
    from playwright.sync_api import expect

    server, _, ids = site
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server.url}/?workflow=dash.order")
    page.click(f"a[data-run='{ids['order']}']")
    expect(page.get_by_test_id("status")).to_have_text("completed")
    charge = page.get_by_test_id("timeline").locator(".row[data-kind=step]", has_text="dash.charge")
    expect(charge.locator(".bar.attempt")).to_have_count(3)
    expect(charge.locator(".bar.attempt.failed")).to_have_count(2)
    expect(charge.locator(".bar.backoff")).to_have_count(2)
    # to scale: each bar's width on screen is its share of the axis
    lane = charge.locator(".lane").bounding_box()
    widths = [b["width"] for b in (bar.bounding_box() for bar in charge.locator(".bar").all()) if b]
    assert lane is not None and 0 < sum(widths) <= lane["width"] + 1
    expect(page.get_by_test_id("result")).to_contain_text("parcel-ORD-1")
    page.get_by_role("link", name="whole log").click()
    expect(page.get_by_test_id("events").locator("tbody tr").first).to_contain_text("workflow.started")
    page.close()


def test_a_signal_sent_from_the_page_completes_the_run(browser: Any, site: tuple[Server, Path, dict[str, str]]) -> None:
    from playwright.sync_api import expect

    server, path, ids = site
    run_id = ids["approval"]
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server.url}/runs/{run_id}")
    page.fill("input[name=name]", "approve")
    page.fill("input[name=payload]", '{"approved": true}')
    page.get_by_role("button", name="Send signal").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Signal sent")
    assert in_thread(drive(path, run_id)) == RunStatus.COMPLETED
    expect(page.get_by_test_id("status")).to_have_text("completed")
    expect(page.get_by_test_id("result")).to_contain_text('"approved": true')
    expect(page.get_by_test_id("timeline").locator(".marker.signal")).to_have_count(1)
    page.close()
