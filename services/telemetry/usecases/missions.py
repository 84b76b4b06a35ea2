"""Mission transitions from telemetry: the telemetry service's own events become mission service calls.

Consumer group ``telemetry-actions`` reads the telemetry events that move a mission, so every call is
retried by the consumer (redelivery, then the group's dead-letter stream) instead of being lost with a
failed RPC:

=====================================  ====================================================================
event                                  call
=====================================  ====================================================================
``command_acknowledged`` (assignment)  AcknowledgeMissionDispatch (DISPATCHED → PRE_TRIP; the truck's time)
``health_reported``                    StartMission with the pre-trip checks (PRE_TRIP → ENROUTE); a blocking
                                       check that failed raises a PRE_TRIP_FAILURE exception instead
``geofence_entered`` (last stop)       ArriveMission (ENROUTE → ARRIVED)
``connectivity_lost``                  RaiseMissionException CONNECTIVITY_LOSS
``connectivity_restored``              ResolveMissionException of the open CONNECTIVITY_LOSS exceptions
``fault_reported`` (FAULT, raised)     RaiseMissionException SENSOR_FAULT / VEHICLE_FAULT
``route_deviated``                     RaiseMissionException ROUTE_DEVIATION
=====================================  ====================================================================

Raised exceptions carry a request id derived from the event's vehicle and frame, so a retried call never
raises a second exception. A call refused because the mission is not (yet) in the state the call needs is
retried only where the mission is expected to get there by itself (a pre-trip report that overtook the
dispatch acknowledgement, or that waits for the departure check-in); otherwise it is logged and dropped — the
mission moved on (an operator acted).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2, mission_service_pb2
from haulmesh.telemetry.v1 import frame_pb2, stream_pb2
from haulmesh.type.v1 import health_check_pb2
from services.runtime import carrier_metadata

from .commands import ASSIGN_PREFIX
from .derived import fault_kind

__all__ = ["ACTION_EVENT_TYPES", "MissionActions"]

_log = logging.getLogger("haulmesh.telemetry.actions")

_P = "haulmesh.telemetry.v1."
ACTION_EVENT_TYPES = frozenset(_P + t for t in (
    "command_acknowledged", "health_reported", "geofence_entered", "connectivity_lost", "connectivity_restored",
    "fault_reported", "route_deviated"))
_Ex = mission_pb2.MissionException
_ACCEPTED = (stream_pb2.CommandAck.OUTCOME_ACCEPTED, stream_pb2.CommandAck.OUTCOME_COMPLETED)
_BLOCKING_OK = (health_check_pb2.HealthCheckResult.OUTCOME_PASS, health_check_pb2.HealthCheckResult.OUTCOME_WARN)


class MissionNotReady(Exception):
    """The mission is not yet where this event needs it; the consumer retries the event later."""


def _request_id(vehicle: str, sequence: int, what: str) -> str:
    """The idempotency key of an exception raised for a frame: one exception per vehicle, frame and cause."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", f"{vehicle.removeprefix('vehicles/')}:{sequence}:{what}")[:128]


def _reason_and_state(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    """ErrorInfo reason and its ``state`` metadata from a rich error status, empty if absent."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason, info.metadata.get("state", "")
    return "", ""


class MissionActions:
    """The consumer handler (see the module docstring). ``mission_stub()`` gives the MissionService stub."""

    def __init__(self, mission_stub: Callable[[], Any]) -> None:
        self._stub = mission_stub

    async def __call__(self, event: event_pb2.Event) -> None:
        which = event.WhichOneof("data")
        handler = getattr(self, f"_{which}", None)
        if handler is None or not event.carrier:
            return
        try:
            await handler(getattr(event, which), carrier_metadata(event.carrier.removeprefix("carriers/")))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise  # unavailable, deadline...: the consumer delivers the event again
            reason, state = _reason_and_state(exc)
            not_yet = reason == "CHECK_IN_REQUIRED" or (reason == "INVALID_MISSION_STATE"
                                                         and state == "STATE_DISPATCHED")
            if which == "telemetry_health_reported" and not_yet:
                # The mission gets there by itself (the acknowledgement is on its way, an operator checks in).
                raise MissionNotReady(f"pre-trip report not applicable yet: {reason}") from None
            _log.info("%s for %s not applied: %s %s", event.type, event.subject, reason or exc.code().name,
                      exc.details())

    async def _telemetry_command_acknowledged(self, data: Any, metadata: Any) -> None:
        ack = data.ack
        if not ack.command_id.startswith(ASSIGN_PREFIX) or ack.outcome not in _ACCEPTED or not data.mission:
            return
        await self._stub().AcknowledgeMissionDispatch(mission_service_pb2.AcknowledgeMissionDispatchRequest(
            name=data.mission, ack_time=ack.device_time, command_id=ack.command_id), metadata=metadata)

    async def _telemetry_health_reported(self, data: Any, metadata: Any) -> None:
        if not data.mission or not data.checks:
            return
        failed = [c for c in data.checks if c.blocking and c.outcome not in _BLOCKING_OK]
        if failed:
            names = ", ".join(c.check for c in failed)[:300]
            await self._raise(data.mission, metadata, _request_id(data.vehicle, data.frame_sequence, "pre-trip"), _Ex(
                kind=_Ex.KIND_PRE_TRIP_FAILURE, severity=_Ex.SEVERITY_CRITICAL,
                description=f"blocking pre-trip checks failed: {names}", frame_sequence=data.frame_sequence))
            return
        await self._stub().StartMission(mission_service_pb2.StartMissionRequest(
            name=data.mission, pre_trip_checks=data.checks, frame_sequence=data.frame_sequence), metadata=metadata)

    async def _telemetry_geofence_entered(self, data: Any, metadata: Any) -> None:
        ctx = data.context
        if not ctx.mission or ctx.stop_type != mission_pb2.Stop.TYPE_DELIVERY:
            return
        mission = await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=ctx.mission),
                                                metadata=metadata)
        if ctx.stop_index != len(mission.stops) - 1:
            return  # an intermediate delivery stop; the mission arrives at its destination
        await self._stub().ArriveMission(mission_service_pb2.ArriveMissionRequest(
            name=ctx.mission, arrive_time=ctx.device_time, frame_sequence=ctx.frame_sequence), metadata=metadata)

    async def _telemetry_connectivity_lost(self, data: Any, metadata: Any) -> None:
        if not data.mission:
            return
        exception = _Ex(kind=_Ex.KIND_CONNECTIVITY_LOSS, severity=_Ex.SEVERITY_WARNING,
                        description=f"no message since {data.last_seen_time.ToJsonString()}",
                        frame_sequence=data.last_sequence)
        if data.HasField("last_location"):
            exception.location.CopyFrom(data.last_location)
        outage = f"lost-{data.last_seen_time.ToMilliseconds()}"
        await self._raise(data.mission, metadata, _request_id(data.vehicle, data.last_sequence, outage), exception)

    async def _telemetry_connectivity_restored(self, data: Any, metadata: Any) -> None:
        if not data.mission:
            return
        mission = await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=data.mission),
                                                metadata=metadata)
        outage = data.outage.ToTimedelta().total_seconds()
        for exception in mission.exceptions:
            if exception.kind == _Ex.KIND_CONNECTIVITY_LOSS and not exception.HasField("resolve_time"):
                await self._stub().ResolveMissionException(mission_service_pb2.ResolveMissionExceptionRequest(
                    name=data.mission, exception_id=exception.exception_id,
                    resolution=f"connectivity restored after {outage:.0f} s; telemetry resumed at sequence "
                               f"{data.high_water_sequence}"), metadata=metadata)

    async def _telemetry_fault_reported(self, data: Any, metadata: Any) -> None:
        # ALARM frames (e.g. the truck's own minimal-risk manoeuvre) report the consequence of a fault that
        # was raised already; only FAULT reports raise an exception, and a cleared one raises nothing.
        if not data.mission or data.kind != frame_pb2.FramePayload.KIND_FAULT or data.alarm.cleared:
            return
        alarm = data.alarm
        critical = alarm.severity == frame_pb2.Alarm.SEVERITY_CRITICAL
        exception = _Ex(kind=_Ex.Kind.Value(f"KIND_{fault_kind(alarm.code, alarm.component)}"),
                        severity=_Ex.SEVERITY_CRITICAL if critical else _Ex.SEVERITY_WARNING,
                        description=f"{alarm.code}: {alarm.description}"[:1000], frame_sequence=data.frame_sequence)
        if data.HasField("location"):
            exception.location.CopyFrom(data.location)
        await self._raise(data.mission, metadata, _request_id(data.vehicle, data.frame_sequence, alarm.code),
                          exception)

    async def _telemetry_route_deviated(self, data: Any, metadata: Any) -> None:
        if not data.mission:
            return
        exception = _Ex(kind=_Ex.KIND_ROUTE_DEVIATION, severity=_Ex.SEVERITY_WARNING,
                        description=(f"{data.distance_meters:.0f} m off the planned route (corridor "
                                     f"{data.corridor_width_meters:.0f} m) for {data.frames} frames"),
                        location=data.location, frame_sequence=data.frame_sequence)
        await self._raise(data.mission, metadata, _request_id(data.vehicle, data.frame_sequence, "route"), exception)

    async def _raise(self, mission: str, metadata: Any, request_id: str, exception: mission_pb2.MissionException,
                     ) -> None:
        await self._stub().RaiseMissionException(mission_service_pb2.RaiseMissionExceptionRequest(
            name=mission, exception=exception, request_id=request_id), metadata=metadata)
