"""The README's onboarding workflow: a welcome email, a durable wait, a tips email.

Run it on Celery workers (``PYWORKFLOW_IMPORTS=examples.onboarding``); ``make demo`` does
that on one machine with no server at all.
"""

from pyworkflow import current_step, get_logger, sleep, step, workflow

log = get_logger("onboarding")


@step(max_retries=3, retry_delay="exponential")
async def send_welcome_email(user_id: str) -> str:
    info = current_step()
    # the stable key makes the email idempotent at the provider if this step ever re-runs
    key = info.idempotency_key if info else "local"
    log.info("welcome email sent", user_id=user_id, idempotency_key=key)
    return f"welcome:{user_id}"


@step
async def send_tips_email(user_id: str) -> str:
    log.info("tips email sent", user_id=user_id)
    return f"tips:{user_id}"


@workflow(name="onboard_user", max_duration="30d")
async def onboard_user(user_id: str, wait: str = "3d") -> list[str]:
    welcome = await send_welcome_email(user_id)
    await sleep(wait)  # no worker is held while the run waits
    tips = await send_tips_email(user_id)
    return [welcome, tips]
