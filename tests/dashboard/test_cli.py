"""``pyworkflow dashboard`` as a subprocess: it serves the store the global ``--storage``
names, refuses a non-loopback address without an access token, and says in one line
what is missing (the store, the ``web`` extra)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.cli.conftest import BIN, ROOT, cli_env, one_line_error, pyworkflow
from tests.dashboard.conftest import Store

TOKEN = "a-token-long-enough-for-the-tests"


def test_a_non_loopback_address_without_a_token_is_refused(store: Store) -> None:
    for host in ("0.0.0.0", "::", "10.0.0.1"):
        line = one_line_error(pyworkflow("--storage", store.url, "dashboard", "--host", host, "--port", "0"), 2)
        assert f"refusing to serve the dashboard on {host}" in line and "PYWORKFLOW_DASHBOARD_TOKEN" in line


def test_a_short_token_is_refused(store: Store) -> None:
    env = cli_env(PYWORKFLOW_DASHBOARD_TOKEN="short")
    line = one_line_error(pyworkflow("--storage", store.url, "dashboard", "--host", "0.0.0.0", env=env), 2)
    assert "at least 16" in line


def test_a_missing_store_is_one_line(tmp_path: object) -> None:
    line = one_line_error(pyworkflow("--storage", "sqlite:////nonexistent/dir/runs.db", "dashboard", "--port", "0"), 1)
    assert "no database file" in line


def test_a_bad_port_is_a_usage_error(store: Store) -> None:
    line = one_line_error(pyworkflow("--storage", store.url, "dashboard", "--port", "70000"), 2)
    assert "--port" in line


def test_without_the_web_extra_it_says_how_to_install_it(store: Store) -> None:
    code = (
        "import sys; sys.modules['jinja2'] = None\n"
        "from pyworkflow.cli import main\n"
        f"sys.exit(main(['--storage', {store.url!r}, 'dashboard', '--port', '0']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    line = one_line_error(done, 1)
    assert "jinja2 is not installed" in line and "pip install 'pyworkflow-celery[web]'" in line


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``pyworkflow ... dashboard`` running; yields its URL (from the line it prints)."""
    assert BIN is not None
    with subprocess.Popen(
        [BIN, *args], env=env or cli_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stderr, selectors.EVENT_READ)
                deadline = time.monotonic() + 30
                line = ""
                while "serving" not in line:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(f"the dashboard did not start: {line!r} (exit {proc.poll()})")
                    if selector.select(timeout=0.5):
                        line = proc.stderr.readline()
            found = re.search(r"at (http://\S+/)", line)
            assert found, line
            yield found.group(1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.communicate()


def test_it_serves_the_store_on_loopback(store: Store) -> None:
    with serving("--storage", store.url, "dashboard", "--port", "0") as url:
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and store.ids["order"] in page.text
        rebound = httpx.get(url, headers={"Host": "evil.example"}, timeout=30)
        assert rebound.status_code == 400


def test_the_storage_comes_from_the_environment(store: Store) -> None:
    env = cli_env(PYWORKFLOW_STORAGE_URL=store.url)
    with serving("dashboard", "--port", "0", env=env) as url:
        assert store.ids["explode"] in httpx.get(url, params={"status": "failed"}, timeout=30).text


def test_with_a_token_it_binds_any_address(store: Store) -> None:
    env = cli_env(PYWORKFLOW_DASHBOARD_TOKEN=TOKEN)
    with serving("--storage", store.url, "dashboard", "--host", "0.0.0.0", "--port", "0", env=env) as url:
        local = url.replace("0.0.0.0", "127.0.0.1")
        assert httpx.get(local, timeout=30).status_code == 401
        page = httpx.get(local, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert page.status_code == 200 and store.ids["order"] in page.text


def test_a_port_in_use_is_one_line(store: Store) -> None:
    with serving("--storage", store.url, "dashboard", "--port", "0") as url:
        port = url.rsplit(":", 1)[1].strip("/")
        line = one_line_error(pyworkflow("--storage", store.url, "dashboard", "--port", port), 1)
        assert f"cannot listen on 127.0.0.1:{port}" in line


def test_the_command_is_listed() -> None:
    done = pyworkflow("--help")
    assert done.returncode == 0 and "dashboard" in done.stdout
    assert os.path.exists(str(BIN))
