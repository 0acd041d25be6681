"""Building a Celery app that runs PyWorkflow, or teaching yours to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer as _CeleryConsumer
from kombu import Queue

from pyworkflow import observability
from pyworkflow.celery.filesystem import TRANSPORT as FILESYSTEM_TRANSPORT
from pyworkflow.celery.runtime import TASK_MAX_RETRIES, CeleryRuntime
from pyworkflow.celery.settings import (
    ACTIVATE_TASK,
    STEP_QUEUE,
    STEP_TASK,
    TICK_TASK,
    WORKFLOW_QUEUE,
    Settings,
    broker_url_of,
    priority_for,
    workflow_queue_arguments,
)
from pyworkflow.errors import ConfigurationError, StorageError

_installed: Celery | None = None


def create_app(name: str = "pyworkflow", settings: Settings | None = None, **conf: Any) -> Celery:
    """A Celery app configured from ``PYWORKFLOW_*`` variables (or ``settings``), with
    PyWorkflow's tasks, queues and beat tick. Extra keyword arguments override Celery
    settings."""
    settings = settings or Settings.from_env()
    app = Celery(name, broker=settings.broker_url)
    install(app, settings, **conf)
    return app


def install(app: Celery, settings: Settings | None = None, **conf: Any) -> Celery:
    """Register PyWorkflow's tasks and settings on an app you already have.

    Your app keeps its own broker; PyWorkflow sets what its guarantees need: JSON only,
    late acks, reject on worker loss, prefetch 1, its two queues and the beat tick.
    """
    global _installed
    settings = settings or Settings.from_env()
    transport = dict(app.conf.broker_transport_options or {})
    transport.update(conf.pop("broker_transport_options", None) or {})
    # One visibility timeout for the broker and for our guards: an app that already set
    # one keeps it, and the dispatch guard and countdown-hint limit follow it.
    settings.visibility_timeout = float(transport.setdefault("visibility_timeout", settings.visibility_timeout))
    transport.setdefault("unacked_restore_throttle", 1)
    settings.check()
    broker = app.conf.broker_url or settings.broker_url
    if isinstance(broker, str) and broker.startswith("filesystem://"):
        transport = {**_filesystem_transport(broker), **transport}
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport = FILESYSTEM_TRANSPORT  # messages appear whole
    # what the app really publishes to decides the priorities (one mapping, settings.priority_for)
    broker = broker_url_of(app.conf)
    tick_priority = priority_for(broker, "tick")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=WORKFLOW_QUEUE,
        task_queues=[
            WorkflowQueue(WORKFLOW_QUEUE, queue_arguments=workflow_queue_arguments(broker)),
            Queue(STEP_QUEUE),
        ],
        task_routes={
            ACTIVATE_TASK: {"queue": WORKFLOW_QUEUE},
            TICK_TASK: {"queue": WORKFLOW_QUEUE},
            STEP_TASK: {"queue": STEP_QUEUE},
        },
        beat_schedule={
            TICK_TASK: {
                "task": TICK_TASK,
                "schedule": settings.tick_interval,
                # a tick nobody ran in time is worthless: the next one does the same work
                "options": {
                    "expires": max(settings.tick_interval * 5, 5.0),
                    "queue": WORKFLOW_QUEUE,
                    **({"priority": tick_priority} if tick_priority is not None else {}),
                },
            }
        },
        imports=tuple(app.conf.imports or ()) + tuple(settings.imports),
    )
    if app.conf.worker_consumer == _DEFAULT_CONSUMER:  # an app with its own consumer class keeps it
        app.conf.worker_consumer = CONSUMER
    app.conf.update(conf)
    runtime = CeleryRuntime(app, settings)
    app.pyworkflow = runtime  # type: ignore[attr-defined]

    @app.task(
        name=ACTIVATE_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=TASK_MAX_RETRIES,
    )
    def activate_run(task: Any, run_id: str) -> str:
        runtime.check_arguments(task, run_id)
        try:
            return runtime.run(runtime.activate(run_id)).status  # type: ignore[no-any-return]
        except StorageError as exc:
            raise runtime.retry_later(task, exc)  # noqa: B904 - a Retry, or exc itself

    @app.task(name=TICK_TASK, shared=False, ignore_result=True)
    def tick() -> int:
        return runtime.run(runtime.tick())  # type: ignore[no-any-return]

    @app.task(
        name=STEP_TASK,
        bind=True,
        shared=False,
        ignore_result=True,
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=TASK_MAX_RETRIES,
    )
    def run_step(task: Any, run_id: str, call_id: int, step: str) -> str:
        runtime.check_arguments(task, run_id, call_id, step)
        try:
            return runtime.run(runtime.run_step(run_id, call_id, step))  # type: ignore[no-any-return]
        except StorageError as exc:
            raise runtime.retry_later(task, exc)  # noqa: B904 - a Retry, or exc itself

    _declare_schedules_on_start(app, runtime)
    if settings.metrics_port is not None:  # PYWORKFLOW_METRICS_PORT: each worker serves its metrics
        from pyworkflow.metrics import serve_on_worker

        serve_on_worker(app, settings.metrics_port)
    _installed = app
    return app


def _declare_schedules_on_start(app: Celery, runtime: CeleryRuntime) -> None:
    """Create or update the ``@workflow(schedule=...)`` schedules when a worker or beat of
    this app starts (both may: the upsert is idempotent). A failure is logged; the
    process starts anyway, and the next start tries again."""
    from celery.signals import beat_init, worker_ready

    def declare(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        from pyworkflow.schedules import declare_schedules

        try:
            runtime.ensure_imports()
            ids = runtime.run(declare_schedules())  # opens the storage only if there are some
        except Exception as exc:  # noqa: BLE001 - a worker must start even if this fails
            observability.engine_log("schedules_not_declared", level="error", error=repr(exc))
        else:
            if ids:
                observability.engine_log("schedules_declared", schedules=ids)

    worker_ready.connect(declare, weak=False)
    beat_init.connect(declare, weak=False)


_DEFAULT_CONSUMER = "celery.worker.consumer:Consumer"
CONSUMER = "pyworkflow.celery.factory:Consumer"


class Consumer(_CeleryConsumer):  # type: ignore[misc]  # celery has no type hints
    """Celery's worker consumer, surviving the loss of a Redis broker while it holds
    unacknowledged messages (countdown hints waiting for their time, a running task).

    Celery 5.7 handles a lost connection by ``collect()``-ing it, which detaches the
    transport from the connection, and then closing it again. When the first close of the
    Redis channel was cut short (it fails while reading the BRPOP that was in flight), the
    second close tries to restore the channel's unacknowledged messages with a client made
    from the detached transport: ``AttributeError: 'NoneType' object has no attribute
    'hostname'``, which no handler expects, and the worker exits ("Unrecoverable error").
    Here a collected connection is closed no more: its messages stay in the broker's
    unacknowledged set, which the Redis transport restores after the visibility timeout,
    and runs never depend on them (the timer index in storage wakes them).
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            _closed_by_collect(connection)
        super().on_connection_error_after_connected(exc)

    def update_strategies(self) -> None:
        super().update_strategies()
        for name, strategy in self.strategies.items():
            self.strategies[name] = _guarded(self, strategy)


def _guarded(consumer: Any, strategy: Any) -> Any:
    """``strategy`` (what turns a task's message into a request), refusing a malformed
    message instead of being stopped by it.

    Celery 5.7 checks little there: a JSON body that is not ``[args, kwargs, embed]``
    ends the consumer ("Unrecoverable error": the worker exits); headers without an
    ``id`` raise KeyError, which kombu's Redis transport counts as a connection error, so
    the consumer reconnects, gets the same unacknowledged message back and loops; kwargs
    or embed that are not objects fail in the pool before the task starts and leave the
    message unacknowledged for good, holding one of the worker's prefetch slots. Here
    such a message is logged and rejected (never requeued), as Celery does with the
    invalid messages it recognises (whose log line then names the task too: Celery's
    own omits it for a serializer it does not accept, such as pickle).
    """
    from celery.exceptions import InvalidTaskError
    from kombu.exceptions import ContentDisallowed, DecodeError

    def refuse(message: Any, body: Any, problem: str) -> None:
        named = message.headers if isinstance(message.headers, dict) and "task" in message.headers else body
        named = named if isinstance(named, dict) else {}  # protocol 1 names the task in its body
        invalid = InvalidTaskError(f"task {named.get('task')!r} (id {named.get('id')!r}): {problem}")
        consumer.on_invalid_task(body, message, invalid)

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        try:
            # decoding here costs nothing extra: Celery's request decodes (and caches) it too
            problem = _body_problem(message.payload if body is None else body, headers_name_task=body is None)
            if problem is not None:
                return refuse(message, body, problem)
            return strategy(message, body, ack, reject, callbacks, **kwargs)
        except DecodeError:
            raise  # Celery logs it with the message's headers, and acknowledges it
        except (InvalidTaskError, ContentDisallowed) as exc:  # Celery's own refusals, logged naming the task
            return refuse(message, body, str(exc))
        except (LookupError, ValueError, TypeError, AttributeError) as exc:  # what other malformations raise
            return refuse(message, body, f"malformed message: {type(exc).__name__}: {exc}")

    return guarded


def _body_problem(payload: Any, *, headers_name_task: bool) -> str | None:
    """What is wrong with a task message's decoded body, or ``None``: protocol 2's
    ``[args, kwargs, embed]``, or protocol 1's object with ``args`` and ``kwargs``
    (Celery reads an object as protocol 1 when it has ``args`` or the headers do not
    name the task)."""
    if isinstance(payload, dict) and ("args" in payload or not headers_name_task):
        args, kwargs, embed = payload.get("args", ()), payload.get("kwargs", {}), None
    elif isinstance(payload, (list, tuple)) and len(payload) == 3:
        args, kwargs, embed = payload
    else:
        return f"the body must be [args, kwargs, embed], got {_kind(payload)}"
    if not isinstance(args, (list, tuple)):
        return f"args must be an array, got {_kind(args)}"
    if not isinstance(kwargs, dict):
        return f"kwargs must be an object, got {_kind(kwargs)}"
    if embed is not None and not isinstance(embed, dict):
        return f"the options (embed) must be an object, got {_kind(embed)}"
    return None


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:60] + '...'}"


def _closed_by_collect(connection: Any) -> None:
    collect = connection.collect

    def collect_once(*args: Any, **kwargs: Any) -> Any:
        try:
            return collect(*args, **kwargs)
        finally:
            # collect() released what it could; a later close() would only trip on
            # the half-closed channel it leaves
            connection.close = connection.release = _nothing

    connection.collect = collect_once


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class WorkflowQueue(Queue):  # type: ignore[misc]  # kombu has no type hints
    """``pyworkflow.workflows``; on AMQP declared with ``x-max-priority``. A RabbitMQ queue
    keeps the arguments it was first declared with, so one left by an older PyWorkflow
    (no priorities) refuses this declaration (406 PRECONDITION_FAILED): say what to do."""

    def queue_declare(self, nowait: bool = False, passive: bool = False, channel: Any = None) -> Any:
        try:
            return super().queue_declare(nowait=nowait, passive=passive, channel=channel)
        except Exception as exc:
            if getattr(exc, "reply_code", None) != 406:
                raise
            client = getattr(getattr(channel or self.channel, "connection", None), "client", None)
            vhost = getattr(client, "virtual_host", "/") or "/"
            where = "" if vhost == "/" else f"-p {vhost} "
            raise ConfigurationError(
                f"the broker refused to declare queue {self.name!r} with arguments {self.queue_arguments or {}} "
                f"({exc}). The queue exists with other arguments, typically created by a PyWorkflow "
                f"without message priorities. Stop every worker, beat and client of this broker, delete "
                f"the queue (rabbitmqctl delete_queue {where}{self.name}; no run is lost with its messages: runs "
                f"live in storage and the tick sends what they need again), then start them all on this version. "
                f"See DISTRIBUTED.md, 'RabbitMQ'."
            ) from exc


def _filesystem_transport(url: str) -> dict[str, Any]:
    """``filesystem://<dir>`` (default ``.pyworkflow/broker``): kombu's file-based transport,
    a broker with no server for one machine (the demo, development)."""
    folder = Path(url[len("filesystem://") :] or ".pyworkflow/broker").expanduser().resolve()
    queue, control = folder / "queue", folder / "control"
    queue.mkdir(parents=True, exist_ok=True)
    control.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "store_processed": False,
        "polling_interval": 0.05,
    }


def installed_app() -> Celery:
    """The app ``start()`` sends with: the last one set up, else a new one configured from
    ``PYWORKFLOW_*`` variables (what ``pyworkflow.celery.app`` holds)."""
    return _installed if _installed is not None else create_app()
