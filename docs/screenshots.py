"""Screenshots of the dashboard's main pages, written as PNG files next to this script.

    .venv/bin/python docs/screenshots.py            # docs/dashboard-*.png

A fresh SQLite store gets runs of every shape (the test workflows of
``tests/dashboard/workflows.py``, on a virtual clock so steps take seconds and a sleep
a minute), the dashboard serves it on a free port of 127.0.0.1, and headless Chromium
(Debian's ``chromium``, driven by Playwright) opens the runs list, a run's page and the
schedules page.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from pyworkflow.clock import utcnow  # noqa: E402
from pyworkflow.dashboard import create_app  # noqa: E402
from pyworkflow.storage.sqlite import SQLiteStorageBackend  # noqa: E402
from tests.asgi_server import Server  # noqa: E402
from tests.dashboard import workflows  # noqa: E402
from tests.dashboard.workflows import populate  # noqa: E402

CHROMIUM = os.environ.get("PYWORKFLOW_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
OUT = Path(__file__).resolve().parent


async def fill(path: Path) -> dict[str, str]:
    storage = SQLiteStorageBackend(path)
    try:
        now = utcnow()
        for hours in (5, 4, 3, 2):  # a busier list: the same runs started every hour
            ids = await populate(storage, realistic=True, start=now - timedelta(hours=hours, minutes=17))
        await schedules(storage)
        return ids
    finally:
        await storage.close()


async def schedules(storage: SQLiteStorageBackend) -> None:
    """A few schedules, when this version has them (the page says so otherwise)."""
    import pyworkflow

    create = getattr(pyworkflow, "create_schedule_async", None)
    if create is None:
        return
    await create(
        "nightly-orders", workflows.order, cron="0 3 * * *", timezone="Europe/Berlin", args=("N",), storage=storage
    )
    await create("approvals-reminder", workflows.approval, every="15m", args=("R",), storage=storage)
    await create("warehouse-audit", workflows.explode, cron="30 6 * * 1", args=("audit",), storage=storage)
    pause = getattr(pyworkflow, "pause_schedule_async", None)
    if pause is not None:
        await pause("warehouse-audit", storage=storage)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pyworkflow-screens-") as tmp:
        path = Path(tmp) / "runs.db"
        ids = asyncio.run(fill(path))
        backend = SQLiteStorageBackend(path)
        server = Server(create_app(storage=backend), [backend]).start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
                shots = [
                    ("dashboard-runs.png", server.url + "/", "[data-testid=runs]"),
                    ("dashboard-run.png", f"{server.url}/runs/{ids['order']}", "[data-testid=timeline]"),
                    ("dashboard-run-waiting.png", f"{server.url}/runs/{ids['approval']}", "[data-testid=timeline]"),
                    ("dashboard-schedules.png", server.url + "/schedules", "main h1"),
                ]
                for name, url, ready in shots:
                    page.goto(url)
                    page.wait_for_selector(ready)
                    if name == "dashboard-runs.png":
                        page.wait_for_selector("[data-counts=total]:not(.muted)")
                    page.screenshot(path=str(OUT / name), full_page=True)
                    print(f"wrote {OUT / name}")
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
