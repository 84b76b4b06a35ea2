"""The telemetry side of a human takeover, without gRPC or Redis: the mission events that become ``hand_over`` and
``hand_back`` commands (domain/commands.py), the truck's answers that confirm a step (domain/actions.py), and a
truck's law-enforcement stop report that raises the exception."""

from __future__ import annotations

import pytest

from haulmesh.events.v1 import event_pb2, mission_events_pb2
from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import stream_pb2
from haulmesh.type.v1 import location_pb2
from services.runtime.limits import MAX_TAKEOVER_REFUSAL
from services.telemetry.domain import COMMAND_EVENT_TYPES, command_for
from services.telemetry.domain.actions import (
    ACTION_EVENT_TYPES,
    DEVICE_EVENT_REPORTS,
    law_enforcement_stop,
    takeover_acknowledgement,
)
from services.telemetry.domain.commands import takeover_command_of

Exc = mission_pb2.MissionException
Ack = stream_pb2.CommandAck
Step = mission_service_pb2.AcknowledgeMissionTakeoverRequest.Step
MISSION_ID = "01JEXAMPLEMISSION000000000"
MISSION = f"missions/{MISSION_ID}"


def _takeover_exception(**takeover: object) -> mission_pb2.MissionException:
    exc = Exc(exception_id="exc-2", kind=Exc.KIND_LAW_ENFORCEMENT_STOP, contingency=Exc.CONTINGENCY_HUMAN_TAKEOVER,
              description="patrol car behind", resolution="officer done")
    exc.takeover.request_time.seconds = 1_800_000_000
    for field, seconds in takeover.items():
        getattr(exc.takeover, field).seconds = seconds
    return exc


def _raised(exc: mission_pb2.MissionException) -> event_pb2.Event:
    return event_pb2.Event(type="haulmesh.mission.v1.exception_raised", subject=MISSION, carrier="carriers/acme",
                           mission_exception_raised=mission_events_pb2.MissionExceptionRaised(
                               mission=MISSION, exception=exc))


def _resolved(exc: mission_pb2.MissionException) -> event_pb2.Event:
    return event_pb2.Event(type="haulmesh.mission.v1.exception_resolved", subject=MISSION, carrier="carriers/acme",
                           mission_exception_resolved=mission_events_pb2.MissionExceptionResolved(
                               mission=MISSION, exception=exc))


def test_a_takeover_exception_sends_hand_over_and_its_resolution_hand_back() -> None:
    assert "haulmesh.mission.v1.exception_resolved" in COMMAND_EVENT_TYPES
    vehicle, mission, command = command_for(_raised(_takeover_exception()))
    assert (vehicle, mission) == (None, MISSION)  # the vehicle is looked up: the event names only the mission
    assert command.command_id == f"handover-{MISSION_ID}-exc-2" and command.HasField("issue_time")
    assert command.hand_over == stream_pb2.HandOver(mission_id=MISSION_ID, exception_id="exc-2",
                                                    reason="LAW_ENFORCEMENT_STOP: patrol car behind")
    _, _, back = command_for(_resolved(_takeover_exception(hand_back_request_time=1_800_000_600)))
    assert back.command_id == f"handback-{MISSION_ID}-exc-2"
    assert back.hand_back == stream_pb2.HandBack(mission_id=MISSION_ID, exception_id="exc-2", reason="officer done")


def test_no_takeover_no_hand_over_and_no_hand_back() -> None:
    assert command_for(_raised(Exc(exception_id="exc-1", kind=Exc.KIND_ROUTE_DEVIATION,
                                   contingency=Exc.CONTINGENCY_CONTINUE))) is None
    # A resolved exception that handed nothing over (or whose hand-back was not asked for) sends nothing.
    assert command_for(_resolved(Exc(exception_id="exc-1", kind=Exc.KIND_SENSOR_FAULT, resolution="ok"))) is None
    assert command_for(_resolved(_takeover_exception())) is None


def test_a_takeover_command_id_is_read_back_for_its_mission_only() -> None:
    assert takeover_command_of(f"handover-{MISSION_ID}-exc-12", MISSION) == ("hand_over", "exc-12")
    assert takeover_command_of(f"handback-{MISSION_ID}-exc-1", MISSION) == ("hand_back", "exc-1")
    for other in (f"assign-{MISSION_ID}", "stop-exc-1", f"handover-{MISSION_ID}-", "handover-OTHER-exc-1"):
        assert takeover_command_of(other, MISSION) is None, other
    assert takeover_command_of(f"handover-{MISSION_ID}-exc-1", "") is None


def _acked(command_id: str, outcome: int, detail: str = "") -> tev.CommandAcknowledged:
    ack = Ack(command_id=command_id, outcome=outcome, detail=detail)  # type: ignore[arg-type]
    ack.device_time.seconds = 1_800_000_042
    return tev.CommandAcknowledged(vehicle="vehicles/AU-TRK-1001", mission=MISSION, ack=ack)


@pytest.mark.parametrize(("command_id", "outcome", "step"), [
    (f"handover-{MISSION_ID}-exc-2", Ack.OUTCOME_ACCEPTED, Step.STEP_HAND_OVER),  # the human has control
    (f"handover-{MISSION_ID}-exc-2", Ack.OUTCOME_COMPLETED, Step.STEP_HAND_OVER),
    (f"handback-{MISSION_ID}-exc-2", Ack.OUTCOME_COMPLETED, Step.STEP_HAND_BACK),  # the autonomy stack has it back
    (f"handback-{MISSION_ID}-exc-2", Ack.OUTCOME_ACCEPTED, None),  # only handing back: nothing to record yet
    (f"assign-{MISSION_ID}", Ack.OUTCOME_ACCEPTED, None),  # the dispatch acknowledgement's, not a takeover's
])
def test_which_answers_confirm_a_takeover_step(command_id: str, outcome: int, step: int | None) -> None:
    request = takeover_acknowledgement(_acked(command_id, outcome))
    if step is None:
        assert request is None
        return
    assert request == mission_service_pb2.AcknowledgeMissionTakeoverRequest(
        name=MISSION, exception_id="exc-2", step=step, command_id=command_id,  # type: ignore[arg-type]
        ack_time={"seconds": 1_800_000_042})


@pytest.mark.parametrize(("command_id", "outcome", "step", "refusal"), [
    (f"handover-{MISSION_ID}-exc-2", Ack.OUTCOME_REJECTED, Step.STEP_HAND_OVER, "REJECTED: no teleop link"),
    (f"handback-{MISSION_ID}-exc-2", Ack.OUTCOME_FAILED, Step.STEP_HAND_BACK, "FAILED: no teleop link"),
])
def test_a_refused_takeover_step_is_recorded_as_refused(command_id: str, outcome: int, step: int, refusal: str,
                                                       ) -> None:
    request = takeover_acknowledgement(_acked(command_id, outcome, "no teleop link"))
    assert request == mission_service_pb2.AcknowledgeMissionTakeoverRequest(
        name=MISSION, exception_id="exc-2", step=step, command_id=command_id,  # type: ignore[arg-type]
        ack_time={"seconds": 1_800_000_042}, refusal=refusal)
    assert takeover_acknowledgement(_acked(f"assign-{MISSION_ID}", Ack.OUTCOME_REJECTED)) is None
    long = takeover_acknowledgement(_acked(command_id, outcome, "x" * 2000))
    assert long is not None and len(long.refusal) == MAX_TAKEOVER_REFUSAL  # the mission refuses longer


def _police_report(sequence: int) -> tev.LawEnforcementStopReported:
    return tev.LawEnforcementStopReported(vehicle="vehicles/AU-TRK-1001", mission=MISSION, frame_sequence=sequence,
                                          location=location_pb2.Location(lat=31.2, lon=-89.3),
                                          detail="patrol car signalling to pull over")


def test_a_trucks_law_enforcement_stop_raises_one_exception_for_the_fleets_rule() -> None:
    field, message = DEVICE_EVENT_REPORTS["law_enforcement_stop"]
    assert (field, message) == ("telemetry_law_enforcement_stop_reported", tev.LawEnforcementStopReported)
    assert "haulmesh.telemetry.v1.law_enforcement_stop_reported" in ACTION_EVENT_TYPES
    mission = mission_pb2.Mission(name=MISSION, state=mission_pb2.Mission.STATE_ENROUTE)
    request = law_enforcement_stop(_police_report(41), mission)
    assert request is not None and request.name == MISSION and request.request_id == "AU-TRK-1001:41:police"
    exc = request.exception
    assert (exc.kind, exc.contingency, exc.frame_sequence) == (Exc.KIND_LAW_ENFORCEMENT_STOP, 0, 41)  # rule's choice
    assert exc.description == "the truck reports a law-enforcement stop: patrol car signalling to pull over"
    assert (exc.location.lat, exc.location.lon) == (31.2, -89.3)
    # The truck says it again while it stands: one exception while it is open, a new one once it was resolved.
    mission.exceptions.add(exception_id="exc-1", kind=Exc.KIND_LAW_ENFORCEMENT_STOP)
    assert law_enforcement_stop(_police_report(42), mission) is None
    mission.exceptions[0].resolve_time.seconds = 1
    assert law_enforcement_stop(_police_report(43), mission) is not None
    assert law_enforcement_stop(tev.LawEnforcementStopReported(vehicle="vehicles/AU-TRK-1001"), mission) is None
