"""Runtime settings, from ``PYWORKFLOW_*`` environment variables.

==================================  ===============================  =====================
variable                            meaning                          default
==================================  ===============================  =====================
``PYWORKFLOW_BROKER_URL``           Celery broker                    ``redis://localhost:6379/0``
``PYWORKFLOW_STORAGE_URL``          storage backend URL              ``sqlite:///pyworkflow.db``
``PYWORKFLOW_IMPORTS``              modules with your workflows      (none)
``PYWORKFLOW_TICK_INTERVAL``        seconds between beat ticks       ``1``
``PYWORKFLOW_LEASE_TTL``            seconds a worker's lease lasts   ``15`` (renewed every 5)
``PYWORKFLOW_VISIBILITY_TIMEOUT``   Redis broker visibility timeout  ``3600``
``PYWORKFLOW_COUNTDOWN_HINT``       longest wait sent as countdown   ``10`` (0: tick only)
``PYWORKFLOW_START_GUARD``          pending this long: sent again    ``30``
==================================  ===============================  =====================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pyworkflow.errors import ConfigurationError

WORKFLOW_QUEUE = "pyworkflow.workflows"
STEP_QUEUE = "pyworkflow.steps"
ACTIVATE_TASK = "pyworkflow.activate"
TICK_TASK = "pyworkflow.tick"
STEP_TASK = "pyworkflow.run_step"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"

# Message priorities on pyworkflow.workflows: the tick first, then wake-ups (timers,
# hints, step outcomes, re-sent starts), then new runs, so a burst of starts never makes
# sleepers late. Redis consumes 0 first (kombu keeps one list per step 0/3/6/9); AMQP
# consumes the HIGHER number first, and only from a queue declared with x-max-priority.
# On AMQP, wake-ups and ticks are >= 5 and new runs < 5, which is also how RabbitMQ 4's
# quorum queues split their two priorities (high / normal).
PriorityKind = Literal["tick", "wake", "new"]
REDIS_PRIORITIES: dict[str, int] = {"tick": 0, "wake": 3, "new": 6}
AMQP_MAX_PRIORITY = 9
AMQP_PRIORITIES: dict[str, int] = {"tick": 9, "wake": 6, "new": 3}
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")
_REDIS_SCHEMES = ("redis", "rediss", "sentinel")


def broker_kind(broker_url: object) -> str | None:
    """``"redis"``, ``"amqp"`` or ``None`` (a broker without priorities: filesystem,
    memory …) for a Celery broker URL, a ``;``-separated failover list, or a list."""
    if isinstance(broker_url, (list, tuple)):
        broker_url = broker_url[0] if broker_url else ""
    scheme = str(broker_url or "").split(";", 1)[0].strip().split("://", 1)[0].lower()
    scheme = scheme.split("+", 1)[0]  # "transport+…" forms: redis+socket://, sqla+postgresql://
    if scheme in _REDIS_SCHEMES:
        return "redis"
    if scheme in _AMQP_SCHEMES:
        return "amqp"
    return None


def broker_url_of(conf: Any) -> object:
    """The broker an app's ``conf`` publishes to; Celery's own default (``amqp://``, a
    RabbitMQ on localhost) when it names none."""
    return conf.broker_write_url or conf.broker_url or "amqp://"


def priority_for(broker_url: object, kind: PriorityKind) -> int | None:
    """The message priority of ``kind`` on this broker, ``None`` where it has none.
    The one mapping used by the beat entry and by every activation sent."""
    table = {"redis": REDIS_PRIORITIES, "amqp": AMQP_PRIORITIES}.get(broker_kind(broker_url) or "")
    return None if table is None else table[kind]


def workflow_queue_arguments(broker_url: object) -> dict[str, int] | None:
    """Declaration arguments of ``pyworkflow.workflows``: ``x-max-priority`` on AMQP."""
    return {"x-max-priority": AMQP_MAX_PRIORITY} if broker_kind(broker_url) == "amqp" else None


def _number(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be >= {minimum:g}")
    return value


@dataclass
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    imports: list[str] = field(default_factory=list)
    tick_interval: float = 1.0
    lease_ttl: float = 15.0
    visibility_timeout: float = 3600.0
    countdown_hint: float = 10.0
    start_guard: float = 30.0

    @classmethod
    def from_env(cls) -> Settings:
        imports = [m.strip() for m in os.environ.get("PYWORKFLOW_IMPORTS", "").split(",") if m.strip()]
        settings = cls(
            broker_url=os.environ.get("PYWORKFLOW_BROKER_URL") or DEFAULT_BROKER_URL,
            imports=imports,
            tick_interval=_number("PYWORKFLOW_TICK_INTERVAL", 1.0, minimum=0.05),
            lease_ttl=_number("PYWORKFLOW_LEASE_TTL", 15.0, minimum=1.0),
            visibility_timeout=_number("PYWORKFLOW_VISIBILITY_TIMEOUT", 3600.0, minimum=1.0),
            countdown_hint=_number("PYWORKFLOW_COUNTDOWN_HINT", 10.0),
            start_guard=_number("PYWORKFLOW_START_GUARD", 30.0, minimum=0.1),
        )
        settings.check()
        return settings

    def check(self) -> None:
        # A countdown message sits unacknowledged in a worker; on Redis it is redelivered
        # once the visibility timeout passes. Hints must stay well below it.
        if self.countdown_hint > self.visibility_timeout / 2:
            raise ConfigurationError(
                f"countdown hint {self.countdown_hint:g}s must be at most half the visibility timeout "
                f"({self.visibility_timeout:g}s); long waits are woken by the tick"
            )
