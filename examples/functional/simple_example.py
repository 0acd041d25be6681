"""A workflow that sleeps: the run suspends, holds nothing, and resumes after the wake time.

python examples/functional/simple_example.py
"""

import asyncio
import tempfile

from pyworkflow import get_logger, sleep, step, workflow
from pyworkflow.storage.file import FileStorageBackend
from pyworkflow.testing import resume_local, start_local

log = get_logger("example")


@step
async def send_welcome_email(user_id: str) -> str:
    log.info("sending welcome email", user_id=user_id)
    return f"welcome-sent:{user_id}"


@step
async def send_tips_email(user_id: str) -> str:
    log.info("sending tips email", user_id=user_id)
    return f"tips-sent:{user_id}"


@workflow(name="onboard_user")
async def onboard_user(user_id: str) -> list[str]:
    welcome = await send_welcome_email(user_id)
    await sleep("1s")  # "3d" in production: the run holds no worker meanwhile
    tips = await send_tips_email(user_id)
    return [welcome, tips]


async def main() -> None:
    with tempfile.TemporaryDirectory() as data:
        storage = FileStorageBackend(data)
        run_id = await start_local(onboard_user, "user-42", storage=storage, idempotency_key="onboard-user-42")
        run = await storage.get_run(run_id)
        assert run is not None
        print(f"after start: {run.status}, wakes at {run.wake_at}")
        while run.status == "suspended":
            await asyncio.sleep(0.2)
            run = await resume_local(run_id, storage=storage)
            assert run is not None
        print(f"finished: {run.status} -> {run.result}")
        assert run.result == ["welcome-sent:user-42", "tips-sent:user-42"]


if __name__ == "__main__":
    asyncio.run(main())
