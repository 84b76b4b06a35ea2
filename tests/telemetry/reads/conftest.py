"""Fixtures of the mission-scoped telemetry read tests: the session mesh, its REST door, and a truck with a
dispatched mission of a carrier of the test's own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc
from haulmesh.type.v1 import time_window_pb2
from services.runtime import Mesh, carrier_metadata

# The REST fixtures of the gateway tests (a fixture imported into a conftest is registered here too).
from tests.conftest import Pki
from tests.gateway.rest.conftest import base_url, token  # noqa: F401
from tests.telemetry.helpers import ATLANTA, HOUSTON, Truck, dispatch_to


@dataclass(frozen=True)
class Dispatched:
    """A registered truck and a mission of ``carrier`` dispatched to it."""

    truck: Truck
    carrier: str
    mission: mission_pb2.Mission

    @property
    def mission_id(self) -> str:
        return self.mission.name.removeprefix("missions/")


async def cancel_mission(mesh: Mesh, mesh_pki: Pki, dispatched: Dispatched) -> None:
    """An operator cancels the mission (a terminal state: watches of it end)."""
    async with grpc.aio.secure_channel(mesh.address("mission"), mesh_pki.credentials("operator", "ops")) as channel:
        await mission_service_pb2_grpc.MissionServiceStub(channel).CancelMission(
            mission_service_pb2.CancelMissionRequest(name=dispatched.mission.name, reason="test over"),
            metadata=carrier_metadata(dispatched.carrier), timeout=10)


@pytest.fixture
async def dispatched(mesh: Mesh, mesh_pki: Pki) -> Dispatched:
    """A fresh truck registered by an operator and a mission dispatched to it, as the tender service does on
    acceptance, for a fresh carrier."""
    truck = Truck.mint(mesh_pki.ca, f"TR-{uuid.uuid4().hex[:8].upper()}")
    carrier = f"reads-{uuid.uuid4().hex[:8]}"
    window = time_window_pb2.TimeWindow()
    window.start_time.FromDatetime(datetime.now(UTC) + timedelta(hours=2))
    window.end_time.FromDatetime(datetime.now(UTC) + timedelta(hours=6))
    stops = [mission_pb2.Stop(type=mission_pb2.Stop.TYPE_PICKUP, planned_window=window, location=HOUSTON),
             mission_pb2.Stop(type=mission_pb2.Stop.TYPE_DELIVERY, location=ATLANTA)]
    mission = await dispatch_to(mesh, mesh_pki, truck, carrier, stops, tms_load_id="READS-1")
    assert mission.state == mission_pb2.Mission.STATE_DISPATCHED and mission.dispatch_time.ToMilliseconds()
    return Dispatched(truck, carrier, mission)
