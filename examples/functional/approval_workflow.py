"""An expense approval: the run hands a manager a webhook URL and waits up to three days
for the answer, holding no worker; no answer in time escalates the expense.

python examples/functional/approval_workflow.py

Runs in-process on a virtual clock (the three days take milliseconds). The manager's
click is a JSON POST to the webhook URL, sent here to ``pyworkflow.webhooks.app()``
in-process; in production the same app is mounted in your web server
(``api.mount("/hooks", pyworkflow.webhooks.app())``) and Celery workers run the workflow.
"""

import asyncio
import os
import tempfile

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

import pyworkflow.webhooks
from pyworkflow import create_webhook, get_state_async, set_state, step, wait_for_signal, workflow
from pyworkflow.storage.sqlite import SQLiteStorageBackend
from pyworkflow.testing import LocalRuntime, VirtualClock

os.environ.setdefault("PYWORKFLOW_WEBHOOK_BASE_URL", "https://expenses.example.com/hooks")
outbox: list[str] = []


@step
async def ask_manager(expense_id: str, url: str | None) -> None:
    outbox.append(f"Approve expense {expense_id}? POST your answer to {url}")


@step
async def pay(expense_id: str, amount: float) -> str:
    return f"paid-{expense_id}"


@step
async def escalate(expense_id: str) -> None:
    outbox.append(f"Expense {expense_id}: no answer in 3 days, escalated to finance")


@workflow(name="expense_approval")
async def expense_approval(expense_id: str, amount: float) -> dict[str, object]:
    hook = await create_webhook("decision")
    set_state("stage", "waiting for the manager")
    await ask_manager(expense_id, hook.url)
    answer = await wait_for_signal("decision", timeout="3d", default=None)
    if answer is None:
        set_state("stage", "escalated")
        await escalate(expense_id)
        return {"expense": expense_id, "status": "escalated"}
    if not answer.get("approved"):
        set_state("stage", "rejected")
        return {"expense": expense_id, "status": "rejected", "by": answer.get("by")}
    set_state("stage", "paying")
    receipt = await pay(expense_id, amount)
    return {"expense": expense_id, "status": "paid", "by": answer.get("by"), "receipt": receipt}


async def main() -> None:
    storage = SQLiteStorageBackend(os.path.join(tempfile.mkdtemp(), "expenses.db"))
    runtime = LocalRuntime(storage, clock=VirtualClock())
    # Your web app, with the webhooks endpoint mounted where PYWORKFLOW_WEBHOOK_BASE_URL says.
    web = Starlette(routes=[Mount("/hooks", app=pyworkflow.webhooks.app(storage))])
    hooks = httpx.AsyncClient(transport=httpx.ASGITransport(app=web))

    # 1. The manager approves: the POST to the webhook URL resumes the run.
    approved = await runtime.start(expense_approval, "EXP-1", 120.0)
    print(await get_state_async(approved, "stage", storage=storage), "|", outbox[-1])
    url = outbox[-1].rsplit(" ", 1)[1]
    reply = await hooks.post(url, json={"approved": True, "by": "maria"})
    print("webhook answered", reply.status_code, reply.json()["signal"])
    run = await runtime.run_until_complete(approved)
    print(run.result)
    assert run.result == {"expense": "EXP-1", "status": "paid", "by": "maria", "receipt": "paid-EXP-1"}
    late = await hooks.post(url, json={"approved": False})
    assert late.status_code == 410  # the run has finished: no more answers

    # 2. Nobody answers: three (virtual) days later the run escalates.
    silent = await runtime.start(expense_approval, "EXP-2", 9000.0)
    run = await runtime.run_until_complete(silent)
    print(run.result, "|", outbox[-1])
    assert run.result == {"expense": "EXP-2", "status": "escalated"}
    assert await get_state_async(silent, "stage", storage=storage) == "escalated"
    await hooks.aclose()
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main())
