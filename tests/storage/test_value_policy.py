"""The value policy at the storage boundary, proved on every backend: a message payload,
kind or key and a run's result or error that hold a non-finite float, a NUL character
or a lone surrogate (or a key over the length limit) are refused alike, with a
SerializationError naming them, before anything is written; values that are fine
(non-ASCII text, a literal backslash-u) are stored and read back unchanged."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pyworkflow.errors import SerializationError
from pyworkflow.serialization import MAX_KEY_LENGTH
from pyworkflow.storage.base import StorageBackend
from tests.storage.test_contract import ev, new_run

BAD = [
    pytest.param(math.nan, "not finite", id="nan"),
    pytest.param(math.inf, "not finite", id="inf"),
    pytest.param({"a": [1, -math.inf]}, "not finite", id="nested-inf"),
    pytest.param("nul \x00 here", "NUL", id="nul"),
    pytest.param({"k": ["x", "\x00"]}, "NUL", id="nested-nul"),
    pytest.param({"k\x00": 1}, "NUL", id="nul-key"),
    pytest.param("\ud800", "surrogate", id="surrogate"),
    pytest.param(["é", "a\udfffb"], "surrogate", id="nested-surrogate"),
]

GOOD = [
    "é ü 中文 😀",
    "a literal \\u0000 is six characters",
    {"\\u0000": "\\\\\\u0000", "t": "\t\n\x01"},
    [1.5, -0.0, 10**20, None, True, "ok"],
]


@pytest.mark.parametrize(("payload", "words"), BAD)
async def test_bad_message_payload_is_refused_alike(storage: StorageBackend, payload: Any, words: str) -> None:
    run = await new_run(storage)
    with pytest.raises(SerializationError, match=f"payload of message 'signal'.*{words}"):
        await storage.post_message(run.run_id, "signal", payload)
    assert await storage.get_messages(run.run_id, pending_only=False) == []


@pytest.mark.parametrize("payload", GOOD)
async def test_good_message_payload_round_trips(storage: StorageBackend, payload: Any) -> None:
    run = await new_run(storage)
    await storage.post_message(run.run_id, "signal", payload)
    [message] = await storage.get_messages(run.run_id)
    assert message.payload == payload


@pytest.mark.parametrize(
    ("kind", "key", "words"),
    [
        ("sig\x00nal", None, "kind.*NUL"),
        ("sig\ud800", None, "kind.*surrogate"),
        ("signal", "k\x00", "idempotency_key.*NUL"),
        ("signal", "k\udc00", "idempotency_key.*surrogate"),
        ("signal", "k" * 10240, f"10240 characters long; the limit is {MAX_KEY_LENGTH}"),
    ],
)
async def test_bad_message_kind_or_key_is_refused_alike(
    storage: StorageBackend, kind: str, key: str | None, words: str
) -> None:
    run = await new_run(storage)
    with pytest.raises(SerializationError, match=words):
        await storage.post_message(run.run_id, kind, {"ok": 1}, idempotency_key=key)
    assert await storage.get_messages(run.run_id, pending_only=False) == []
    await storage.post_message(run.run_id, "signal", 1, idempotency_key="k" * MAX_KEY_LENGTH)
    assert len(await storage.get_messages(run.run_id)) == 1


@pytest.mark.parametrize(("value", "words"), BAD)
async def test_bad_run_result_is_refused_alike(storage: StorageBackend, value: Any, words: str) -> None:
    run = await new_run(storage)
    with pytest.raises(SerializationError, match=f"run field 'result'.*{words}"):
        await storage.update_run(run.run_id, result=value)
    with pytest.raises(SerializationError, match=f"run field 'result'.*{words}"):
        await storage.append_events(run.run_id, [ev(2)], run_changes={"result": value})
    assert await storage.get_run(run.run_id) == run
    assert len(await storage.get_events(run.run_id)) == 1


async def test_run_error_text_is_escaped_alike_and_a_non_finite_float_refused(storage: StorageBackend) -> None:
    # An error describes an exception whose message may quote anything: a run must always
    # be able to record that it failed, so bad characters are escaped, not refused.
    run = await new_run(storage)
    error = {"type": "x.Boom", "message": "byte \x00 and \ud800 in é", "traceback": ["\x00"]}
    await storage.append_events(run.run_id, [ev(2)], run_changes={"status": "failed", "error": error})
    got = await storage.get_run(run.run_id)
    assert got is not None and got.error == {
        "type": "x.Boom",
        "message": "byte \\x00 and \\ud800 in é",
        "traceback": ["\\x00"],
    }
    with pytest.raises(SerializationError, match="run field 'error'.*not finite"):
        await storage.update_run(run.run_id, error={"message": math.nan})


@pytest.mark.parametrize("value", GOOD)
async def test_good_run_result_round_trips(storage: StorageBackend, value: Any) -> None:
    run = await new_run(storage)
    await storage.append_events(run.run_id, [ev(2)], run_changes={"result": value})
    got = await storage.get_run(run.run_id)
    assert got is not None and got.result == value


async def test_an_error_text_with_nul_and_surrogates_is_recorded_on_every_backend(storage: StorageBackend) -> None:
    from pyworkflow.replay import describe_error

    run = await new_run(storage)
    error = describe_error(RuntimeError("bad\x00byte and \ud800 half"))
    await storage.append_events(
        run.run_id, [ev(2, "workflow.failed", error=error)], run_changes={"status": "failed", "error": error}
    )
    stored = await storage.get_run(run.run_id)
    assert stored is not None and stored.error is not None
    assert stored.error["message"] == "bad\\x00byte and \\ud800 half"
    assert (await storage.get_events(run.run_id))[-1].data["error"]["message"] == stored.error["message"]
