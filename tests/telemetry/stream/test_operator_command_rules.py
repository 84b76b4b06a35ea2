"""The rules of an operator's command (services/telemetry/domain/operator_commands.py): what a request may hold, the
Command the truck gets, and the state its acknowledgements put it in, whatever order they arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haulmesh.telemetry.v1 import command_pb2, stream_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime import InvalidArgument, to_timestamp
from services.telemetry.domain.operator_commands import (
    DEFAULT_EXPIRY,
    MAX_WAYPOINTS,
    command_state,
    stream_command,
    validate_vehicle_command,
)

VehicleCommand = command_pb2.VehicleCommand
Outcome = stream_pb2.CommandAck.Outcome
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
FINAL = {Outcome.OUTCOME_COMPLETED: VehicleCommand.STATE_COMPLETED,
         Outcome.OUTCOME_REJECTED: VehicleCommand.STATE_REJECTED, Outcome.OUTCOME_FAILED: VehicleCommand.STATE_FAILED}


def _violations(command: VehicleCommand) -> set[str]:
    with pytest.raises(InvalidArgument) as raised:
        validate_vehicle_command(command, NOW)
    return {v.field for v in raised.value.violations}


def test_a_command_needs_one_action_and_a_reason() -> None:
    assert _violations(VehicleCommand()) == {"vehicle_command.action", "vehicle_command.reason"}
    assert _violations(VehicleCommand(resume=stream_pb2.ResumeVehicle(), reason="x" * 501)) == \
        {"vehicle_command.reason"}
    validate_vehicle_command(VehicleCommand(resume=stream_pb2.ResumeVehicle(), reason="x" * 500), NOW)
    assert _violations(VehicleCommand(stop=stream_pb2.StopVehicle(exception_id="e" * 65), reason="fault")) == \
        {"vehicle_command.stop.exception_id"}


def test_a_reroute_needs_sane_waypoints() -> None:
    def reroute(*points: tuple[float, float]) -> VehicleCommand:
        return VehicleCommand(reason="closure", reroute=stream_pb2.Reroute(
            waypoints=[location_pb2.Location(lat=a, lon=b) for a, b in points]))

    assert _violations(reroute()) == {"vehicle_command.reroute.waypoints"}
    assert _violations(reroute(*[(30.0, -93.0)] * (MAX_WAYPOINTS + 1))) == {"vehicle_command.reroute.waypoints"}
    assert _violations(reroute((30.0, -93.0), (91.0, 0.5), (0.0, 0.0), (10.0, float("nan")))) == \
        {f"vehicle_command.reroute.waypoints[{i}]" for i in (1, 2, 3)}
    validate_vehicle_command(reroute(*[(30.0, -93.0)] * MAX_WAYPOINTS), NOW)


def test_the_expiry_is_in_the_future_and_within_a_day() -> None:
    command = VehicleCommand(stop=stream_pb2.StopVehicle(), reason="hold")
    for expire, ok in ((NOW - timedelta(seconds=1), False), (NOW, False), (NOW + timedelta(hours=24), True),
                       (NOW + timedelta(hours=24, seconds=1), False)):
        command.expire_time.CopyFrom(to_timestamp(expire))
        if ok:
            validate_vehicle_command(command, NOW)
        else:
            assert _violations(command) == {"vehicle_command.expire_time"}


def test_the_truck_gets_the_action_with_the_servers_mission_reason_and_expiry() -> None:
    wanted = VehicleCommand(stop=stream_pb2.StopVehicle(mission_id="forged", reason="forged", exception_id="e1"),
                            reason="lidar fault")
    sent = stream_command(wanted, "C1", "M1", NOW)
    assert sent.command_id == "C1" and sent.WhichOneof("payload") == "stop"
    assert (sent.stop.mission_id, sent.stop.reason, sent.stop.exception_id) == ("M1", "lidar fault", "e1")
    assert sent.stop.mode == stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP  # unspecified means the safest stop
    assert sent.issue_time.ToDatetime(tzinfo=UTC) == NOW
    assert sent.expire_time.ToDatetime(tzinfo=UTC) == NOW + DEFAULT_EXPIRY
    wanted.expire_time.CopyFrom(to_timestamp(NOW + timedelta(hours=2)))
    assert stream_command(wanted, "C2", "", NOW).expire_time == wanted.expire_time


outcomes = st.lists(st.sampled_from([Outcome.OUTCOME_ACCEPTED, Outcome.OUTCOME_COMPLETED, Outcome.OUTCOME_REJECTED,
                                     Outcome.OUTCOME_FAILED]), max_size=6)


@given(outcomes, st.booleans())
def test_a_final_answer_decides_the_state_whatever_the_order(answers: list[int], expired: bool) -> None:
    acks = [stream_pb2.CommandAck(command_id="C", outcome=o) for o in answers]
    state = command_state(acks, NOW - timedelta(seconds=1) if expired else NOW + timedelta(minutes=1), NOW)
    finals = [FINAL[o] for o in answers if o in FINAL]
    if finals:
        assert state in finals  # never reverts to ACCEPTED, QUEUED or EXPIRED once the truck has answered
        assert command_state(list(reversed(acks)), None, NOW) == state
    elif expired:
        assert state == VehicleCommand.STATE_EXPIRED
    elif answers:
        assert state == VehicleCommand.STATE_ACCEPTED
    else:
        assert state == VehicleCommand.STATE_QUEUED
