"""One value policy, refused where the value enters: non-finite floats, NUL characters,
lone surrogates and over-long idempotency keys raise a SerializationError naming the
argument (start(), the step call, the recorded result); a result that does not match its
return annotation is refused before it is recorded. Backend-level proofs (every backend
refuses alike) are in tests/storage/test_value_policy.py."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import BaseModel

from pyworkflow import FatalError, SerializationError, step, workflow
from pyworkflow.errors import PyWorkflowError
from pyworkflow.serialization import MAX_KEY_LENGTH, Signature, encode
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import start_local

BAD_VALUES = [
    pytest.param(math.nan, "not finite", id="nan"),
    pytest.param(math.inf, "not finite", id="inf"),
    pytest.param(-math.inf, "not finite", id="-inf"),
    pytest.param("a\x00b", "NUL", id="nul"),
    pytest.param("a\ud800b", "surrogate", id="lone-surrogate"),
    pytest.param({"deep": [1, {"x": math.nan}]}, "not finite", id="nested-nan"),
    pytest.param(["ok", "é\x00"], "NUL", id="nested-nul"),
    pytest.param({"k\udc00": 1}, "surrogate", id="surrogate-key"),
]


# -- the error type ---------------------------------------------------------------------------


def test_serialization_error_is_a_type_error_and_a_pyworkflow_error() -> None:
    assert issubclass(SerializationError, TypeError)
    assert issubclass(SerializationError, PyWorkflowError)
    assert issubclass(SerializationError, ValueError)  # what json.dumps raises for NaN
    with pytest.raises(TypeError):
        encode(object(), what="x")


# -- workflow arguments at start() ---------------------------------------------------------------


@workflow(name="policy.takes")
async def takes(value: Any, label: str = "") -> str:
    return "ran"


@workflow(name="policy.takes_float")
async def takes_float(x: float) -> float:
    return x


@workflow(name="policy.takes_str")
async def takes_str(x: str) -> str:
    return x


@pytest.mark.parametrize(("value", "words"), BAD_VALUES)
async def test_bad_workflow_argument_is_refused_at_start(
    memory: InMemoryStorageBackend, value: Any, words: str
) -> None:
    with pytest.raises(SerializationError, match=words) as info:
        await start_local(takes, value, storage=memory)
    assert "policy.takes" in str(info.value) and "'value'" in str(info.value)
    with pytest.raises(SerializationError, match="'label'"):
        await start_local(takes, 1, label=value, storage=memory)
    assert (await memory.list_runs()).runs == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_non_finite_float_of_a_float_parameter_is_refused(memory: InMemoryStorageBackend, value: float) -> None:
    # The fast path for plain scalars of their declared type must check them too.
    with pytest.raises(SerializationError, match="'x'.*not finite"):
        await start_local(takes_float, value, storage=memory)
    assert (await memory.list_runs()).runs == []


@pytest.mark.parametrize("value", ["\x00", "nul \x00 inside", "\ud800", "é\udfff"])
async def test_bad_string_of_a_str_parameter_is_refused(memory: InMemoryStorageBackend, value: str) -> None:
    with pytest.raises(SerializationError, match="'x'"):
        await start_local(takes_str, value, storage=memory)
    assert (await memory.list_runs()).runs == []


async def test_except_type_error_catches_a_refused_argument(memory: InMemoryStorageBackend) -> None:
    try:
        await start_local(takes, math.nan, storage=memory)
    except TypeError as exc:
        assert isinstance(exc, SerializationError)
    else:
        raise AssertionError("NaN was accepted")


@pytest.mark.parametrize(
    "value",
    ["plain", "é ü 中文 😀", "a literal \\u0000 is six characters", "\\\\x00", 1.5, -0.0, 10**30, [None, True]],
)
async def test_good_values_pass_unchanged(memory: InMemoryStorageBackend, value: Any) -> None:
    run_id = await start_local(takes, value, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None
    assert run.status == "completed", run.error
    assert run.input["args"] == [value]


@workflow(name="policy.typed_arg")
async def typed_arg(n: int, d: dict[str, int]) -> int:
    return n


async def test_argument_that_would_not_decode_is_refused_at_start(memory: InMemoryStorageBackend) -> None:
    with pytest.raises(SerializationError, match="'n'"):
        await start_local(typed_arg, "seven", {"a": 1}, storage=memory)
    with pytest.raises(SerializationError, match="'d'"):
        await start_local(typed_arg, 7, None, storage=memory)
    assert (await memory.list_runs()).runs == []


# -- idempotency keys at start() -------------------------------------------------------------------


async def test_idempotency_keys_over_the_limit_or_with_bad_characters_are_refused(
    memory: InMemoryStorageBackend,
) -> None:
    assert MAX_KEY_LENGTH == 255
    with pytest.raises(SerializationError, match="10240 characters long; the limit is 255") as info:
        await start_local(takes, 1, idempotency_key="k" * 10240, storage=memory)
    assert "idempotency_key" in str(info.value) and "policy.takes" in str(info.value)
    with pytest.raises(SerializationError, match="256 characters"):
        await start_local(takes, 1, idempotency_key="k" * 256, storage=memory)
    with pytest.raises(SerializationError, match="idempotency_key.*NUL"):
        await start_local(takes, 1, idempotency_key="order\x001", storage=memory)
    with pytest.raises(SerializationError, match="idempotency_key.*surrogate"):
        await start_local(takes, 1, idempotency_key="order\ud8001", storage=memory)
    assert (await memory.list_runs()).runs == []
    run_id = await start_local(takes, 1, idempotency_key="k" * 255, storage=memory)
    again = await start_local(takes, 1, idempotency_key="k" * 255, storage=memory)
    assert again == run_id


# -- step arguments at the step call --------------------------------------------------------------


@step
async def step_takes(value: Any) -> str:
    return "ran"


@workflow(name="policy.step_args")
async def step_args(kind: str) -> str:
    bad: Any = {"nan": math.nan, "nul": "x\x00", "surrogate": "\ud800", "nested": {"a": [math.inf]}}[kind]
    try:
        await step_takes(bad)
    except SerializationError as exc:
        return str(exc)
    return "accepted?"


@pytest.mark.parametrize("kind", ["nan", "nul", "surrogate", "nested"])
async def test_bad_step_argument_is_refused_at_the_step_call(memory: InMemoryStorageBackend, kind: str) -> None:
    run_id = await start_local(step_args, kind, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None
    assert run.status == "completed", run.error
    assert "step_takes" in run.result and "'value'" in run.result and "cannot be stored" in run.result
    assert not any(e.type == "step.started" for e in await memory.get_events(run_id))


# -- step and workflow results when recorded ----------------------------------------------------


class Reading(BaseModel):
    value: float


@step
async def returns_bad(kind: str) -> Any:
    return {"nan": math.nan, "nul": "x\x00", "surrogate": ["\udc80"], "inf": {"x": math.inf}}[kind]


@step
async def returns_bad_model() -> Reading:
    return Reading(value=math.nan)


@step
async def returns_nan_float() -> float:
    return math.nan


@workflow(name="policy.step_results")
async def step_results(kind: str) -> str:
    try:
        if kind == "model":
            await returns_bad_model()
        elif kind == "float":
            await returns_nan_float()
        else:
            await returns_bad(kind)
    except SerializationError as exc:
        return str(exc)
    return "accepted?"


async def _step_outcomes(memory: InMemoryStorageBackend, run_id: str) -> list[tuple[str, int]]:
    return [
        (e.type, e.data["attempt"])
        for e in await memory.get_events(run_id)
        if e.type in ("step.completed", "step.failed", "step.retrying")
    ]


@pytest.mark.parametrize("kind", ["nan", "nul", "surrogate", "inf", "model", "float"])
async def test_bad_step_result_fails_the_step_once_and_the_workflow_sees_it(
    memory: InMemoryStorageBackend, kind: str
) -> None:
    run_id = await start_local(step_results, kind, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None
    assert run.status == "completed", run.error
    assert "return value" in run.result, run.result
    assert await _step_outcomes(memory, run_id) == [("step.failed", 1)]  # a bug: never retried
    for event in await memory.get_events(run_id):
        json.dumps(event.data, allow_nan=False).encode()


@workflow(name="policy.bad_result")
async def bad_result(kind: str) -> Any:
    return {"nan": math.nan, "nul": "\x00", "surrogate": "\ud800", "list": [1, -math.inf]}[kind]


@pytest.mark.parametrize("kind", ["nan", "nul", "surrogate", "list"])
async def test_bad_workflow_result_fails_the_run_clearly(memory: InMemoryStorageBackend, kind: str) -> None:
    run_id = await start_local(bad_result, kind, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "pyworkflow.errors.SerializationError"
    assert "policy.bad_result" in run.error["message"] and "return value" in run.error["message"]
    assert run.result is None
    assert not any(e.type == "workflow.completed" for e in await memory.get_events(run_id))


# -- results that do not match their annotation ----------------------------------------------------


@step
async def says_dict() -> dict:  # type: ignore[type-arg]
    return None  # type: ignore[return-value]


@step
async def says_int_gives_str() -> int:
    return "5"  # type: ignore[return-value]


@step
async def says_int_gives_word() -> int:
    return "seven"  # type: ignore[return-value]


@step
async def says_str_gives_int() -> str:
    return 5  # type: ignore[return-value]


@step
async def says_model_gives_junk() -> Reading:
    return {"value": "high"}  # type: ignore[return-value]


@step
async def says_model_gives_dict() -> Reading:
    return {"value": 1.5}  # type: ignore[return-value]


@step
async def says_int() -> int:
    return 5


MISMATCHED = {
    "dict": (says_dict, "dict"),
    "int-str": (says_int_gives_str, "int"),
    "int-word": (says_int_gives_word, "int"),
    "str-int": (says_str_gives_int, "str"),
    "model": (says_model_gives_junk, "Reading"),
}


@workflow(name="policy.mismatch")
async def mismatch(kind: str) -> str:
    try:
        await MISMATCHED[kind][0]()
    except SerializationError as exc:
        return str(exc)
    return "accepted?"


@pytest.mark.parametrize("kind", sorted(MISMATCHED))
async def test_result_not_matching_its_annotation_is_refused_before_it_is_recorded(
    memory: InMemoryStorageBackend, kind: str
) -> None:
    fn, annotation = MISMATCHED[kind]
    run_id = await start_local(mismatch, kind, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None
    assert run.status == "completed", run.error
    message = run.result
    assert fn.__qualname__ in message and f"annotation {annotation}" in message, message
    assert await _step_outcomes(memory, run_id) == [("step.failed", 1)]


@workflow(name="policy.lax_ok")
async def lax_ok() -> float:
    reading = await says_model_gives_dict()  # a dict for a model: decodes, so accepted
    assert isinstance(reading, Reading)
    return reading.value + await says_int()


async def test_results_that_decode_into_their_annotation_are_accepted(memory: InMemoryStorageBackend) -> None:
    run_id = await start_local(lax_ok, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None
    assert run.status == "completed", run.error
    assert run.result == 6.5


@workflow(name="policy.workflow_says_dict")
async def workflow_says_dict() -> dict:  # type: ignore[type-arg]
    return None  # type: ignore[return-value]


@workflow(name="policy.workflow_says_int")
async def workflow_says_int() -> int:
    return "7"  # type: ignore[return-value]


@pytest.mark.parametrize(("wf", "annotation"), [(workflow_says_dict, "dict"), (workflow_says_int, "int")])
async def test_workflow_result_not_matching_its_annotation_fails_the_run(
    memory: InMemoryStorageBackend, wf: Any, annotation: str
) -> None:
    run_id = await start_local(wf, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "pyworkflow.errors.SerializationError"
    assert f"annotation {annotation}" in run.error["message"] and "return value" in run.error["message"]


def test_signature_fast_path_still_refuses_a_mismatched_scalar() -> None:
    async def fn(x: int) -> int:
        return x

    sig = Signature(fn, "fn")
    assert sig.encode_result(3) == 3
    with pytest.raises(SerializationError, match="annotation int"):
        sig.encode_result("3")
    with pytest.raises(SerializationError, match="not finite"):
        Signature(lambda: None, "g").encode_result(math.nan)


@step
async def raises_with_nul() -> int:
    raise FatalError("bad byte \x00 and \ud800 in the message")


@workflow(name="policy.fails_with_nul")
async def fails_with_nul() -> int:
    return await raises_with_nul()


async def test_a_failure_whose_message_holds_a_nul_is_still_recorded(memory: InMemoryStorageBackend) -> None:
    run_id = await start_local(fails_with_nul, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.error is not None
    assert run.status == "failed"
    assert run.error["message"] == "bad byte \\x00 and \\ud800 in the message"
