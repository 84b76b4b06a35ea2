"""Overdue check-ins escalate: a required check-in past its due time by more than the grace raises the event
``check_in_overdue`` once per due time, and recording it moves the mission on (real mesh, real store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from services.runtime import Mesh, new_id
from tests.conftest import Pki, running_mesh, wait_for

from .test_mission_mesh import ACME, HOUSTON, Client, _ts, acme_events, add_vehicle, mission_spec

M = mission_pb2.Mission
GRACE_SECONDS = 1.0


@pytest.fixture(scope="module")
async def overdue_mesh(mesh_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    env = {"HAULMESH_CHECK_IN_SWEEP_SECONDS": "0.2", "HAULMESH_CHECK_IN_OVERDUE_GRACE_SECONDS": str(GRACE_SECONDS)}
    async with running_mesh(mesh_pki, tmp_path_factory.mktemp("overdue"), env=env) as mesh:
        yield mesh


async def _overdue_events(mesh: Mesh, mission: str) -> list[event_pb2.Event]:
    return [e for e in await acme_events(mesh, mission) if e.type == "haulmesh.mission.v1.check_in_overdue"]


async def test_an_overdue_departure_check_in_is_escalated_once_and_ends_when_recorded(overdue_mesh: Mesh,
                                                                                     mesh_pki: Pki) -> None:
    ops = Client(overdue_mesh, mesh_pki.credentials("operator", "ops"))
    tender = Client(overdue_mesh, mesh_pki.credentials("service", "tender"))
    try:
        vehicle = await add_vehicle(ops)
        spec = mission_spec(vehicle.name, origin=HOUSTON)
        pickup = datetime.now(UTC) + timedelta(seconds=1)  # the departure check-in is due at the planned pickup
        spec.stops[0].planned_window.start_time.CopyFrom(_ts(pickup))
        spec.stops[0].planned_window.end_time.CopyFrom(_ts(pickup + timedelta(hours=2)))
        mission = await tender.CreateMission(
            mission_service_pb2.CreateMissionRequest(mission=spec, request_id=new_id()), metadata=ACME, timeout=10)
        assert mission.check_in_requirement.required  # the lane's first missions need a person's check-ins
        assert mission.check_in_requirement.next_due_time == spec.stops[0].planned_window.start_time
        assert not mission.check_in_requirement.HasField("escalate_time")

        [overdue] = await wait_for(lambda: _overdue_events(overdue_mesh, mission.name), timeout_seconds=15)
        data = overdue.mission_check_in_overdue
        assert data.point == mission_pb2.CheckIn.POINT_DEPARTURE and data.mission == mission.name
        assert data.due_time == mission.check_in_requirement.next_due_time
        assert data.overdue.seconds >= GRACE_SECONDS and data.tender == mission.tender
        escalated = await ops.GetMission(mission_service_pb2.GetMissionRequest(name=mission.name), metadata=ACME,
                                         timeout=10)
        escalate_time = escalated.check_in_requirement.escalate_time
        assert escalate_time.ToNanoseconds() >= data.due_time.ToNanoseconds() + int(GRACE_SECONDS * 1e9)
        await asyncio.sleep(1.0)  # five more sweeps: still one escalation for this due time
        assert len(await _overdue_events(overdue_mesh, mission.name)) == 1

        # The operator confirms departure: nothing is due before departure any more, so nothing escalates again.
        recorded = await ops.RecordCheckIn(mission_service_pb2.RecordCheckInRequest(
            name=mission.name, check_in=mission_pb2.CheckIn(point=mission_pb2.CheckIn.POINT_DEPARTURE,
                                                            outcome=mission_pb2.CheckIn.OUTCOME_PROCEED)),
            metadata=ACME, timeout=10)
        requirement = recorded.mission.check_in_requirement
        assert not requirement.HasField("next_due_time") and not requirement.HasField("escalate_time")
        await asyncio.sleep(1.0)
        assert len(await _overdue_events(overdue_mesh, mission.name)) == 1
    finally:
        await ops.channel.close()
        await tender.channel.close()
