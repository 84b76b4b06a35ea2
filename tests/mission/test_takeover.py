"""The human takeover's rules (services/mission/domain/takeover.py), without gRPC or Redis: a HUMAN_TAKEOVER exception
asks for the hand-over, the vehicle's confirmations are recorded once each and only when asked for, and resolving it
asks for the hand-back while the mission returns to its resume state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.type.v1 import health_check_pb2
from services.mission import domain
from services.mission.domain import Action, Contingency, ExceptionKind, State, Status, TakeoverStep
from services.runtime import FailedPrecondition, InvalidArgument, NotFound, to_timestamp

Exc = mission_pb2.MissionException
T0 = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
OPS = "spiffe://haulmesh.local/operator/ops"


def _enroute() -> mission_pb2.Mission:
    mission = mission_pb2.Mission(name="missions/m1", state=State.ENROUTE, vehicle="vehicles/AU-TRK-1001")
    mission.stops.add(location={"lat": 29.76, "lon": -95.37})
    mission.stops.add(location={"lat": 33.75, "lon": -84.39})
    return mission


def _taken_over(mission: mission_pb2.Mission) -> mission_pb2.MissionException:
    """A law-enforcement stop raised without a contingency: the fleet's rule hands the truck to a human."""
    exc, _ = domain.raise_exception(mission, Exc(kind=Exc.KIND_LAW_ENFORCEMENT_STOP), "vehicle/AU-TRK-1001", T0)
    return exc


def _at(minutes: float):
    return to_timestamp(T0 + timedelta(minutes=minutes))


def test_the_step_enum_is_the_contracts() -> None:
    generated = mission_service_pb2.AcknowledgeMissionTakeoverRequest.Step
    assert {s.name: int(s) for s in TakeoverStep} == {
        n.removeprefix("STEP_"): v for n, v in generated.items() if v}


def test_a_takeover_exception_asks_for_the_hand_over_and_no_other_does() -> None:
    mission = _enroute()
    exc = _taken_over(mission)
    assert exc.contingency == Contingency.HUMAN_TAKEOVER
    assert exc.takeover == mission_pb2.Takeover(request_time=to_timestamp(T0))
    cargo = domain.raise_exception(mission, Exc(kind=Exc.KIND_OTHER, contingency=Exc.CONTINGENCY_HUMAN_TAKEOVER),
                                   OPS, T0)[0]
    assert cargo.takeover.HasField("request_time")  # an operator's explicit takeover too
    for kind, severity in ((Exc.KIND_SENSOR_FAULT, Exc.SEVERITY_CRITICAL), (Exc.KIND_ROUTE_DEVIATION, 0),
                           (Exc.KIND_CONNECTIVITY_LOSS, 0)):
        other, _ = domain.raise_exception(mission, Exc(kind=kind, severity=severity), OPS, T0)
        assert not other.HasField("takeover"), Exc.Kind.Name(kind)


def test_the_whole_workflow_records_each_step_once_and_the_state_follows_the_lifecycle() -> None:
    mission = _enroute()
    exc = _taken_over(mission)
    exc_id = exc.exception_id
    in_exception = Status(State.EXCEPTION, State.ENROUTE, (ExceptionKind.LAW_ENFORCEMENT_STOP,))
    # The human has control: recorded at the truck's time; the mission stays in EXCEPTION.
    assert domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_OVER, _at(1))
    assert domain.mission_status(mission) == in_exception
    # A repeated confirmation (the truck answered again, the consumer redelivered) changes nothing.
    before = mission.SerializeToString()
    assert not domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_OVER, _at(2))
    assert mission.SerializeToString() == before
    # Not resolved yet: nobody asked for the hand-back, so a confirmation of it is refused.
    with pytest.raises(FailedPrecondition) as refused:
        domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_BACK, _at(3))
    assert refused.value.reason == "TAKEOVER_STEP_NOT_REQUESTED"
    assert refused.value.metadata == {"exception_id": exc_id, "step": "STEP_HAND_BACK"}
    # Resolved: the hand-back is asked for and the mission returns to its resume state.
    assert domain.resolve_exception(mission, exc_id, "officer done; inspection passed", OPS, T0 + timedelta(minutes=20))
    assert domain.mission_status(mission) == Status(State.ENROUTE)
    assert mission.exceptions[0].takeover.hand_back_request_time == _at(20)
    assert domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_BACK, _at(21))
    assert not domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_BACK, _at(22))
    assert mission.exceptions[0].takeover == mission_pb2.Takeover(
        request_time=to_timestamp(T0), control_time=_at(1), hand_back_request_time=_at(20), hand_back_time=_at(21))
    assert domain.mission_status(mission) == Status(State.ENROUTE)


def test_a_late_hand_over_is_recorded_until_the_hand_back_is_confirmed_then_refused() -> None:
    mission = _enroute()
    exc_id = _taken_over(mission).exception_id
    domain.resolve_exception(mission, exc_id, "false alarm", OPS, T0 + timedelta(minutes=1))
    # The truck was offline: it gets both commands in order and confirms the hand-over after the resolution.
    assert domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_OVER, _at(2))
    assert domain.acknowledge_takeover(domain.find_exception(mission, exc_id), TakeoverStep.HAND_BACK, _at(3))
    other = _enroute()
    other_id = _taken_over(other).exception_id
    domain.resolve_exception(other, other_id, "false alarm", OPS, T0 + timedelta(minutes=1))
    domain.acknowledge_takeover(domain.find_exception(other, other_id), TakeoverStep.HAND_BACK, _at(2))
    with pytest.raises(FailedPrecondition, match="confirmed the hand-back already"):
        domain.acknowledge_takeover(domain.find_exception(other, other_id), TakeoverStep.HAND_OVER, _at(3))
    assert not other.exceptions[0].takeover.HasField("control_time")


def test_a_trucks_refusal_is_recorded_latest_kept_and_stale_once_the_step_is_confirmed() -> None:
    mission = _enroute()
    exc_id = _taken_over(mission).exception_id
    exc = domain.find_exception(mission, exc_id)
    assert domain.acknowledge_takeover(exc, TakeoverStep.HAND_OVER, _at(1), "REJECTED: no teleop link")
    assert not domain.acknowledge_takeover(exc, TakeoverStep.HAND_OVER, _at(1), "REJECTED: no teleop link")  # again
    assert exc.takeover.hand_over_refusal == mission_pb2.TakeoverRefusal(time=_at(1), detail="REJECTED: no teleop link")
    assert not exc.takeover.HasField("control_time")  # a refusal confirms nothing
    assert domain.acknowledge_takeover(exc, TakeoverStep.HAND_OVER, _at(2))  # asked again on reconnection: in control
    assert not domain.acknowledge_takeover(exc, TakeoverStep.HAND_OVER, _at(3), "REJECTED: late")  # stale: dropped
    assert exc.takeover.hand_over_refusal.detail == "REJECTED: no teleop link"  # kept for the record
    # A hand-back refused before anyone asked for it is as wrong as a confirmation would be.
    with pytest.raises(FailedPrecondition, match="the exception is open"):
        domain.acknowledge_takeover(exc, TakeoverStep.HAND_BACK, _at(4), "REJECTED: not under remote control")
    domain.resolve_exception(mission, exc_id, "cleared", OPS, T0 + timedelta(minutes=5))
    assert domain.acknowledge_takeover(exc, TakeoverStep.HAND_BACK, _at(6), "REJECTED: minimal-risk stop engaged")
    assert domain.acknowledge_takeover(exc, TakeoverStep.HAND_BACK, _at(7), "FAILED: autonomy stack not ready")
    assert exc.takeover.hand_back_refusal == mission_pb2.TakeoverRefusal(time=_at(7),
                                                                         detail="FAILED: autonomy stack not ready")
    assert not exc.takeover.HasField("hand_back_time")
    assert domain.mission_status(mission) == Status(State.ENROUTE)  # a refusal moves no state


def test_a_confirmation_for_no_takeover_or_no_exception_is_refused() -> None:
    mission = _enroute()
    fault, _ = domain.raise_exception(mission, Exc(kind=Exc.KIND_SENSOR_FAULT, severity=Exc.SEVERITY_CRITICAL),
                                      OPS, T0)
    with pytest.raises(FailedPrecondition, match=r"no takeover \(contingency CONTINGENCY_MINIMAL_RISK_STOP\)"):
        domain.acknowledge_takeover(fault, TakeoverStep.HAND_OVER, _at(1))
    assert not fault.HasField("takeover")
    with pytest.raises(NotFound) as unknown:
        domain.find_exception(mission, "exc-9")
    assert unknown.value.reason == "EXCEPTION_NOT_FOUND"


@pytest.mark.parametrize("end", [Action.ABORT, Action.CANCEL])
def test_the_missions_end_asks_for_the_hand_back_too(end: Action) -> None:
    mission = _enroute() if end == Action.ABORT else mission_pb2.Mission(name="missions/m2", state=State.PRE_TRIP)
    exc_id = _taken_over(mission).exception_id
    resolved = domain.advance(mission, end, T0 + timedelta(minutes=5), reason="load recovered by a crew")
    assert [e.exception_id for e in resolved or []] == [exc_id]
    assert mission.exceptions[0].takeover.hand_back_request_time == _at(5)


def test_passing_pre_trip_checks_ask_for_the_hand_back_of_a_pre_trip_takeover() -> None:
    mission = mission_pb2.Mission(name="missions/m3", state=State.PRE_TRIP)
    mission.stops.add(location={"lat": 29.76, "lon": -95.37})
    domain.raise_exception(mission, Exc(kind=Exc.KIND_PRE_TRIP_FAILURE, contingency=Exc.CONTINGENCY_HUMAN_TAKEOVER),
                           OPS, T0)
    passing = health_check_pb2.HealthCheckResult(check="lidar", outcome=health_check_pb2.HealthCheckResult.OUTCOME_PASS,
                                                 blocking=True)
    domain.start(mission, [passing], OPS, T0 + timedelta(minutes=7))
    assert mission.state == State.ENROUTE and mission.exceptions[0].takeover.hand_back_request_time == _at(7)


@pytest.mark.parametrize(("exception_id", "step", "ack_time", "fields"), [
    ("exc-1", TakeoverStep.HAND_OVER, _at(0), set()),
    ("", 0, None, {"exception_id", "step", "ack_time"}),
    ("x" * 65, 7, _at(0), {"exception_id", "step"}),
])
@pytest.mark.parametrize("refusal", ["", "REJECTED: x", "x" * 501])
def test_the_request_is_checked_field_by_field(exception_id: str, step: int, ack_time, fields: set[str],
                                               refusal: str) -> None:
    fields = fields | ({"refusal"} if len(refusal) > 500 else set())
    if not fields:
        domain.validate_takeover_ack(exception_id, step, ack_time, refusal)
        return
    with pytest.raises(InvalidArgument) as refused:
        domain.validate_takeover_ack(exception_id, step, ack_time, refusal)
    assert {v.field for v in refused.value.violations} == fields
