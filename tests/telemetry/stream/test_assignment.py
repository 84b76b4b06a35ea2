"""A dispatched mission reaches its truck as a MissionAssignment command on the truck's stream."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.telemetry.v1 import stream_pb2
from haulmesh.type.v1 import time_window_pb2
from services.runtime import Mesh, carrier_metadata

from ...conftest import Pki, wait_for
from ..helpers import ATLANTA, HOUSTON, Session, Truck, dispatch_to


def _window(start: datetime) -> time_window_pb2.TimeWindow:
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(start + timedelta(hours=4))
    return window


async def test_dispatch_sends_the_assignment_to_the_truck_once(mesh: Mesh, mesh_pki: Pki) -> None:
    truck = Truck.mint(mesh_pki.ca, f"AS-{uuid.uuid4().hex[:8].upper()}")
    stops = [mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, location=HOUSTON,
                              planned_window=_window(datetime.now(UTC) + timedelta(hours=2))),
             mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ATLANTA)]
    mission = await dispatch_to(mesh, mesh_pki, truck, "acme", stops, tms_load_id="AS-1")
    mission_id = mission.name.removeprefix("missions/")

    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        session = Session(channel)
        session.send(truck.hello())
        try:
            commands = await wait_for(lambda: session.of("command"), timeout_seconds=15)
        finally:
            await session.aclose()
    assert [c.command_id for c in commands] == [f"assign-{mission_id}"]
    assignment = commands[0].assign_mission
    assert assignment.mission_id == mission_id and len(assignment.stops) == 2
    assert assignment.load.tms_load_id == "AS-1"
    # A reconnecting truck that has not acknowledged it gets the same assignment again, not a second one.
    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        again = Session(channel)
        again.send(truck.hello())
        try:
            repeat = await wait_for(lambda: again.of("command"), timeout_seconds=15)
        finally:
            await again.aclose()
    assert [c.command_id for c in repeat] == [f"assign-{mission_id}"]

    # The truck accepts: the mission service records the dispatch acknowledgement (→ PRE_TRIP).
    ack = stream_pb2.CommandAck(command_id=f"assign-{mission_id}", outcome=stream_pb2.CommandAck.OUTCOME_ACCEPTED)
    ack.device_time.GetCurrentTime()
    async with grpc.aio.secure_channel(mesh.address("telemetry"), truck.credentials()) as channel:
        accepting = Session(channel)
        accepting.send(truck.hello())
        await wait_for(lambda: accepting.of("welcome"), timeout_seconds=15)
        accepting.send(stream_pb2.StreamTelemetryRequest(command_ack=ack))
        async with grpc.aio.secure_channel(mesh.address("mission"),
                                           mesh_pki.credentials("operator", "ops")) as ops_ch:
            async def acknowledged() -> mission_pb2.Mission | None:
                current = await mission_service_pb2_grpc.MissionServiceStub(ops_ch).GetMission(
                    mission_service_pb2.GetMissionRequest(name=mission.name), metadata=carrier_metadata("acme"),
                    timeout=10)
                return current if current.state == mission_pb2.Mission.STATE_PRE_TRIP else None

            try:
                acked = await wait_for(acknowledged, timeout_seconds=15)
            finally:
                await accepting.aclose()
    assert acked.dispatch_ack_time.ToNanoseconds() == ack.device_time.ToNanoseconds()
