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
``PYWORKFLOW_ENCRYPTION_KEY``       Fernet keys, newest first        (none: plaintext)
``PYWORKFLOW_METRICS_PORT``         workers serve Prometheus metrics (none: not served)
                                    on ``PORT`` or ``HOST:PORT``
==================================  ===============================  =====================

Each is checked where it enters (:meth:`Settings.from_env`, :meth:`Settings.check`):
numbers must be finite and in range (tick 0.05-3600 s, lease 1-86400 s, visibility
1 s-30 days, countdown hint 0-86400 s, start guard 0.1 s-7 days), the metrics port 1-65535, the
broker URL must name a kombu transport, the storage URL a known backend (checked without connecting or
creating anything), each encryption key a Fernet key (see
:mod:`pyworkflow.storage.encrypted`). A bad one raises
:class:`~pyworkflow.errors.ConfigurationError` naming the variable, the value (passwords
hidden; a key is never shown, only its position) and what is accepted; under the
``celery`` command the worker or beat exits at once with that message on one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pyworkflow.errors import ConfigurationError
from pyworkflow.storage.base import redact_url

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


# The numeric settings: field, environment variable, default, accepted range (seconds).
_NUMBERS: dict[str, tuple[str, float, float, float]] = {
    "tick_interval": ("PYWORKFLOW_TICK_INTERVAL", 1.0, 0.05, 3600.0),
    "lease_ttl": ("PYWORKFLOW_LEASE_TTL", 15.0, 1.0, 86400.0),
    "visibility_timeout": ("PYWORKFLOW_VISIBILITY_TIMEOUT", 3600.0, 1.0, 30 * 86400.0),
    "countdown_hint": ("PYWORKFLOW_COUNTDOWN_HINT", 10.0, 0.0, 86400.0),
    "start_guard": ("PYWORKFLOW_START_GUARD", 30.0, 0.1, 7 * 86400.0),
}


def _range(name: str) -> str:
    _, _, low, high = _NUMBERS[name]
    return f"a number of seconds from {low:g} to {high:g}"


def _number(name: str) -> float:
    """The value of the numeric setting ``name`` from its environment variable, checked."""
    variable, default, _, _ = _NUMBERS[name]
    raw = os.environ.get(variable)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{variable}={raw!r} is not a number; expected {_range(name)}") from None
    _check_number(name, value, f"{variable}={raw!r}")
    return value


def _check_number(name: str, value: object, shown: str) -> None:
    _, _, low, high = _NUMBERS[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{shown} is not a number; expected {_range(name)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigurationError(f"{shown} is out of range; expected {_range(name)}")


def check_broker_url(url: object) -> None:
    """Refuse a broker URL Celery could never connect with: not a string, no
    ``scheme://``, or a scheme no kombu transport has. Connects to nothing. Each URL of a
    ``;``-separated failover list is checked; errors show the URL without its password."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"PYWORKFLOW_BROKER_URL must be a URL such as {DEFAULT_BROKER_URL!r}, got {url!r}")
    from kombu.transport import TRANSPORT_ALIASES, get_transport_cls

    for one in url.split(";"):
        one = one.strip()
        shown = redact_url(one)
        if "://" not in one:
            raise ConfigurationError(
                f"PYWORKFLOW_BROKER_URL {shown!r} is not a URL: expected transport://..., e.g. {DEFAULT_BROKER_URL!r}"
            )
        scheme = one.split("://", 1)[0].split("+", 1)[0]
        try:
            get_transport_cls(scheme)
        except ImportError as exc:
            if scheme in TRANSPORT_ALIASES:
                raise ConfigurationError(
                    f"PYWORKFLOW_BROKER_URL {shown!r}: the {scheme!r} transport needs a package that is not "
                    f"installed ({exc.name or exc})"
                ) from None
            raise _unknown_transport(shown, scheme) from None
        except (KeyError, AttributeError, ValueError):  # KeyError: "No such transport"
            raise _unknown_transport(shown, scheme) from None


def _unknown_transport(shown: str, scheme: str) -> ConfigurationError:
    from kombu.transport import TRANSPORT_ALIASES

    known = ", ".join(sorted({s.lower() for s in TRANSPORT_ALIASES}))
    return ConfigurationError(f"PYWORKFLOW_BROKER_URL {shown!r}: unknown broker transport {scheme!r}; known: {known}")


@dataclass(repr=False)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    imports: list[str] = field(default_factory=list)
    tick_interval: float = 1.0
    lease_ttl: float = 15.0
    visibility_timeout: float = 3600.0
    countdown_hint: float = 10.0
    start_guard: float = 30.0
    storage_url: str | None = None
    """``PYWORKFLOW_STORAGE_URL`` when set, checked here (the runtime reads it through
    :func:`pyworkflow.config.get_storage`)."""
    metrics_port: str | None = None
    """``PYWORKFLOW_METRICS_PORT`` when set: ``PORT`` or ``HOST:PORT`` on which each worker
    serves Prometheus metrics (see :mod:`pyworkflow.metrics`)."""

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from the ``PYWORKFLOW_*`` variables, every one checked: a bad value
        raises :class:`~pyworkflow.errors.ConfigurationError` naming the variable, the
        value (passwords hidden) and what is accepted."""
        imports = [m.strip() for m in os.environ.get("PYWORKFLOW_IMPORTS", "").split(",") if m.strip()]
        settings = cls(
            broker_url=os.environ.get("PYWORKFLOW_BROKER_URL") or DEFAULT_BROKER_URL,
            imports=imports,
            storage_url=os.environ.get("PYWORKFLOW_STORAGE_URL") or None,
            metrics_port=os.environ.get("PYWORKFLOW_METRICS_PORT", "").strip() or None,
            **{name: _number(name) for name in _NUMBERS},
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Check every setting (also of settings built in code); ConfigurationError if one is bad."""
        for name in _NUMBERS:
            _check_number(name, getattr(self, name), f"{name}={getattr(self, name)!r}")
        check_broker_url(self.broker_url)
        if self.storage_url is not None:
            from pyworkflow.storage import check_storage_url

            check_storage_url(self.storage_url, what="PYWORKFLOW_STORAGE_URL")
        if self.metrics_port is not None:
            from pyworkflow.metrics import PORT_VARIABLE, parse_port

            if not isinstance(self.metrics_port, str):
                raise ConfigurationError(f"{PORT_VARIABLE} must be a string such as '9191', got {self.metrics_port!r}")
            parse_port(self.metrics_port)
        encryption_key = os.environ.get("PYWORKFLOW_ENCRYPTION_KEY")
        if encryption_key is not None:  # read by storage_from_url; checked here, before the worker starts
            from pyworkflow.storage.encrypted import parse_keys

            parse_keys(encryption_key)
        # A countdown message sits unacknowledged in a worker; on Redis it is redelivered
        # once the visibility timeout passes. Hints must stay well below it.
        if self.countdown_hint > self.visibility_timeout / 2:
            raise ConfigurationError(
                f"PYWORKFLOW_COUNTDOWN_HINT={self.countdown_hint:g}s must be at most half the visibility "
                f"timeout (PYWORKFLOW_VISIBILITY_TIMEOUT={self.visibility_timeout:g}s); long waits are woken "
                "by the tick"
            )

    def __repr__(self) -> str:
        # URLs without their passwords: settings get logged and printed
        fields = ", ".join(f"{f.name}={_shown(f.name, getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


def _shown(name: str, value: object) -> str:
    if name.endswith("_url") and isinstance(value, str):
        return repr(redact_url(value))
    return repr(value)
