"""Which mission service call each of the telemetry service's own events calls for. Plain Python: the
generated messages are the data; usecases/missions.py makes the calls (consumer group ``telemetry-actions``).

=====================================  ====================================================================
event                                  call
=====================================  ====================================================================
``command_acknowledged`` (assignment)  AcknowledgeMissionDispatch (DISPATCHED → PRE_TRIP; the truck's time)
``command_acknowledged`` (hand-over,   AcknowledgeMissionTakeover HAND_OVER / HAND_BACK (the exception's takeover
hand-back)                             records the truck's time, or its refusal); see :data:`_CONFIRMING`
``health_reported``                    StartMission with the pre-trip checks (PRE_TRIP → ENROUTE; kept by the
                                       mission until a check-in or a hold clears it); a blocking check that
                                       failed raises a PRE_TRIP_FAILURE exception instead
``geofence_entered`` (last stop)       ArriveMission (ENROUTE → ARRIVED)
``connectivity_lost``                  RaiseMissionException CONNECTIVITY_LOSS
``connectivity_restored``              ResolveMissionException of the open CONNECTIVITY_LOSS exceptions
``fault_reported`` (FAULT, raised)     RaiseMissionException SENSOR_FAULT / VEHICLE_FAULT
``route_deviated``                     RaiseMissionException ROUTE_DEVIATION
``road_closure_reported``              RaiseMissionException ROAD_CLOSURE at the truck's position, without
                                       waypoints: the mission service takes the lane facts' detour, or stops it
                                       (none while one is open: a repeated report gets one detour)
``law_enforcement_stop_reported``      RaiseMissionException LAW_ENFORCEMENT_STOP where the truck is; the
                                       fleet's rule hands it to a remote human (HUMAN_TAKEOVER); none while
                                       one is open
=====================================  ====================================================================

Raised exceptions carry a request id derived from the event's vehicle and frame, so a retried call never
raises a second exception. A call refused because the mission is not (yet) in the state the call needs is
retried only where the mission is expected to get there by itself within the consumer's deliveries (a pre-trip
report that overtook the dispatch acknowledgement): :func:`retry_later`. A pre-trip report refused because it
waits for a human (CHECK_IN_REQUIRED: the departure check-in; MISSION_HELD: an open hold or minimal-risk stop) is
not retried: the mission service keeps the passing checks with the refusal and records the departure itself when
the check-in or the resolution clears it, however late (services/mission/domain/changes.py).
"""

from __future__ import annotations

import re

from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import health_check_pb2
from services.runtime.limits import MAX_TAKEOVER_REFUSAL

from .commands import ASSIGN_PREFIX, takeover_command_of
from .tracking import fault_kind

__all__ = [
    "ACTION_EVENT_TYPES",
    "DEVICE_EVENT_REPORTS",
    "arrival",
    "connectivity_lost",
    "connectivity_resolutions",
    "dispatch_acknowledgement",
    "fault_raised",
    "law_enforcement_stop",
    "may_arrive",
    "pre_trip",
    "retry_later",
    "road_closure",
    "route_deviated",
    "takeover_acknowledgement",
]

_P = "haulmesh.telemetry.v1."
#: The telemetry events that move a mission.
ACTION_EVENT_TYPES = frozenset(_P + t for t in (
    "command_acknowledged", "health_reported", "geofence_entered", "connectivity_lost", "connectivity_restored",
    "fault_reported", "route_deviated", "road_closure_reported", "law_enforcement_stop_reported"))
#: Device event codes (DeviceEvent.code) by which a truck reports what the mission must answer, and the internal
#: event each becomes (its Event.data field and message): the road ahead of it closed; law enforcement (a patrol car,
#: a roadside inspection) stopping it.
DEVICE_EVENT_REPORTS: dict[str, tuple[str, type[tev.RoadClosureReported] | type[tev.LawEnforcementStopReported]]] = {
    "road_closure_ahead": ("telemetry_road_closure_reported", tev.RoadClosureReported),
    "law_enforcement_stop": ("telemetry_law_enforcement_stop_reported", tev.LawEnforcementStopReported),
}
_Ex = mission_pb2.MissionException
_Ack = stream_pb2.CommandAck
_ACCEPTED = (_Ack.OUTCOME_ACCEPTED, _Ack.OUTCOME_COMPLETED)
_Step = mission_service_pb2.AcknowledgeMissionTakeoverRequest.Step
#: The answers by which a truck confirms a takeover step, and the step each confirms. A hand-over is in force while
#: it lasts, like an assignment: ACCEPTED says the remote operator has control (COMPLETED says no less). A hand-back
#: is done once done: COMPLETED says the autonomy stack has control again; ACCEPTED only that it is handing back.
_CONFIRMING = {"hand_over": (_ACCEPTED, _Step.STEP_HAND_OVER),
               "hand_back": ((_Ack.OUTCOME_COMPLETED,), _Step.STEP_HAND_BACK)}
_REFUSALS = (_Ack.OUTCOME_REJECTED, _Ack.OUTCOME_FAILED)
_BLOCKING_OK = (health_check_pb2.HealthCheckResult.OUTCOME_PASS, health_check_pb2.HealthCheckResult.OUTCOME_WARN)
_Raise = mission_service_pb2.RaiseMissionExceptionRequest


def _request_id(vehicle: str, sequence: int, what: str) -> str:
    """The idempotency key of an exception raised for a frame: one exception per vehicle, frame and cause."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", f"{vehicle.removeprefix('vehicles/')}:{sequence}:{what}")[:128]


def retry_later(data_field: str, reason: str, state: str) -> bool:
    """Whether a call refused with FAILED_PRECONDITION (ErrorInfo ``reason``, its ``state`` metadata) is retried:
    only a pre-trip report whose mission gets there by itself within seconds (the acknowledgement is on its way).
    A report waiting for a human (CHECK_IN_REQUIRED, MISSION_HELD) is kept by the mission service, which departs
    the mission once cleared: retrying it would only end in the dead-letter stream. Any other refusal means the
    mission moved on (an operator acted)."""
    return data_field == "telemetry_health_reported" and reason == "INVALID_MISSION_STATE" \
        and state == "STATE_DISPATCHED"


def dispatch_acknowledgement(data: tev.CommandAcknowledged,
                             ) -> mission_service_pb2.AcknowledgeMissionDispatchRequest | None:
    """An accepted assignment acknowledges the dispatch, at the truck's time."""
    ack = data.ack
    if not ack.command_id.startswith(ASSIGN_PREFIX) or ack.outcome not in _ACCEPTED or not data.mission:
        return None
    return mission_service_pb2.AcknowledgeMissionDispatchRequest(name=data.mission, ack_time=ack.device_time,
                                                                 command_id=ack.command_id)


def takeover_acknowledgement(data: tev.CommandAcknowledged,
                             ) -> mission_service_pb2.AcknowledgeMissionTakeoverRequest | None:
    """A truck's answer to a hand-over or hand-back: one that confirms it (:data:`_CONFIRMING`) records that step of
    the exception's takeover at the truck's time; a refusal (REJECTED, FAILED) records the refusal, with the
    truck's detail, for the command centre to see; None for any other answer or command."""
    found = takeover_command_of(data.ack.command_id, data.mission)
    if found is None:
        return None
    payload, exception_id = found
    ack = data.ack
    if ack.outcome in _REFUSALS:
        refusal = f"{_Ack.Outcome.Name(ack.outcome).removeprefix('OUTCOME_')}: {ack.detail or 'no detail'}"
    elif ack.outcome in _CONFIRMING[payload][0]:
        refusal = ""
    else:
        return None
    return mission_service_pb2.AcknowledgeMissionTakeoverRequest(
        name=data.mission, exception_id=exception_id, step=_CONFIRMING[payload][1], ack_time=ack.device_time,
        command_id=ack.command_id, refusal=refusal[:MAX_TAKEOVER_REFUSAL])


def pre_trip(data: tev.HealthReported) -> mission_service_pb2.StartMissionRequest | _Raise | None:
    """Start the mission with the pre-trip checks, or raise PRE_TRIP_FAILURE when a blocking check failed."""
    if not data.mission or not data.checks:
        return None
    failed = [c for c in data.checks if c.blocking and c.outcome not in _BLOCKING_OK]
    if failed:
        names = ", ".join(c.check for c in failed)[:300]
        return _Raise(name=data.mission, request_id=_request_id(data.vehicle, data.frame_sequence, "pre-trip"),
                      exception=_Ex(kind=_Ex.KIND_PRE_TRIP_FAILURE, severity=_Ex.SEVERITY_CRITICAL,
                                    description=f"blocking pre-trip checks failed: {names}",
                                    frame_sequence=data.frame_sequence))
    return mission_service_pb2.StartMissionRequest(name=data.mission, pre_trip_checks=data.checks,
                                                   frame_sequence=data.frame_sequence)


def may_arrive(ctx: tev.GeofenceContext) -> bool:
    """Whether entering this fence can be the mission's arrival (a delivery stop of a mission)."""
    return bool(ctx.mission) and ctx.stop_type == mission_pb2.Stop.TYPE_DELIVERY


def arrival(ctx: tev.GeofenceContext, mission: mission_pb2.Mission,
            ) -> mission_service_pb2.ArriveMissionRequest | None:
    """The mission arrives when its truck enters its last stop (see :func:`may_arrive`)."""
    if ctx.stop_index != len(mission.stops) - 1:
        return None  # an intermediate delivery stop; the mission arrives at its destination
    return mission_service_pb2.ArriveMissionRequest(name=ctx.mission, arrive_time=ctx.device_time,
                                                    frame_sequence=ctx.frame_sequence)


def connectivity_lost(data: tev.ConnectivityLost) -> _Raise | None:
    """A CONNECTIVITY_LOSS exception, one per outage (its request id names the last time heard)."""
    if not data.mission:
        return None
    exception = _Ex(kind=_Ex.KIND_CONNECTIVITY_LOSS, severity=_Ex.SEVERITY_WARNING,
                    description=f"no message since {data.last_seen_time.ToJsonString()}",
                    frame_sequence=data.last_sequence)
    if data.HasField("last_location"):
        exception.location.CopyFrom(data.last_location)
    outage = f"lost-{data.last_seen_time.ToMilliseconds()}"
    return _Raise(name=data.mission, exception=exception,
                  request_id=_request_id(data.vehicle, data.last_sequence, outage))


def connectivity_resolutions(data: tev.ConnectivityRestored, mission: mission_pb2.Mission,
                             ) -> list[mission_service_pb2.ResolveMissionExceptionRequest]:
    """Resolve every open CONNECTIVITY_LOSS exception of the mission."""
    outage = data.outage.ToTimedelta().total_seconds()
    return [mission_service_pb2.ResolveMissionExceptionRequest(
        name=data.mission, exception_id=exception.exception_id,
        resolution=f"connectivity restored after {outage:.0f} s; telemetry resumed at sequence "
                   f"{data.high_water_sequence}")
        for exception in mission.exceptions
        if exception.kind == _Ex.KIND_CONNECTIVITY_LOSS and not exception.HasField("resolve_time")]


def fault_raised(data: tev.FaultReported) -> _Raise | None:
    """A SENSOR_FAULT / VEHICLE_FAULT exception for a raised FAULT report.

    ALARM frames (e.g. the truck's own minimal-risk manoeuvre) report the consequence of a fault that was raised
    already; only FAULT reports raise an exception, and a cleared one raises nothing.
    """
    if not data.mission or data.kind != frame_pb2.FramePayload.KIND_FAULT or data.alarm.cleared:
        return None
    alarm = data.alarm
    critical = alarm.severity == frame_pb2.Alarm.SEVERITY_CRITICAL
    exception = _Ex(kind=_Ex.Kind.Value(f"KIND_{fault_kind(alarm.code, alarm.component)}"),
                    severity=_Ex.SEVERITY_CRITICAL if critical else _Ex.SEVERITY_WARNING,
                    description=f"{alarm.code}: {alarm.description}"[:1000], frame_sequence=data.frame_sequence)
    if data.HasField("location"):
        exception.location.CopyFrom(data.location)
    return _Raise(name=data.mission, exception=exception,
                  request_id=_request_id(data.vehicle, data.frame_sequence, alarm.code))


def route_deviated(data: tev.RouteDeviated) -> _Raise | None:
    """A ROUTE_DEVIATION exception."""
    if not data.mission:
        return None
    exception = _Ex(kind=_Ex.KIND_ROUTE_DEVIATION, severity=_Ex.SEVERITY_WARNING,
                    description=(f"{data.distance_meters:.0f} m off the planned route (corridor "
                                 f"{data.corridor_width_meters:.0f} m) for {data.frames} frames"),
                    location=data.location, frame_sequence=data.frame_sequence)
    return _Raise(name=data.mission, exception=exception,
                  request_id=_request_id(data.vehicle, data.frame_sequence, "route"))


def road_closure(data: tev.RoadClosureReported, mission: mission_pb2.Mission) -> _Raise | None:
    """A ROAD_CLOSURE exception where the truck is, with no waypoints: the route round it is the mission service's
    to find (its lane facts' road network), and it stops the truck when there is none. None while the mission has
    an open ROAD_CLOSURE already: a truck that repeats its report (every frame while it holds) gets one detour."""
    return _reported(data, mission, _Ex.KIND_ROAD_CLOSURE, "the truck reports the road ahead closed", "closure")


def law_enforcement_stop(data: tev.LawEnforcementStopReported, mission: mission_pb2.Mission) -> _Raise | None:
    """A LAW_ENFORCEMENT_STOP exception where the truck is, without a contingency: the fleet's rule hands the truck
    to a remote human operator (HUMAN_TAKEOVER), who deals with the officer. None while the mission has one open
    already (a truck that repeats its report)."""
    return _reported(data, mission, _Ex.KIND_LAW_ENFORCEMENT_STOP, "the truck reports a law-enforcement stop",
                     "police")


def _reported(data: tev.RoadClosureReported | tev.LawEnforcementStopReported, mission: mission_pb2.Mission,
              kind: int, what: str, cause: str) -> _Raise | None:
    """An exception of ``kind`` for a truck's device-event report (:data:`DEVICE_EVENT_REPORTS`) where it was, in its
    words; None without a mission or while one of that kind is open."""
    if not data.mission or any(e.kind == kind and not e.HasField("resolve_time") for e in mission.exceptions):
        return None
    exception = _Ex(kind=kind, severity=_Ex.SEVERITY_WARNING, frame_sequence=data.frame_sequence,  # type: ignore[arg-type]
                    description=f"{what}: {data.detail or 'no detail'}"[:500])
    if data.HasField("location"):
        exception.location.CopyFrom(data.location)
    return _Raise(name=data.mission, exception=exception,
                  request_id=_request_id(data.vehicle, data.frame_sequence, cause))
