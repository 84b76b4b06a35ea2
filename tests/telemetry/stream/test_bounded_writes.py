"""Bounded writes (issue 11): a truck's CommandAcks are stored only for commands it was sent, small, once per
outcome, in a capped stream; nothing a truck sends on its own grows the store."""

from __future__ import annotations

import asyncio
import json

import grpc
import redis.asyncio

from haulmesh.telemetry.v1 import frame_pb2, stream_pb2, telemetry_service_pb2, telemetry_service_pb2_grpc
from services.runtime import new_id
from services.telemetry import metrics
from services.telemetry.config import TelemetryConfig
from services.telemetry.store import TelemetryStore
from services.telemetry.usecases import Streams
from tests.conftest import wait_for
from tests.trucks import Truck

from ..helpers import Session, TelemetryProcess, batch


def _ack(command_id: str, outcome: int = stream_pb2.CommandAck.OUTCOME_ACCEPTED,
         detail: str = "") -> stream_pb2.StreamTelemetryRequest:
    ack = stream_pb2.CommandAck(command_id=command_id, outcome=outcome, detail=detail)
    ack.device_time.GetCurrentTime()
    return stream_pb2.StreamTelemetryRequest(command_ack=ack)


async def _acks_then_frame(session: Session, truck: Truck, sequence: int,
                           *acks: stream_pb2.StreamTelemetryRequest) -> None:
    """Send ``acks`` then a frame, and wait for the frame's Ack: the stream reads in order, so by then every
    CommandAck before it was handled."""
    for ack in acks:
        session.send(ack)
    session.send(batch([truck.frame(sequence)]))
    await wait_for(lambda: session.acked_through >= sequence, timeout_seconds=30)


async def test_command_acks_only_for_commands_sent_small_and_once_per_outcome(
        telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    store = TelemetryStore(store_client)
    await store.enqueue_command(truck.vehicle_id, stream_pb2.Command(
        command_id="01JCMDBOUND", stop=stream_pb2.StopVehicle(reason="test")))
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        await wait_for(lambda: session.of("command"), timeout_seconds=30)
        # Never sent to this truck: refused, nothing written (not even the command's bookkeeping).
        await _acks_then_frame(session, truck, 1, *(_ack(f"01JFORGED{i}") for i in range(20)))
        assert await store.command_acks(truck.vehicle_id) == []
        assert not await store_client.keys(f"telemetry:{{{truck.vehicle_id}}}:command:01JFORGED*")
        # Over the size cap: refused, and the command stays queued (it will be sent again).
        limit = TelemetryConfig().max_command_ack_bytes
        await _acks_then_frame(session, truck, 2, _ack("01JCMDBOUND", detail="x" * (limit + 1)))
        assert await store.command_acks(truck.vehicle_id) == []
        assert await store_client.hget(f"telemetry:{{{truck.vehicle_id}}}:command_ids", "01JCMDBOUND")
        # A real answer is stored once per outcome however often it is repeated; the command leaves the queue.
        accepted, completed = stream_pb2.CommandAck.OUTCOME_ACCEPTED, stream_pb2.CommandAck.OUTCOME_COMPLETED
        await _acks_then_frame(session, truck, 3, *(_ack("01JCMDBOUND", accepted) for _ in range(5)),
                               *(_ack("01JCMDBOUND", completed) for _ in range(5)))
        stored = await store.command_acks(truck.vehicle_id)
        assert [(a.command_id, a.outcome) for a in stored] == [("01JCMDBOUND", accepted), ("01JCMDBOUND", completed)]
        assert not await store_client.hget(f"telemetry:{{{truck.vehicle_id}}}:command_ids", "01JCMDBOUND")
        await session.aclose()


async def test_command_acks_stream_is_capped(store_client: redis.asyncio.Redis, truck: Truck) -> None:
    """MAXLEN ~: however many commands a vehicle answers, its ack stream stays near its cap."""
    store = TelemetryStore(store_client, TelemetryConfig(command_acks_kept=100))
    for i in range(400):
        command_id = f"01JCAP{i:04d}"
        await store.enqueue_command(truck.vehicle_id, stream_pb2.Command(command_id=command_id))
        assert await store.ack_command(truck.vehicle_id, _ack(command_id).command_ack) == "stored"
    # Approximate trimming removes whole macro nodes (100 entries each by default): at most one node more.
    assert 100 <= await store_client.xlen(f"telemetry:{{{truck.vehicle_id}}}:command_acks") <= 200


def _ingest_request(truck: Truck, sequence: int) -> telemetry_service_pb2.IngestTelemetryRequest:
    request = telemetry_service_pb2.IngestTelemetryRequest(
        vehicle_id=truck.vehicle_id, state="enroute", sequence=sequence,
        position=frame_pb2.Position(lat=30.267153, lon=-97.743057, speed_kph=88.5))
    request.timestamp.GetCurrentTime()
    payload = frame_pb2.FramePayload(vehicle_id=truck.vehicle_id, sequence=sequence, device_time=request.timestamp,
                                     kind=frame_pb2.FramePayload.KIND_POSITION, position=request.position,
                                     vehicle_state=request.state)
    request.signature = truck.sign(payload.SerializeToString(deterministic=True))
    return request


async def test_ingest_telemetry_is_audited_once_per_truck_session_not_per_frame(
        telemetry: TelemetryProcess, truck: Truck, store_client: redis.asyncio.Redis) -> None:
    async with grpc.aio.secure_channel(telemetry.address, truck.credentials()) as channel:
        stub = telemetry_service_pb2_grpc.TelemetryServiceStub(channel)
        for sequence in range(1, 21):
            await stub.IngestTelemetry(_ingest_request(truck, sequence), timeout=30)
    entries = []
    for chain in await store_client.smembers("audit:chains"):  # every process's chain (runtime _audit.py)
        for _, fields in await store_client.xrange(chain):
            record = json.loads(fields[b"record"])
            if record["resource"] == f"vehicles/{truck.vehicle_id}":
                entries.append(record)
    assert len(entries) == 1, entries  # 20 frames, one entry: who wrote for the vehicle, and when
    assert entries[0]["method"].endswith("/IngestTelemetry")
    assert entries[0]["actor"] == f"spiffe://haulmesh.local/vehicle/{truck.vehicle_id}"
    assert (await TelemetryStore(store_client).counters(truck.vehicle_id))["stored"] == 20


async def test_command_acks_with_an_unknown_outcome_are_refused_unstored(store_client: redis.asyncio.Redis) -> None:
    """Proto3 enums are open: a truck may send outcome 0 (unspecified) or 9 (no such value). Neither is stored
    (nor its per-outcome marker), both are counted as malformed, the stream goes on and the command stays queued
    until a real answer. In process, on the real store: the count is read from this process's metrics."""
    config = TelemetryConfig()
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    vehicle_id = f"AU-TRK-{new_id()}"
    await store.enqueue_command(vehicle_id, stream_pb2.Command(
        command_id="01JCMDOUTCOME", stop=stream_pb2.StopVehicle(reason="test")))
    malformed = metrics.REFUSED_COMMAND_ACKS.labels("malformed")
    before = malformed._value.get()

    async def truck_sends():
        yield _ack("01JCMDOUTCOME", stream_pb2.CommandAck.OUTCOME_UNSPECIFIED)
        yield _ack("01JCMDOUTCOME", 9)
        await wait_for(lambda: malformed._value.get() - before >= 2, timeout_seconds=30)
        assert await store_client.hget(f"telemetry:{{{vehicle_id}}}:command_ids", "01JCMDOUTCOME")
        yield _ack("01JCMDOUTCOME", stream_pb2.CommandAck.OUTCOME_ACCEPTED)
        await asyncio.Event().wait()

    session = streams.open(vehicle_id)
    try:
        streams.serve(session, truck_sends(), {})

        async def answered() -> bool:
            return bool(await store.command_acks(vehicle_id))

        await wait_for(answered, timeout_seconds=30)
        stored = await store.command_acks(vehicle_id)
        assert [a.outcome for a in stored] == [stream_pb2.CommandAck.OUTCOME_ACCEPTED]
        fields = await store_client.hkeys(f"telemetry:{{{vehicle_id}}}:command:01JCMDOUTCOME")
        assert [f for f in fields if f.startswith(b"o:")] == [b"o:1"]
        assert malformed._value.get() - before == 2
    finally:
        await streams.close(session)
        await streams.shutdown()
        await store.close()


async def test_a_command_queued_longer_than_its_issued_marker_is_still_answered(
        store_client: redis.asyncio.Redis) -> None:
    """A truck away for more than 30 days: the command's issued marker (and bookkeeping) expired, but the command
    is still queued and sent on the next stream. Its answer is taken (the queue proves it was issued) and the
    command leaves the queue, rather than being refused as unknown and resent forever."""
    config = TelemetryConfig()
    store = TelemetryStore(store_client, config)
    streams = Streams(store, config)
    vehicle_id = f"AU-TRK-{new_id()}"
    await store.enqueue_command(vehicle_id, stream_pb2.Command(
        command_id="01JCMDOLD", stop=stream_pb2.StopVehicle(reason="test")))
    await store_client.delete(f"telemetry:{{{vehicle_id}}}:issued:01JCMDOLD",
                              f"telemetry:{{{vehicle_id}}}:command:01JCMDOLD")  # 30 days on: expired

    async def truck_sends():
        yield _ack("01JCMDOLD", stream_pb2.CommandAck.OUTCOME_COMPLETED)
        await asyncio.Event().wait()

    session = streams.open(vehicle_id)
    try:
        streams.serve(session, truck_sends(), {})

        async def answered() -> bool:
            return bool(await store.command_acks(vehicle_id))

        await wait_for(answered, timeout_seconds=30)
        assert [a.command_id for a in await store.command_acks(vehicle_id)] == ["01JCMDOLD"]
        assert not await store_client.hget(f"telemetry:{{{vehicle_id}}}:command_ids", "01JCMDOLD")
        assert await store_client.xlen(f"telemetry:{{{vehicle_id}}}:commands") == 0
    finally:
        await streams.close(session)
        await streams.shutdown()
        await store.close()
