"""An operator's commands to a vehicle (TelemetryService.CreateVehicleCommand): what a request may hold, the Command
the truck is sent for it, and the state the truck's acknowledgements put it in.

Unlike the commands mission events call for (commands.py), these are a person's decision: a minimal-risk stop or a
hold, a reroute through waypoints, a resume after a stop, the cancel of the assignment. The vehicle decides how
(the AV stays in control: a remote operator can ask, not drive), and says what it did in CommandAcks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from haulmesh.telemetry.v1 import command_pb2, stream_pb2
from services.runtime import FieldViolation, InvalidArgument, to_timestamp
from services.runtime.limits import MAX_COMMAND_EXCEPTION_ID, MAX_COMMAND_REASON, MAX_REROUTE_WAYPOINTS

from .fleet import valid_fix

__all__ = ["DEFAULT_EXPIRY", "MAX_EXPIRY", "MAX_REASON_CHARS", "MAX_WAYPOINTS", "NEEDS_MISSION", "command_state",
           "stream_command", "validate_vehicle_command"]

VehicleCommand = command_pb2.VehicleCommand
State = VehicleCommand.State
Outcome = stream_pb2.CommandAck.Outcome

MAX_REASON_CHARS = MAX_COMMAND_REASON
MAX_EXCEPTION_ID_CHARS = MAX_COMMAND_EXCEPTION_ID
MAX_WAYPOINTS = MAX_REROUTE_WAYPOINTS
#: Long enough for a truck in a dead zone to come back and still act on it; short enough that a stale stop is not
#: carried out an hour later. An operator may set up to MAX_EXPIRY.
DEFAULT_EXPIRY = timedelta(minutes=15)
MAX_EXPIRY = timedelta(hours=24)
#: Actions that act on the vehicle's current mission and mean nothing without one.
NEEDS_MISSION = frozenset({"reroute", "cancel_assignment"})

_FINAL = {Outcome.OUTCOME_COMPLETED: State.STATE_COMPLETED, Outcome.OUTCOME_REJECTED: State.STATE_REJECTED,
          Outcome.OUTCOME_FAILED: State.STATE_FAILED}


def validate_vehicle_command(command: command_pb2.VehicleCommand, now: datetime) -> None:
    """INVALID_ARGUMENT with a violation per field when the request cannot be sent as it is."""
    violations: list[FieldViolation] = []
    action = command.WhichOneof("action")
    if action is None:
        violations.append(FieldViolation("vehicle_command.action",
                                         "exactly one of stop, reroute, resume, cancel_assignment is required"))
    reason = command.reason.strip()
    if not reason:
        violations.append(FieldViolation("vehicle_command.reason", "required: why the command is sent"))
    elif len(command.reason) > MAX_REASON_CHARS:
        violations.append(FieldViolation("vehicle_command.reason", f"at most {MAX_REASON_CHARS} characters"))
    if action == "reroute":
        violations += _waypoint_violations(command.reroute.waypoints)
    if action == "stop" and command.stop.mode not in stream_pb2.StopVehicle.Mode.values():
        violations.append(FieldViolation("vehicle_command.stop.mode", "unknown mode"))
    if action in ("stop", "reroute") and len(getattr(command, action).exception_id) > MAX_EXCEPTION_ID_CHARS:
        violations.append(FieldViolation(f"vehicle_command.{action}.exception_id",
                                         f"at most {MAX_EXCEPTION_ID_CHARS} characters"))
    if command.HasField("expire_time"):
        expire = command.expire_time.ToDatetime(tzinfo=now.tzinfo)
        if expire <= now:
            violations.append(FieldViolation("vehicle_command.expire_time", "must be in the future"))
        elif expire - now > MAX_EXPIRY:
            violations.append(FieldViolation("vehicle_command.expire_time",
                                             f"at most {int(MAX_EXPIRY.total_seconds() // 3600)} hours ahead"))
    if violations:
        raise InvalidArgument(f"invalid vehicle command: {', '.join(v.field for v in violations[:5])}",
                              violations=violations)


def _waypoint_violations(waypoints: Sequence[object]) -> list[FieldViolation]:
    field = "vehicle_command.reroute.waypoints"
    if not waypoints:
        return [FieldViolation(field, "at least one waypoint is required")]
    if len(waypoints) > MAX_WAYPOINTS:
        return [FieldViolation(field, f"at most {MAX_WAYPOINTS} waypoints")]
    return [FieldViolation(f"{field}[{i}]", "lat in [-90, 90] and lon in [-180, 180], not 0,0")
            for i, point in enumerate(waypoints) if not valid_fix(point)]  # type: ignore[arg-type]


def stream_command(command: command_pb2.VehicleCommand, command_id: str, mission_id: str,
                   now: datetime) -> stream_pb2.Command:
    """The Command the truck is sent: the action with the server's mission and reason, issue and expiry times."""
    out = stream_pb2.Command(command_id=command_id)
    out.issue_time.CopyFrom(to_timestamp(now))
    out.expire_time.CopyFrom(command.expire_time if command.HasField("expire_time")
                             else to_timestamp(now + DEFAULT_EXPIRY))
    action = command.WhichOneof("action")
    payload = getattr(out, action)
    payload.CopyFrom(getattr(command, action))
    payload.mission_id = mission_id
    payload.reason = command.reason
    if action == "stop" and payload.mode == stream_pb2.StopVehicle.MODE_UNSPECIFIED:
        payload.mode = stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP
    return out


def command_state(acks: Sequence[stream_pb2.CommandAck], expire_time: datetime | None, now: datetime) -> int:
    """The state the acknowledgements received put the command in: a final answer wins over ACCEPTED, whatever
    order they arrived in; without one, EXPIRED once ``expire_time`` has passed (the truck will not act on it)."""
    outcomes = {ack.outcome for ack in acks}
    for outcome, state in _FINAL.items():
        if outcome in outcomes:
            return state
    if expire_time is not None and now >= expire_time:
        return State.STATE_EXPIRED
    return State.STATE_ACCEPTED if Outcome.OUTCOME_ACCEPTED in outcomes else State.STATE_QUEUED
