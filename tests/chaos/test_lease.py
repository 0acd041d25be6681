"""A lease renewal that fails, and the lease that must survive it: storage unreachable
for less than the lease while long steps run."""

from __future__ import annotations

import time
import uuid

import pytest

from pyworkflow.loop import PROCESS_LOOP
from tests.celery.conftest import wait_until
from tests.chaos import journal
from tests.chaos.conftest import Fleet
from tests.chaos.test_storage_outage import hold_write_lock
from tests.chaos.workflows import expected, steps

LEASE = 8.0  # renewed every 2.7 s
OUTAGE = 3.0  # begins ~0.6 s into the lease: spans its first renewal, ends ~4 s before it could expire
STEP = 8.0  # the step outlives the outage: its activation must keep the lease throughout


def _started(fleet: Fleet, run_id: str) -> bool:
    events = PROCESS_LOOP.run(fleet.store.backend.get_events(run_id))
    return any(e.type == "step.started" for e in events)


@pytest.mark.chaos
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["sqlite-lock", "postgres-refuse", "postgres-blackhole"])
def test_a_failed_lease_renewal_keeps_the_step_in_one_place(fault: str, request: pytest.FixtureRequest) -> None:
    """Long steps are running when storage goes away for 3 s of an 8 s lease: SQLite's
    write lock held past the 0.5 s busy timeout, or every PostgreSQL connection reset
    and new ones refused (or left hanging). At least one renewal fails; it is tried
    again until storage is back, before the lease could expire. So no other activation
    takes the runs over: each step body runs exactly once, never in two places at once,
    and every run completes."""
    kind, _, mode = fault.partition("-")
    fleet: Fleet = request.getfixturevalue(f"{kind}_fleet")
    fleet.env["PYWORKFLOW_LEASE_TTL"] = str(LEASE)
    fleet.env["PYWORKFLOW_CHAOS_SQLITE_BUSY_TIMEOUT"] = "0.5"
    worker = fleet.worker(concurrency=2)
    fleet.beat()
    tag = f"renew-{uuid.uuid4().hex[:6]}"
    runs = {fleet.start(steps, f"{tag}-{i}", 1, STEP, 0): expected(f"{tag}-{i}", 1) for i in range(2)}
    wait_until(lambda: len(journal.running(fleet.journal)) == 2, 30, "both long steps running")
    # Once their step.started is written (0.5 s into a step), the next storage call of
    # each activation is a renewal: the outage meets a renewal first, not an append.
    wait_until(lambda: all(_started(fleet, run_id) for run_id in runs), 30, "both steps recorded as started")
    began = time.monotonic()
    if kind == "sqlite":
        assert fleet.store.path is not None
        hold_write_lock(fleet.store.path, OUTAGE)
    else:
        proxy = fleet.store.proxy
        assert proxy is not None
        proxy.cut(mode)
        time.sleep(OUTAGE)  # the length of the fault, not a synchronisation
        proxy.restore()
    outage = time.monotonic() - began
    summary = fleet.verify(list(runs), timeout=60, reruns_from=(), expected=runs)
    fleet.alive(worker)
    log = worker.log.read_bytes()
    assert b"lease_renew_failed" in log, f"no renewal failed: nothing was tested; see {worker.log}"
    assert b"lease_lost" not in log, f"a lease was lost to an outage shorter than it; see {worker.log}"
    print(f"\n{fault}: storage away {outage:.1f} s, lease {LEASE:g} s; {summary.describe()}")
