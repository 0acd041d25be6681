"""Prometheus metrics of runs, steps, wake-ups, ticks, inboxes and schedules.

Install the extra (``pip install 'pyworkflow-celery[metrics]'``), then::

    from pyworkflow.metrics import enable_metrics

    enable_metrics()                 # into prometheus_client's default registry

A Celery worker does this itself when ``PYWORKFLOW_METRICS_PORT`` is set, and serves what
all its pool processes counted on that port (see :func:`serve_on_worker`); the dashboard
serves ``GET /metrics`` behind its access token.

Metrics are counted by :class:`PrometheusInterceptor`, an
:class:`~pyworkflow.interceptors.Interceptor`: like every interceptor it sees new work
only, so replaying a run counts nothing twice. Labels are low-cardinality: workflow and
step names, a schedule's id, never a run id.

=========================================== =================================================
metric                                      what
=========================================== =================================================
``pyworkflow_runs_started_total``           ``workflow.started`` recorded, by ``workflow``
                                            (counted where the run is recorded: the
                                            process calling ``start()``; a worker for
                                            children, continued and scheduled runs)
``pyworkflow_runs_finished_total``          runs ended, by ``workflow`` and ``status``:
                                            completed, failed, cancelled, continued
``pyworkflow_runs_blocked_total``           runs parked ``blocked`` (replay diverged)
``pyworkflow_step_duration_seconds``        histogram of step attempts (inline or
                                            dispatched) by ``workflow``, ``step`` and
                                            ``outcome`` (``ok``, ``error``)
``pyworkflow_step_retries_total``           ``step.retrying`` (an attempt failed, another
                                            is scheduled), by ``workflow`` and ``step``
``pyworkflow_step_failures_total``          ``step.failed`` (no attempt left), same labels
``pyworkflow_activation_duration_seconds``  histogram of activations, by ``workflow``
``pyworkflow_wake_lateness_seconds``        histogram: activation began minus the timer's
                                            wake time, for runs woken by their timer
``pyworkflow_inbox_depth``                  histogram: inbox messages an activation took
                                            into the log, by ``workflow``
``pyworkflow_tick_duration_seconds``        histogram of ticks, by ``runtime`` (``celery``,
                                            ``local``)
``pyworkflow_schedule_slots_total``         schedule slots by ``schedule`` and ``outcome``:
                                            fired, skipped, missed, failed (counted once a
                                            tick saved them: a tick that lost a race to
                                            another counts nothing)
=========================================== =================================================

``prometheus_client`` is imported only when metrics are enabled: the runtimes ask
:data:`ACTIVE` (one attribute read per tick) and do nothing more while it is ``None``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pyworkflow import interceptors, observability
from pyworkflow.errors import ConfigurationError
from pyworkflow.interceptors import ActivationInfo, Interceptor, RunInfo, StepAttemptInfo

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from pyworkflow.engine import Outcome
    from pyworkflow.events import Event
    from pyworkflow.schedules.spec import State

T = TypeVar("T")

PORT_VARIABLE = "PYWORKFLOW_METRICS_PORT"
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds: step attempts and activations (1 ms to 10 min).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
#: Seconds a timer's run woke after its wake time (10 ms to 1 h).
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
#: Seconds a tick took.
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Messages an activation took from the run's inbox.
INBOX_BUCKETS = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)

_FINISHED = {
    "workflow.completed": "completed",
    "workflow.failed": "failed",
    "workflow.cancelled": "cancelled",
    "workflow.continued": "continued",
}
_COUNTED = frozenset({"workflow.started", "step.retrying", "step.failed", "workflow.blocked", *_FINISHED})
_SLOT_COUNTERS = ("fired", "skipped", "missed", "failed")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            f"metrics need prometheus-client ({exc}); install it with: pip install 'pyworkflow-celery[metrics]'"
        ) from None
    return prometheus_client


class PrometheusInterceptor(Interceptor):
    """Counts what the engine does into ``registry`` (prometheus_client's default one when
    ``None``). Register it with :func:`enable_metrics`, which also times ticks and counts
    schedule slots; :func:`~pyworkflow.add_interceptor` alone gives the run and step
    metrics only."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus = _prometheus()
        from prometheus_client import Counter, Histogram

        self.registry: CollectorRegistry = prometheus.REGISTRY if registry is None else registry
        #: Whether values go to PROMETHEUS_MULTIPROC_DIR (chosen when this was built).
        self.multiprocess = MULTIPROC_VARIABLE in os.environ
        reg = self.registry
        self.runs_started = Counter(
            "pyworkflow_runs_started", "Runs recorded (workflow.started)", ["workflow"], registry=reg
        )
        self.runs_finished = Counter(
            "pyworkflow_runs_finished",
            "Runs ended: completed, failed, cancelled or continued (continue_as_new)",
            ["workflow", "status"],
            registry=reg,
        )
        self.runs_blocked = Counter(
            "pyworkflow_runs_blocked",
            "Runs parked blocked: replay met another call than the log",
            ["workflow"],
            registry=reg,
        )
        self.step_duration = Histogram(
            "pyworkflow_step_duration_seconds",
            "Duration of step attempts (outcome: ok, or error when the attempt raised)",
            ["workflow", "step", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.step_retries = Counter(
            "pyworkflow_step_retries",
            "Failed step attempts with another attempt scheduled (step.retrying)",
            ["workflow", "step"],
            registry=reg,
        )
        self.step_failures = Counter(
            "pyworkflow_step_failures", "Steps failed for good (step.failed)", ["workflow", "step"], registry=reg
        )
        self.activation_duration = Histogram(
            "pyworkflow_activation_duration_seconds",
            "Duration of activations that held a run's lease",
            ["workflow"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.wake_lateness = Histogram(
            "pyworkflow_wake_lateness_seconds",
            "How long after its timer's wake time a run's activation began (runs woken by their timer)",
            ["workflow"],
            buckets=LATENESS_BUCKETS,
            registry=reg,
        )
        self.inbox_depth = Histogram(
            "pyworkflow_inbox_depth",
            "Inbox messages (signals, cancellations, dispatched steps' reports, child ends) one activation took",
            ["workflow"],
            buckets=INBOX_BUCKETS,
            registry=reg,
        )
        self.tick_duration = Histogram(
            "pyworkflow_tick_duration_seconds",
            "Duration of ticks (timers claimed, schedules fired, crashed runs recovered)",
            ["runtime"],
            buckets=TICK_BUCKETS,
            registry=reg,
        )
        self.schedule_slots = Counter(
            "pyworkflow_schedule_slots",
            "Schedule slots by outcome: fired (a run started), skipped (overlap), missed (catch-up), failed",
            ["schedule", "outcome"],
            registry=reg,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._collectors: tuple[Collector, ...] = (
            self.runs_started,
            self.runs_finished,
            self.runs_blocked,
            self.step_duration,
            self.step_retries,
            self.step_failures,
            self.activation_duration,
            self.wake_lateness,
            self.inbox_depth,
            self.tick_duration,
            self.schedule_slots,
        )

    def unregister(self) -> None:
        """Take this interceptor's metrics out of its registry."""
        for collector in self._collectors:
            with contextlib.suppress(KeyError):  # already gone
                self.registry.unregister(collector)

    # -- the hooks ------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: prometheus_client checks the values and takes a
        lock in each ``labels()`` call (kept children cut the cost of counting a 3-step run
        from about 134k to 83k instructions)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def activation(self, info: ActivationInfo, proceed: Callable[[], Awaitable[Outcome]]) -> Outcome:
        workflow = info.run.workflow
        self._child(self.inbox_depth, workflow).observe(info.inbox)
        if info.status == "suspended" and info.wake_at is not None and info.inbox == 0:
            late = (info.began_at - info.wake_at).total_seconds()
            self._child(self.wake_lateness, workflow).observe(max(late, 0.0))
        started = time.perf_counter()
        try:
            return await proceed()
        finally:
            self._child(self.activation_duration, workflow).observe(time.perf_counter() - started)

    async def step(self, info: StepAttemptInfo, proceed: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await proceed()
            outcome = "ok"
            return result
        finally:
            elapsed = time.perf_counter() - started
            self._child(self.step_duration, info.run.workflow, info.step, outcome).observe(elapsed)

    def event(self, run: RunInfo, event: Event) -> None:
        kind = event.type
        if kind not in _COUNTED:
            return  # most events: one set lookup
        if kind == "workflow.started":
            self._child(self.runs_started, run.workflow).inc()
        elif kind in _FINISHED:
            self._child(self.runs_finished, run.workflow, _FINISHED[kind]).inc()
        elif kind == "step.retrying":
            self._child(self.step_retries, run.workflow, str(event.data.get("step", "?"))).inc()
        elif kind == "step.failed":
            self._child(self.step_failures, run.workflow, str(event.data.get("step", "?"))).inc()
        else:  # workflow.blocked
            self._child(self.runs_blocked, run.workflow).inc()

    # -- called by the runtimes -----------------------------------------------------------

    def slots_noted(self, state: State, before: tuple[int, ...]) -> None:
        """Count the slots a tick decided for ``state`` since its counters were ``before``."""
        for outcome, previous in zip(_SLOT_COUNTERS, before, strict=True):
            added = getattr(state, outcome) - previous
            if added > 0:
                self.schedule_slots.labels(state.schedule_id, outcome).inc(added)


#: The interceptor :func:`enable_metrics` registered, or ``None`` (metrics off).
ACTIVE: PrometheusInterceptor | None = None


def enable_metrics(registry: CollectorRegistry | None = None) -> PrometheusInterceptor:
    """Count PyWorkflow's metrics in this process, into ``registry`` (prometheus_client's
    default registry when ``None``); returns the interceptor.

    Idempotent: called again with the same registry (or none) it returns the interceptor
    already registered. Called with another registry, it moves the metrics there (the
    previous registry loses them). Raises :class:`~pyworkflow.errors.ConfigurationError`
    when prometheus-client is not installed (the ``metrics`` extra)."""
    global ACTIVE
    active = ACTIVE
    if active is not None and (registry is None or registry is active.registry):
        interceptors.add_interceptor(active)  # a no-op unless someone removed it
        return active
    if active is not None:
        disable_metrics()
    active = PrometheusInterceptor(registry)
    interceptors.add_interceptor(active)
    ACTIVE = active
    return active


def disable_metrics() -> None:
    """Stop counting: unregister the interceptor and take its metrics out of its registry."""
    global ACTIVE
    active, ACTIVE = ACTIVE, None
    if active is not None:
        interceptors.remove_interceptor(active)
        active.unregister()


async def timed_tick(runtime: str, work: Awaitable[T]) -> T:
    """Await a tick, observing how long it took (the runtimes call this only while
    :data:`ACTIVE` is set)."""
    active = ACTIVE
    started = time.perf_counter()
    try:
        return await work
    finally:
        if active is not None:
            active.tick_duration.labels(runtime).observe(time.perf_counter() - started)


def slot_counts(state: State) -> tuple[int, ...]:
    """A schedule's slot counters, to compare after a tick fired it."""
    return tuple(getattr(state, outcome) for outcome in _SLOT_COUNTERS)


# -- exposition --------------------------------------------------------------------------


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics of this process in the text format ``accept`` asks for (Prometheus
    text by default, OpenMetrics on request), and its content type.

    What is read: the registry :func:`enable_metrics` counts into; when that is the
    default registry (or metrics are off) and ``PROMETHEUS_MULTIPROC_DIR`` is set, what
    every process writing into that directory counted, summed."""
    _prometheus()
    from prometheus_client import REGISTRY
    from prometheus_client.exposition import choose_encoder

    active = ACTIVE
    registry: Collector = REGISTRY if active is None else active.registry
    if registry is REGISTRY and os.environ.get(MULTIPROC_VARIABLE):
        registry = _multiprocess_registry()
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def _multiprocess_registry() -> CollectorRegistry:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def dashboard_routes(extra_routes: Sequence[BaseRoute] = ()) -> list[BaseRoute]:
    """``GET /metrics`` for the dashboard (served behind its access token), unless
    ``extra_routes`` has a ``/metrics`` of its own or prometheus-client is not installed."""
    if any(getattr(route, "path", None) == "/metrics" for route in extra_routes):
        return []
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return []
    return [metrics_route()]


def metrics_route(path: str = "/metrics") -> BaseRoute:
    """A Starlette route answering :func:`exposition` (for an ASGI app of your own)."""
    from starlette.responses import Response
    from starlette.routing import Route

    async def metrics(request: Request) -> Response:
        body, content_type = exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return Route(path, metrics, methods=["GET"], name="metrics")


# -- Celery workers ----------------------------------------------------------------------


def parse_port(raw: str, variable: str = PORT_VARIABLE) -> tuple[str, int]:
    """``PORT`` or ``HOST:PORT`` (port 1-65535; host ``0.0.0.0`` when not given) as
    ``(host, port)``; :class:`~pyworkflow.errors.ConfigurationError` naming ``variable``
    otherwise."""
    text = raw.strip()
    host, _, port_text = text.rpartition(":")
    host = host.strip().strip("[]") or "0.0.0.0"
    expected = "a port number from 1 to 65535, or HOST:PORT (e.g. 9191 or 127.0.0.1:9191)"
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigurationError(f"{variable}={raw!r} is not a port number; expected {expected}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"{variable}={raw!r} is out of range; expected {expected}")
    return host, port


class _WorkerServer:
    """The metrics server of one worker's main process, and what it set up."""

    def __init__(self) -> None:
        self.server: Any = None
        self.made_dir: str | None = None
        self.pid = -1


_SERVER = _WorkerServer()
_SERVED_APPS: set[int] = set()


def serve_on_worker(app: Any, address: str) -> None:
    """Serve the worker's metrics on ``address`` (``PORT`` or ``HOST:PORT``): what
    ``install()`` does when ``PYWORKFLOW_METRICS_PORT`` is set.

    Prefork-safe, with prometheus_client's multiprocess mode: on ``worker_init`` (in the
    worker's main process, before the pool forks) ``PROMETHEUS_MULTIPROC_DIR`` is set (a
    new temporary directory when you set none, removed when the worker stops), metrics
    are enabled, and an HTTP server started that sums the values of every process;
    ``worker_process_shutdown`` marks a pool process dead.

    The address is checked now, in every process that installs the app; prometheus-client
    only in a worker, which stops at start with one line when it is missing (your other
    processes may share the worker's variables without the ``metrics`` extra).
    """
    host, port = parse_port(address)
    if id(app) in _SERVED_APPS:
        return
    _SERVED_APPS.add(id(app))
    from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

    def started(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        try:
            _prometheus()
        except ConfigurationError as exc:
            # an exception would only be logged by Celery's signal; this stops the worker
            raise SystemExit(f"pyworkflow: ConfigurationError: {PORT_VARIABLE} is set, but {exc}") from None
        _start_server(host, port)

    def process_ended(pid: int | None = None, **_: Any) -> None:
        if os.environ.get(MULTIPROC_VARIABLE):
            _process_dead(pid if pid is not None else os.getpid())

    def stopped(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            _stop_server()

    worker_init.connect(started, weak=False)
    worker_process_shutdown.connect(process_ended, weak=False)
    worker_shutdown.connect(stopped, weak=False)


def _start_server(host: str, port: int) -> None:
    if _SERVER.pid == os.getpid():
        return  # started already in this process
    _SERVER.pid = os.getpid()
    folder = os.environ.get(MULTIPROC_VARIABLE)
    if not folder:
        folder = tempfile.mkdtemp(prefix="pyworkflow-metrics-")
        os.environ[MULTIPROC_VARIABLE] = folder
        _SERVER.made_dir = folder
    os.makedirs(folder, exist_ok=True)
    _multiprocess_values()
    enable_metrics()
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=host, registry=_multiprocess_registry())
    except OSError as exc:
        observability.engine_log(
            "metrics_not_served", level="error", variable=PORT_VARIABLE, host=host, port=port, error=str(exc)
        )
        return
    _SERVER.server = server
    observability.engine_log("metrics_served", level="info", host=host, port=port, directory=folder)


def _multiprocess_values() -> None:
    """Make metrics built from now on write to ``PROMETHEUS_MULTIPROC_DIR``: prometheus_client
    picks its value class when first imported, possibly before the variable was set."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    active = ACTIVE
    if active is not None and not active.multiprocess:  # built before: build it again
        registry = active.registry
        disable_metrics()
        enable_metrics(registry)


def _process_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except OSError as exc:  # the directory went away: nothing to mark
        observability.engine_log("metrics_process_not_marked", level="warning", pid=pid, error=str(exc))


def _stop_server() -> None:
    """At the worker's shutdown: stop serving, remove the directory made for it (also when
    the port could not be taken)."""
    server, made = _SERVER.server, _SERVER.made_dir
    if _SERVER.pid != os.getpid():
        return  # not the process that started it (a pool process)
    _SERVER.server = _SERVER.made_dir = None
    _SERVER.pid = -1
    if server is not None:
        server.shutdown()
        server.server_close()
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        if os.environ.get(MULTIPROC_VARIABLE) == made:
            del os.environ[MULTIPROC_VARIABLE]


__all__ = [
    "PrometheusInterceptor",
    "dashboard_routes",
    "disable_metrics",
    "enable_metrics",
    "exposition",
    "metrics_route",
    "serve_on_worker",
]
