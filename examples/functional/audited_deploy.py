"""Two things operators ask for, in one script: an interceptor that audits every step
attempt (the hook OpenTelemetry and Prometheus support are built on), and a deploy check:
a run's exported history replayed against changed code, which a ``patched()`` guard keeps
compatible and an unguarded change does not.

python examples/functional/audited_deploy.py
"""

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pyworkflow import Interceptor, NonDeterminismError, add_interceptor, patched, sleep, step, workflow
from pyworkflow.interceptors import StepAttemptInfo
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock, export_run, replay


class Audit(Interceptor):
    """Prints each step attempt once: replays of the workflow run no hook."""

    async def step(self, info: StepAttemptInfo, proceed: Any) -> Any:
        began = time.perf_counter()
        try:
            return await proceed()
        finally:
            took = (time.perf_counter() - began) * 1000
            print(f"audit: {info.run.workflow} {info.step} attempt {info.attempt} took {took:.2f} ms")


@step
async def charge(order_id: str) -> str:
    return f"charged-{order_id}"


@step
async def send_receipt(order_id: str) -> None:
    return None


@workflow(name="checkout")
async def checkout(order_id: str) -> str:
    payment = await charge(order_id)
    await sleep("1d")
    return payment


# Release 2 of the same workflow, as a deploy would bring it. (Both live in this one file
# under other names; the history is replayed as if it were theirs: see renamed().)
@workflow(name="checkout_v2_guarded")
async def checkout_guarded(order_id: str) -> str:
    payment = await charge(order_id)
    if patched("receipt"):  # runs that already passed here keep their old path
        await send_receipt(order_id)
    await sleep("1d")
    return payment


@workflow(name="checkout_v2_unguarded")
async def checkout_unguarded(order_id: str) -> str:
    payment = await charge(order_id)
    await send_receipt(order_id)  # a new call where old runs recorded the sleep
    await sleep("1d")
    return payment


def renamed(document: dict[str, Any], name: str) -> dict[str, Any]:
    """The exported history as if the run were of workflow ``name``."""
    document = json.loads(json.dumps(document, default=str))
    document["run"]["workflow_name"] = name
    document["events"][0]["data"]["workflow"] = name
    return document


async def main() -> None:
    add_interceptor(Audit())
    storage = InMemoryStorageBackend()
    runtime = LocalRuntime(storage, clock=VirtualClock())
    run_id = await runtime.start(checkout, "ORD-7")  # charges, then sleeps a day
    run = await runtime.run_until_complete(run_id)  # the replay after the sleep audits nothing new
    assert run.result == "charged-ORD-7"

    with tempfile.TemporaryDirectory() as folder:
        history = Path(folder) / "checkout-ORD-7.json"  # what `pyworkflow runs export` writes
        history.write_text(json.dumps(await export_run(run_id, storage=storage), default=str))
        document = json.loads(history.read_text())
        ok = await replay(checkout_guarded, renamed(document, "checkout_v2_guarded"))
        print(f"guarded change: replays ({ok.calls} calls)")
        try:
            await replay(checkout_unguarded, renamed(document, "checkout_v2_unguarded"))
        except NonDeterminismError as exc:
            print(f"unguarded change: {exc}")
        else:
            raise AssertionError("the unguarded change should diverge")


if __name__ == "__main__":
    asyncio.run(main())
