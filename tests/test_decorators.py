import pytest

from pyworkflow import step, workflow
from pyworkflow.registry import get_step, get_workflow
from pyworkflow.testing import start_local


@step
async def bare_step(x: int) -> int:
    return x * 2


@step(name="named.step", max_retries=1)
async def called_step(x: int) -> int:
    return x


@workflow
async def bare_workflow() -> int:
    return 1


@workflow(name="named.workflow", max_duration="1h")
async def called_workflow() -> int:
    return 2


def test_both_forms_register_under_the_right_names() -> None:
    assert get_workflow("bare_workflow").fn.__name__ == "bare_workflow"
    assert get_workflow("named.workflow").max_duration is not None
    assert get_step("bare_step") is not None
    step_def = get_step("named.step")
    assert step_def is not None and step_def.retry.max_retries == 1
    assert bare_step.__name__ == "bare_step" and called_workflow.__name__ == "called_workflow"


def test_non_async_functions_are_refused_by_name() -> None:
    def plain() -> None: ...

    with pytest.raises(TypeError, match="plain"):
        workflow(plain)
    with pytest.raises(TypeError, match="plain"):
        step()(plain)


def test_two_functions_under_one_name_is_an_error() -> None:
    async def first() -> None: ...

    async def second() -> None: ...

    workflow(name="clash.name")(first)
    with pytest.raises(ValueError, match="clash.name"):
        workflow(name="clash.name")(second)
    workflow(name="clash.name")(first)  # the same function again is fine (a re-import)


def test_bad_options_fail_at_decoration() -> None:
    async def fn() -> None: ...

    with pytest.raises(ValueError, match="soon"):
        step(retry_delay="soon")(fn)
    with pytest.raises(ValueError, match="max_retries"):
        step(max_retries=-1)(fn)
    with pytest.raises(ValueError, match="forever"):
        workflow(max_duration="forever")(fn)


async def test_steps_and_workflows_outside_a_run_are_plain_coroutines() -> None:
    assert await bare_step(21) == 42
    assert await called_workflow() == 2


async def test_bad_arguments_are_refused_at_the_call(memory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="bare_workflow"):
        await start_local(bare_workflow, 1, storage=memory)
    assert (await memory.list_runs()).runs == []

    @workflow(name="calls_step_badly")
    async def calls_badly() -> int:
        return await bare_step(1, 2)  # type: ignore[call-arg]

    run_id = await start_local(calls_badly, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed"
    assert run.error is not None and "bare_step" in run.error["message"]
    assert not any(e.type == "step.started" for e in await memory.get_events(run_id))
