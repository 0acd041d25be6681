"""The ``filesystem://`` broker (``make demo``): a consumer polling while producers write
never takes a message half-written. kombu's own transport opens the message file and
then writes it, so a consumer could take it empty and stop on a JSONDecodeError with the
message lost; ours writes it under another name and renames it into place."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue
from kombu.transport import filesystem as kombu_filesystem

import pyworkflow.celery.factory as factory
from pyworkflow.celery import Settings, create_app
from pyworkflow.celery.filesystem import PARTIAL_SUFFIX, TRANSPORT

MESSAGES = 3000
QUEUE = "pyworkflow.workflows"


def folders(tmp_path: Path) -> dict[str, Any]:
    queue, control = tmp_path / "queue", tmp_path / "control"
    queue.mkdir(parents=True)
    control.mkdir(parents=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "store_processed": False,
    }


def race(transport: Any, options: dict[str, Any]) -> tuple[list[int], list[BaseException]]:
    """Two producers publish while one consumer polls as fast as it can; what it got,
    and what it raised."""
    received: list[int] = []
    errors: list[BaseException] = []
    published = threading.Event()
    queue = Queue(QUEUE, routing_key=QUEUE)

    def produce(start: int) -> None:
        with Connection("filesystem://", transport=transport, transport_options=options) as conn:
            producer = conn.Producer(serializer="json")
            for i in range(start, MESSAGES, 2):
                producer.publish({"i": i}, routing_key=QUEUE, declare=[queue])

    def consume() -> None:
        with Connection("filesystem://", transport=transport, transport_options=options) as conn:
            simple = conn.SimpleQueue(queue)
            while len(received) < MESSAGES:
                all_published = published.is_set()  # before looking: an empty look after it is final
                try:
                    message = simple.get_nowait()
                except simple.Empty:
                    if all_published:
                        return
                    continue
                except Exception as exc:  # noqa: BLE001 - what the worker would die of
                    errors.append(exc)
                    return
                received.append(message.payload["i"])
                message.ack()

    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        queue(conn.default_channel).declare()
    consumer = threading.Thread(target=consume)
    consumer.start()
    producers = [threading.Thread(target=produce, args=(n,)) for n in (0, 1)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join(60)
    published.set()
    consumer.join(60)
    assert not consumer.is_alive()
    return received, errors


def test_a_polling_consumer_gets_every_message_whole(tmp_path: Path) -> None:
    received, errors = race(TRANSPORT, folders(tmp_path))
    assert errors == []
    assert sorted(received) == list(range(MESSAGES))
    assert not list(tmp_path.glob(f"queue/*{PARTIAL_SUFFIX}"))


def poll_while_publishing(transport: Any, options: dict[str, Any], between: Callable[[Callable[[], Any]], None]) -> Any:
    """Publish one message with ``transport`` while ``between(poll)`` makes a consumer
    poll at the moment it chooses; returns what a last poll finds afterwards."""
    queue = Queue(QUEUE, routing_key=QUEUE)
    with Connection("filesystem://", transport=transport, transport_options=options) as conn:
        with Connection("filesystem://", transport=transport, transport_options=options) as other:
            simple = other.SimpleQueue(queue)  # declares the queue

            def poll() -> Any:
                try:
                    message = simple.get_nowait()
                    message.ack()  # else closing the connection puts it back
                    return message.payload
                except simple.Empty:
                    return "empty"
                except Exception as exc:  # noqa: BLE001 - what a worker would die of
                    return exc

            between(poll)
            conn.Producer(serializer="json").publish({"i": 1}, routing_key=QUEUE)
            return poll()


def test_a_consumer_polling_mid_write_finds_nothing_then_the_whole_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    rename = os.replace

    def between(poll: Callable[[], Any]) -> None:
        def poll_then_rename(src: Any, dst: Any) -> None:  # written, not yet in place
            if str(dst).endswith(f".{QUEUE}.msg"):
                seen.append(poll())
            rename(src, dst)

        monkeypatch.setattr(os, "replace", poll_then_rename)

    assert poll_while_publishing(TRANSPORT, folders(tmp_path), between) == {"i": 1}
    assert seen == ["empty"]


def test_kombu_s_own_transport_hands_out_a_message_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race ours closes, made to happen on kombu's: a poll between its open and its
    write takes the empty file (the message is lost, and a worker stops on the error). If
    kombu ever fixes it, this fails and our transport can go."""
    seen: list[Any] = []
    lock = kombu_filesystem.lock

    def between(poll: Callable[[], Any]) -> None:
        def lock_then_poll(handle: Any, flags: int) -> None:  # opened, not yet written
            lock(handle, flags)
            if handle.name.endswith(f".{QUEUE}.msg"):
                seen.append(poll())

        monkeypatch.setattr(kombu_filesystem, "lock", lock_then_poll)

    assert poll_while_publishing(kombu_filesystem.Transport, folders(tmp_path), between) == "empty"  # lost
    (error,) = seen
    assert isinstance(error, json.JSONDecodeError), error


def test_apps_on_a_filesystem_broker_publish_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "_installed", factory._installed)  # restored after the test
    app = create_app("pyworkflow-fs", settings=Settings(broker_url=f"filesystem://{tmp_path / 'broker'}"))
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "pyworkflow.celery.filesystem"
    app.pyworkflow.send_activation("some-run", new=True)
    (message,) = (tmp_path / "broker" / "queue").glob(f"*.{QUEUE}.msg")
    assert b"some-run" in message.read_bytes()
