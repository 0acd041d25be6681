"""Typed JSON: values come back as the types the functions declare, across replay."""

import dataclasses
import enum
import json
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from pydantic import BaseModel, ConfigDict

from pyworkflow import SerializationError, sleep, step, workflow
from pyworkflow.storage.memory import InMemoryStorageBackend
from pyworkflow.testing import run_local, start_local


class Color(enum.Enum):
    RED = "red"


class Item(BaseModel):
    sku: str
    price: Decimal


@dataclasses.dataclass
class Box:
    items: list[Item]
    made: date


class Receipt(BaseModel):
    # A model's own config governs its bytes fields; base64 keeps any bytes JSON-safe.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    box: Box
    when: datetime
    ids: tuple[uuid.UUID, int]
    color: Color
    blob: bytes
    by_sku: dict[str, Item]


seen_types: list[tuple[type, ...]] = []


@step
async def make_receipt(box: Box, when: datetime, ident: uuid.UUID, blob: bytes) -> Receipt:
    seen_types.append((type(box), type(box.items[0]), type(when), type(ident), type(blob)))
    return Receipt(box=box, when=when, ids=(ident, 7), color=Color.RED, blob=blob, by_sku={i.sku: i for i in box.items})


@workflow(name="serial.receipt")
async def receipt_flow(box: Box, when: datetime, ident: uuid.UUID, blob: bytes) -> dict[str, object]:
    receipt = await make_receipt(box, when, ident, blob)
    await sleep("1s")  # the rest runs in a later activation: the receipt comes from the log
    assert isinstance(receipt, Receipt) and isinstance(receipt.box, Box)
    assert isinstance(receipt.box.items[0].price, Decimal)
    assert receipt.ids[0] == ident and receipt.color is Color.RED and receipt.blob == blob
    return {"total": sum(i.price for i in receipt.box.items), "when": receipt.when, "id": ident}


async def test_rich_types_round_trip_across_replay(memory: InMemoryStorageBackend) -> None:
    box = Box(items=[Item(sku="a", price=Decimal("1.10")), Item(sku="b", price=Decimal("2.25"))], made=date(2030, 1, 2))
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    ident = uuid.uuid4()
    run_id = await run_local(receipt_flow, box, when, ident, b"\x00\xffbinary", storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "completed", run.error
    assert run.result == {"total": "3.35", "when": "2030-01-02T03:04:05Z", "id": str(ident)}
    assert seen_types == [(Box, Item, datetime, uuid.UUID, bytes)]
    for event in await memory.get_events(run_id):
        json.dumps(event.data)  # JSON only in storage


class Opaque:
    pass


@workflow(name="serial.refuses")
async def refuses(thing: object) -> None:
    return None


@step
async def takes_anything(label: str, thing: object) -> None:
    return None


@workflow(name="serial.step_refuses")
async def step_refuses() -> str:
    try:
        await takes_anything("x", thing=Opaque())
    except SerializationError as exc:
        return str(exc)
    return "accepted?"


@step
async def returns_opaque() -> object:
    return Opaque()


@workflow(name="serial.bad_result")
async def bad_result() -> None:
    await returns_opaque()


async def test_unencodable_values_are_refused_at_the_call_naming_the_argument(memory: InMemoryStorageBackend) -> None:
    with pytest.raises(SerializationError) as info:
        await start_local(refuses, Opaque(), storage=memory)
    assert "serial.refuses" in str(info.value) and "'thing'" in str(info.value)
    assert (await memory.list_runs()).runs == []

    run_id = await start_local(step_refuses, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.result is not None
    assert "takes_anything" in run.result and "'thing'" in run.result
    assert not any(e.type == "step.started" for e in await memory.get_events(run_id))

    run_id = await start_local(bad_result, storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.status == "failed" and run.error is not None
    assert run.error["type"] == "pyworkflow.errors.SerializationError" and "return value" in run.error["message"]


@dataclasses.dataclass
class Packet:
    payload: bytes
    parts: tuple[bytes, ...]


@step
async def echo_packet(packet: Packet, raw: bytes) -> tuple[Packet, bytes]:
    return packet, raw


@workflow(name="serial.bytes")
async def bytes_flow(packet: Packet) -> bool:
    got, raw = await echo_packet(packet, b"\xfe\xff")
    await sleep("1s")
    return isinstance(got, Packet) and got.parts == (b"\x00", b"\xff") and raw == b"\xfe\xff"


async def test_binary_data_outside_models_is_base64(memory: InMemoryStorageBackend) -> None:
    run_id = await run_local(bytes_flow, Packet(payload=b"\x80\x81", parts=(b"\x00", b"\xff")), storage=memory)
    run = await memory.get_run(run_id)
    assert run is not None and run.result is True, run.error
