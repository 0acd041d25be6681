"""The bad-input catalogue at the broker boundary: malformed Celery messages and pickle
messages, sent to a real worker (in-process, threads pool) on each broker (Redis and
RabbitMQ), with storage on SQLite and Redis.

Each message is refused where it enters the worker: by Celery (a body it cannot decode,
an unknown task, arguments the task function does not take, a serializer other than
JSON), by PyWorkflow's consumer guard (a body or headers of the wrong shape, which
Celery alone would die of, loop on or leave unacknowledged) or by the task's own checks
(a ``run_id``, ``call_id`` or ``step`` of the wrong type, size or characters; a step for
a run that does not exist), and rejected or acknowledged, never retried or requeued. For
every case: a log line names the task (when the message names one) and what was wrong;
the worker keeps serving (the next good run completes); nothing already recorded changes
(a completed and a sleeping run keep their record, log, inbox and timer; no run is
created); and a pickle is never unpickled (its payload would create a marker file).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kombu import Producer

import pyworkflow.celery.factory as factory
from pyworkflow import get_run, start, wait_for_result
from pyworkflow.celery.settings import ACTIVATE_TASK, STEP_QUEUE, STEP_TASK, TICK_TASK, WORKFLOW_QUEUE
from pyworkflow.loop import PROCESS_LOOP
from pyworkflow.storage.base import StorageBackend, new_run_id
from tests.celery.conftest import wait_until
from tests.celery_workflows import add_three, note, sleeper

NOTE = note.__pyworkflow_step__.name  # type: ignore[attr-defined]
PICKLE = "application/x-python-serialize"


@pytest.fixture(autouse=True)
def _send_with_test_app(celery_app: Any, worker: Any) -> None:
    factory._installed = celery_app


class Marker:
    """Unpickling this creates the directory ``path``: proof that something unpickled it.
    (The path is pickled as one string, so the log line dumping the body quotes it.)"""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


@dataclass
class Sender:
    """What a case sends with: the app, the sleeping run it may aim at, and a marker path
    and a token of its own."""

    app: Any
    asleep: str
    marker: Path
    token: str
    #: the ids of the task messages sent
    ids: list[str] = field(default_factory=list)

    def task(self, name: str, *args: Any, queue: str = WORKFLOW_QUEUE, **options: Any) -> str:
        """Send ``name(*args)`` as Celery does; the task id is what the log line quotes."""
        task_id = str(self.app.send_task(name, args=list(args), queue=queue, **options).id)
        self.ids.append(task_id)
        return task_id

    def raw(
        self,
        body: bytes,
        headers: dict[str, Any] | None = None,
        *,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        queue: str = WORKFLOW_QUEUE,
    ) -> None:
        """Publish bytes as they are, with the headers given (none: not a task message)."""
        with self.app.connection_for_write() as connection:
            Producer(connection).publish(
                body,
                exchange="",
                routing_key=queue,
                headers=headers or {},
                content_type=content_type,
                content_encoding=content_encoding,
            )

    def headers(self, task: str = ACTIVATE_TASK, **extra: Any) -> dict[str, Any]:
        """Protocol 2 headers naming ``task``, with this case's token as the task id."""
        self.ids.append(self.token)
        return {"lang": "py", "task": task, "id": self.token, "root_id": self.token, "parent_id": None, **extra}

    def body(self, *args: Any) -> bytes:
        return json.dumps(
            [list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        ).encode()


@dataclass(frozen=True)
class Case:
    id: str
    #: sends the bad message; returns text its log line quotes (a task id, a run id, a
    #: token), or None when the case's token is that text
    send: Callable[[Sender], str | None]
    #: what that same log line must say besides
    named: tuple[str, ...]
    #: the task it must name: the one the message names (None: the message names none)
    task: str | None = ACTIVATE_TASK


def refused(problem: str) -> tuple[str, ...]:
    return ("refused:", problem)


def activate_unknown_run(sender: Sender) -> str:
    run_id = new_run_id()
    sender.task(ACTIVATE_TASK, run_id)
    return run_id  # quoted by the log line


def step_for_the_run_asleep(sender: Sender, call_id: int, step: str) -> str:
    sender.task(STEP_TASK, sender.asleep, call_id, step, queue=STEP_QUEUE)
    return sender.asleep  # quoted by the log line


ACTIVATE_CASES = [
    Case("activate-no-args", lambda s: s.task(ACTIVATE_TASK), ("missing 1 required positional argument: 'run_id'",)),
    Case("activate-two-args", lambda s: s.task(ACTIVATE_TASK, "a", "b"), ("takes 2 positional arguments but 3",)),
    Case(
        "activate-unknown-kwarg",
        lambda s: s.task(ACTIVATE_TASK, "a", kwargs={"nope": 1}),
        ("unexpected keyword argument 'nope'",),
    ),
    Case("activate-run-id-int", lambda s: s.task(ACTIVATE_TASK, 5), refused("run_id must be a string, got int 5")),
    Case(
        "activate-run-id-none", lambda s: s.task(ACTIVATE_TASK, None), refused("run_id must be a string, got NoneType")
    ),
    Case(
        "activate-run-id-dict",
        lambda s: s.task(ACTIVATE_TASK, {"run": "x"}),
        refused("run_id must be a string, got dict"),
    ),
    Case("activate-run-id-list", lambda s: s.task(ACTIVATE_TASK, ["x"]), refused("run_id must be a string, got list")),
    Case("activate-run-id-float", lambda s: s.task(ACTIVATE_TASK, 1.5), refused("run_id must be a string, got float")),
    Case("activate-run-id-empty", lambda s: s.task(ACTIVATE_TASK, ""), refused("run_id must not be empty")),
    Case(
        "activate-run-id-100kb",
        lambda s: s.task(ACTIVATE_TASK, "x" * 100_000),
        refused("run_id must have at most 200 characters, got str 'xxx"),
    ),
    Case("activate-run-id-nul", lambda s: s.task(ACTIVATE_TASK, "ab\x00cd"), refused("run_id must not hold control")),
    Case("activate-run-id-newline", lambda s: s.task(ACTIVATE_TASK, "ab\ncd"), refused("run_id must not hold control")),
    Case("activate-run-id-surrogate", lambda s: s.task(ACTIVATE_TASK, "\ud800"), refused("lone surrogates")),
    Case(
        "activate-run-id-keyword-int",
        lambda s: s.task(ACTIVATE_TASK, kwargs={"run_id": 5}),
        refused("run_id must be a string, got int 5"),
    ),
    Case("activate-unknown-run", activate_unknown_run, ("activation_of_unknown_run",)),
]

ASLEEP = object()  # stands for the run asleep in a step message's arguments


def step_message(*args: Any) -> Callable[[Sender], str]:
    """Send ``pyworkflow.run_step(*args)`` to the step queue (ASLEEP: the run asleep)."""
    return lambda s: s.task(STEP_TASK, *(s.asleep if a is ASLEEP else a for a in args), queue=STEP_QUEUE)


def step_case(id: str, send: Callable[[Sender], str | None], named: tuple[str, ...]) -> Case:
    return Case(id, send, named, task=STEP_TASK)


STEP_CASES = [
    step_case("step-no-args", step_message(), ("missing 3 required positional arguments",)),
    step_case("step-two-args", step_message(ASLEEP, 1), ("missing 1 required positional argument: 'step'",)),
    step_case("step-five-args", step_message(ASLEEP, 1, NOTE, "x"), ("takes 4 positional arguments but 5",)),
    step_case("step-call-id-str", step_message(ASLEEP, "1", NOTE), refused("call_id must be an int >= 1, got str '1'")),
    step_case("step-call-id-zero", step_message(ASLEEP, 0, NOTE), refused("call_id must be an int >= 1, got int 0")),
    step_case(
        "step-call-id-negative", step_message(ASLEEP, -3, NOTE), refused("call_id must be an int >= 1, got int -3")
    ),
    step_case(
        "step-call-id-bool", step_message(ASLEEP, True, NOTE), refused("call_id must be an int >= 1, got bool True")
    ),
    step_case(
        "step-call-id-float", step_message(ASLEEP, 1.0, NOTE), refused("call_id must be an int >= 1, got float 1.0")
    ),
    step_case("step-name-int", step_message(ASLEEP, 1, 7), refused("step must be a string, got int 7")),
    step_case("step-name-empty", step_message(ASLEEP, 1, ""), refused("step must not be empty")),
    step_case("step-name-nul", step_message(ASLEEP, 1, "no\x00te"), refused("step must not hold control characters")),
    step_case("step-run-id-int", step_message(5, 1, NOTE), refused("run_id must be a string, got int 5")),
    step_case("step-unknown-run", lambda s: step_message(new_run_id(), 1, NOTE)(s), refused("does not exist")),
    step_case(
        "step-unknown-name",
        lambda s: step_for_the_run_asleep(s, 1, "bad_messages.no_such_step"),
        ("step_message_skipped", "call_id=1", "bad_messages.no_such_step"),
    ),
    step_case(
        "step-never-dispatched", lambda s: step_for_the_run_asleep(s, 99, NOTE), ("step_message_skipped", "call_id=99")
    ),
]

OTHER_TASK_CASES = [
    Case("tick-with-an-argument", lambda s: s.task(TICK_TASK, 1), ("takes 0 positional arguments",), task=TICK_TASK),
    Case(
        "unknown-task-on-the-workflow-queue",
        lambda s: s.task("pyworkflow.no_such_task", "x"),
        ("Received unregistered task of type",),
        task="pyworkflow.no_such_task",
    ),
    Case(
        "unknown-task-on-the-step-queue",
        lambda s: s.task("pyworkflow.no_such_step_task", "x", queue=STEP_QUEUE),
        ("Received unregistered task of type",),
        task="pyworkflow.no_such_step_task",
    ),
]

INVALID = "Received invalid task message: task 'pyworkflow.activate'"

RAW_CASES = [
    Case(
        "body-not-json",
        lambda s: s.raw(b"{not json", s.headers()),
        ("Can't decode message body", "JSONDecodeError"),
    ),
    Case("body-empty", lambda s: s.raw(b"", s.headers()), (INVALID, "the body must be [args, kwargs, embed]")),
    Case(
        "body-an-object",
        lambda s: s.raw(b'{"hello": 1}', s.headers()),
        (INVALID, "the body must be [args, kwargs, embed], got dict"),
    ),
    Case(
        "body-a-string",
        lambda s: s.raw(b'"just a string"', s.headers()),
        (INVALID, "the body must be [args, kwargs, embed], got str"),
    ),
    Case(
        "body-two-items",
        lambda s: s.raw(b'[["x"], {}]', s.headers()),
        (INVALID, "the body must be [args, kwargs, embed], got list"),
    ),
    Case(
        "body-args-not-an-array",
        lambda s: s.raw(b'["abc", {}, {}]', s.headers()),
        (INVALID, "args must be an array, got str 'abc'"),
    ),
    Case(
        "body-kwargs-not-an-object",
        lambda s: s.raw(b'[["abc"], [], {}]', s.headers()),
        (INVALID, "kwargs must be an object, got list []"),
    ),
    Case(
        "body-options-not-an-object",
        lambda s: s.raw(b'[["abc"], {}, 5]', s.headers()),
        (INVALID, "the options (embed) must be an object, got int 5"),
    ),
    Case(
        "headers-without-id",
        lambda s: s.raw(s.body(s.token), {"task": ACTIVATE_TASK}),
        (f"{INVALID} (id None): malformed message: KeyError: 'id'",),
    ),
    Case(
        "headers-bad-time-limit",
        lambda s: s.raw(s.body(s.token), s.headers(timelimit="soon")),
        (INVALID, "malformed message: ValueError"),
    ),
    Case(
        "headers-bad-eta",
        lambda s: s.raw(s.body(s.token), s.headers(eta="tomorrow")),
        (INVALID, "invalid ETA value 'tomorrow'"),
    ),
    Case(
        "headerless-object",
        lambda s: s.raw(json.dumps({"junk": s.token}).encode()),
        ("Received and deleted unknown message",),
        task=None,
    ),
    Case(
        "headerless-not-json",
        lambda s: s.raw(f"{s.token} is not json".encode()),
        ("Can't decode message body", "JSONDecodeError"),
        task=None,
    ),
    Case(
        "protocol-1-without-id",
        lambda s: s.raw(json.dumps({"task": ACTIVATE_TASK, "kwargs": {"run_id": s.token}}).encode()),
        (f"{INVALID} (id None): malformed message: KeyError: 'id'",),
    ),
    Case(
        "yaml-body",
        lambda s: s.raw(f"- [{s.token}]\n- {{}}\n- {{}}\n".encode(), s.headers(), content_type="application/x-yaml"),
        (INVALID, "Refusing to deserialize untrusted content of type yaml"),
    ),
]


def pickle_by_celery(sender: Sender) -> str:
    """A pickled activation as Celery sends one when told to (``serializer="pickle"``)."""
    sender.task(ACTIVATE_TASK, Marker(sender.marker), serializer="pickle")
    return str(sender.marker)  # the log line dumps the body, which quotes it


def pickle_step_raw(sender: Sender) -> str:
    """A pickled step message published with kombu, with proper task headers."""
    body = pickle.dumps(([Marker(sender.marker), 1, NOTE], {}, {}))
    sender.raw(body, sender.headers(STEP_TASK), content_type=PICKLE, content_encoding="binary", queue=STEP_QUEUE)
    return str(sender.marker)


def pickle_headerless_raw(sender: Sender) -> str:
    """A pickle with no headers at all (protocol 1 keeps the task name in the body)."""
    body = pickle.dumps({"task": ACTIVATE_TASK, "id": sender.token, "args": [Marker(sender.marker)], "kwargs": {}})
    sender.raw(body, content_type=PICKLE, content_encoding="binary")
    return str(sender.marker)


UNTRUSTED = "Refusing to deserialize untrusted content of type pickle"

PICKLE_CASES = [
    Case("pickle-activate-by-celery", pickle_by_celery, ("Received invalid task message", UNTRUSTED)),
    Case("pickle-step-raw", pickle_step_raw, ("Received invalid task message", UNTRUSTED), task=STEP_TASK),
    Case("pickle-headerless-raw", pickle_headerless_raw, ("Can't decode message body", UNTRUSTED), task=None),
]

CASES = ACTIVATE_CASES + STEP_CASES + OTHER_TASK_CASES + RAW_CASES + PICKLE_CASES


def recorded(storage: StorageBackend, run_ids: list[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Every run id in storage, and everything recorded about ``run_ids``."""

    async def read() -> tuple[list[str], list[tuple[Any, ...]]]:
        page = await storage.list_runs(limit=1000)
        assert page.next_cursor is None
        runs = []
        for run_id in run_ids:
            runs.append(
                (
                    await storage.get_run(run_id),
                    await storage.get_events(run_id),
                    await storage.get_messages(run_id, pending_only=False),
                    await storage.get_timer(run_id),
                )
            )
        return sorted(run.run_id for run in page.runs), runs

    return PROCESS_LOOP.run(read())


def unacked_on_redis(app: Any, task_ids: list[str]) -> bool:
    """Whether a Redis broker still holds one of these task messages unacknowledged (its
    ``unacked`` hash keeps each message's envelope, headers in clear)."""
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        return any(task_id.encode() in value for value in client.hvals("unacked") for task_id in task_ids)
    finally:
        client.close()


def test_a_marker_pickle_creates_its_file_when_unpickled(tmp_path: Path) -> None:
    """The control for the pickle cases: their payload really would leave a trace."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps([Marker(marker)]))
    assert marker.is_dir()


def test_the_catalogue_has_every_case_once() -> None:
    assert len({case.id for case in CASES}) == len(CASES) >= 50


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_message_is_refused_and_the_worker_keeps_serving(
    case: Case, celery_app: Any, storage: StorageBackend, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="pyworkflow")
    done = start(add_three, 1)
    assert wait_for_result(done, timeout=20) == 4
    asleep = start(sleeper, f"bad-message-{os.urandom(4).hex()}", 3600.0)
    wait_until(lambda: (run := get_run(asleep)) is not None and run.status == "suspended", 20, "the run asleep")
    before = recorded(storage, [done, asleep])

    sender = Sender(celery_app, asleep, tmp_path / "unpickled", f"bad-message-{os.urandom(8).hex()}")
    quoted = case.send(sender) or sender.token

    named = (*case.named, case.task) if case.task is not None else case.named

    def logged() -> bool:
        for record in list(caplog.records):
            text = record.getMessage()
            if quoted in text and all(part in text for part in named):
                return True
        return False

    wait_until(logged, 20, f"a log line quoting {quoted[:80]!r} and naming {named}")
    if celery_app.conf.broker_url.startswith("redis://"):
        wait_until(lambda: not unacked_on_redis(celery_app, sender.ids), 20, "the message acknowledged or rejected")
    assert recorded(storage, [done, asleep]) == before

    after = start(add_three, 2)
    assert wait_for_result(after, timeout=20) == 5
    runs, states = recorded(storage, [done, asleep])
    assert runs == sorted([done, asleep, after]) and states == before[1]
    assert not sender.marker.exists(), "a pickle was unpickled"
