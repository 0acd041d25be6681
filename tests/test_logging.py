import json
import logging
from pathlib import Path

from pyworkflow import configure_logging, get_logger, step, workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import start_local

log = get_logger("orders")


@step
async def charge(amount: int) -> int:
    log.info("charging", amount=amount)
    return amount


@workflow(name="logging.flow")
async def logged(amount: int) -> int:
    log.warning("starting", amount=amount)
    return await charge(amount)


async def test_logs_carry_run_and_step_context_and_leave_root_alone(tmp_path: Path) -> None:
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    logfile = tmp_path / "pyworkflow.log"
    storage = InMemoryStorageBackend()
    try:
        configure_logging(level="DEBUG", log_file=str(logfile), json_logs=True)
        run_id = await start_local(logged, 5, storage=storage)
    finally:
        configure_logging(level="WARNING")
    assert root.handlers == root_handlers and root.level == root_level
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    charging = next(line for line in lines if line["event"] == "charging")
    assert charging["run_id"] == run_id and charging["workflow"] == "logging.flow"
    assert charging["step"] == "charge" and charging["attempt"] == 1 and charging["amount"] == 5
    assert charging["logger"] == "orders" and charging["level"] == "info"
    starting = next(line for line in lines if line["event"] == "starting")
    assert starting["run_id"] == run_id and "step" not in starting
    assert any(line["event"] == "workflow_completed" and line["run_id"] == run_id for line in lines)

    recorded = [(e.type, e.data["message"]) for e in await storage.get_events(run_id) if e.type.startswith("log.")]
    assert recorded == [("log.warning", "starting"), ("log.info", "charging")]


async def test_show_context_false_and_text_output(tmp_path: Path) -> None:
    logfile = tmp_path / "plain.log"
    try:
        configure_logging(level="INFO", log_file=str(logfile), show_context=False)
        await start_local(logged, 1, storage=InMemoryStorageBackend())
    finally:
        configure_logging(level="WARNING")
    text = logfile.read_text()
    assert "starting" in text and "run_id" not in text


def test_bad_level_is_a_clear_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="LOUD"):
        configure_logging(level="LOUD")
