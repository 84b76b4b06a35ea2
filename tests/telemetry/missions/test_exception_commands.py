"""The commands a mission exception calls for (domain/commands.py), without gRPC or Redis: their ids name the mission
as well as the exception, and a stop names the exception it answers."""

from __future__ import annotations

import pytest

from haulmesh.events.v1 import event_pb2, mission_events_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import stream_pb2
from services.telemetry.domain import command_for

Exc = mission_pb2.MissionException


def _raised(mission_id: str, exc: mission_pb2.MissionException) -> stream_pb2.Command:
    found = command_for(event_pb2.Event(mission_exception_raised=mission_events_pb2.MissionExceptionRaised(
        mission=f"missions/{mission_id}", exception=exc)))
    assert found is not None
    return found[2]


@pytest.mark.parametrize(("exc", "action"), [
    (Exc(exception_id="exc-1", kind=Exc.KIND_SENSOR_FAULT, contingency=Exc.CONTINGENCY_MINIMAL_RISK_STOP), "stop"),
    (Exc(exception_id="exc-1", kind=Exc.KIND_PRE_TRIP_FAILURE, contingency=Exc.CONTINGENCY_HOLD), "stop"),
    (Exc(exception_id="exc-1", kind=Exc.KIND_ROAD_CLOSURE, contingency=Exc.CONTINGENCY_REROUTE,
         reroute_waypoints=[{"lat": 30.9, "lon": -93.0}]), "reroute"),
])
def test_a_vehicles_second_mission_gets_its_own_command_for_its_exc_1(exc: mission_pb2.MissionException,
                                                                       action: str) -> None:
    # The queue drops an id it issued to the vehicle in the last 30 days: the next mission's exc-1 must differ.
    first, second = _raised("01JFIRSTMISSION00000000000", exc), _raised("01JSECONDMISSION0000000000", exc)
    assert first.command_id == f"{action}-01JFIRSTMISSION00000000000-exc-1"
    assert second.command_id == f"{action}-01JSECONDMISSION0000000000-exc-1"
    assert getattr(first, action).exception_id == "exc-1"  # the stop names the exception it answers, as a reroute does
