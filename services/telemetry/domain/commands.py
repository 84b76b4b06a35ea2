"""Commands to trucks from the mission service's events: assignment, reroute, stop, hand-over and hand-back,
cancellation.

The mission service announces what a truck must do through its events; the telemetry service, which holds
the trucks' streams, queues the matching command for the truck (sent at once when it is connected, on its
next connection otherwise, and again on every connection until the truck acknowledges it):

* ``dispatched`` → ``assign_mission`` (id ``assign-<mission>``);
* ``exception_raised`` with contingency REROUTE → ``reroute`` with the exception's waypoints, MINIMAL_RISK_STOP
  → ``stop`` (MODE_MINIMAL_RISK_STOP), HOLD → ``stop`` (MODE_HOLD);
* ``exception_raised`` with a takeover (contingency HUMAN_TAKEOVER) → ``hand_over``, and that exception's
  ``exception_resolved`` (its takeover's hand-back asked for) → ``hand_back`` (:func:`takeover_command_of` reads
  their ids back);
* ``state_changed`` to CANCELLED → ``cancel_assignment`` (id ``cancel-<mission>``).

Command ids derive from the mission or exception, so a redelivered event never sends a second command: an
exception's is ``<action>-<mission>-<exception id>`` (``reroute``, ``stop``, ``handover``, ``handback``), the mission
included because exception ids are unique within a mission only and a vehicle's issued ids are kept 30 days (a
second mission's ``exc-1`` must not pass for the first's, which the queue would drop as already sent).
Each command remembers its carrier and mission: the truck's acknowledgement is announced on the carrier's
stream (``command_acknowledged``) and, for an assignment, acknowledges the dispatch, for a hand-over or hand-back
confirms the takeover's step (see domain/actions.py).

Here the rule (which command an event calls for); usecases/commands.py queues it.
"""
from __future__ import annotations

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import stream_pb2

__all__ = ["ASSIGN_PREFIX", "COMMAND_EVENT_TYPES", "assignment_command", "command_for", "takeover_command_of"]

ASSIGN_PREFIX = "assign-"
#: The id's action of each takeover command, by its payload field.
_TAKEOVER_PREFIXES = {"hand_over": "handover", "hand_back": "handback"}
#: The mission service's events that become commands.
COMMAND_EVENT_TYPES = frozenset({"haulmesh.mission.v1.dispatched", "haulmesh.mission.v1.exception_raised",
                                 "haulmesh.mission.v1.exception_resolved", "haulmesh.mission.v1.state_changed"})
_Exception = mission_pb2.MissionException


def _command(command_id: str, **payload: object) -> stream_pb2.Command:
    command = stream_pb2.Command(command_id=command_id, **payload)  # type: ignore[arg-type]
    command.issue_time.GetCurrentTime()
    return command


def assignment_command(mission: mission_pb2.Mission) -> stream_pb2.Command:
    """The MissionAssignment command for a dispatched mission (id ``assign-<mission id>``). Its planned route is the
    mission's (a known road's geometry), else the stops' locations in order: the truck drives the way the cloud
    planned either way, never a road of its own choosing."""
    mission_id = mission.name.removeprefix("missions/")
    route = list(mission.planned_route) or [stop.location for stop in mission.stops]
    return _command(f"{ASSIGN_PREFIX}{mission_id}", assign_mission=stream_pb2.MissionAssignment(
        mission_id=mission_id, load=mission.load, stops=mission.stops,
        check_ins_required=mission.check_in_requirement.required, planned_route=route))


def _exception_command_id(action: str, mission_id: str, exception_id: str) -> str:
    """The id of the command an exception calls for (see the module docstring)."""
    return f"{action}-{mission_id}-{exception_id}"


def _takeover_command(payload: str, mission_id: str, exception: mission_pb2.MissionException, reason: str,
                      ) -> stream_pb2.Command:
    message = stream_pb2.HandOver if payload == "hand_over" else stream_pb2.HandBack
    return _command(_exception_command_id(_TAKEOVER_PREFIXES[payload], mission_id, exception.exception_id),
                    **{payload: message(mission_id=mission_id, exception_id=exception.exception_id,
                                        reason=reason[:500])})


def takeover_command_of(command_id: str, mission: str) -> tuple[str, str] | None:
    """``(payload, exception id)`` of a hand-over or hand-back command sent for ``mission`` (``missions/{m}``) by its
    id (``hand_over`` or ``hand_back``); None for any other command."""
    for payload, action in _TAKEOVER_PREFIXES.items():
        head = _exception_command_id(action, mission.removeprefix("missions/"), "")
        if mission and command_id.startswith(head) and len(command_id) > len(head):
            return payload, command_id.removeprefix(head)
    return None


def _exception_command(mission_id: str, exception: mission_pb2.MissionException) -> stream_pb2.Command | None:
    reason = f"{_Exception.Kind.Name(exception.kind).removeprefix('KIND_')}: {exception.description}"[:500]
    if exception.HasField("takeover"):  # the mission service records one for contingency HUMAN_TAKEOVER
        return _takeover_command("hand_over", mission_id, exception, reason)
    if exception.contingency == _Exception.CONTINGENCY_REROUTE and exception.reroute_waypoints:
        return _command(_exception_command_id("reroute", mission_id, exception.exception_id),
                        reroute=stream_pb2.Reroute(mission_id=mission_id, waypoints=exception.reroute_waypoints,
                                                   reason=reason, exception_id=exception.exception_id))
    modes = {_Exception.CONTINGENCY_MINIMAL_RISK_STOP: stream_pb2.StopVehicle.MODE_MINIMAL_RISK_STOP,
             _Exception.CONTINGENCY_HOLD: stream_pb2.StopVehicle.MODE_HOLD}
    if exception.contingency in modes:
        return _command(_exception_command_id("stop", mission_id, exception.exception_id), stop=stream_pb2.StopVehicle(
            mission_id=mission_id, mode=modes[exception.contingency], reason=reason,
            exception_id=exception.exception_id))
    return None


def command_for(event: event_pb2.Event) -> tuple[str | None, str, stream_pb2.Command] | None:
    """``(vehicle, mission, command)`` a mission event calls for, None if none. ``vehicle`` is the mission's
    ``vehicles/{v}`` ("" when it has none: nothing to send), or None when the event names only the mission and
    the vehicle it was assigned to must be looked up."""
    which = event.WhichOneof("data")
    if which == "mission_dispatched":
        mission = event.mission_dispatched.mission
        return mission.vehicle, mission.name, assignment_command(mission)
    if which == "mission_state_changed":
        mission = event.mission_state_changed.mission
        if mission.state == mission_pb2.Mission.STATE_CANCELLED:
            mission_id = mission.name.removeprefix("missions/")
            return mission.vehicle, mission.name, _command(
                f"cancel-{mission_id}", cancel_assignment=stream_pb2.CancelAssignment(
                    mission_id=mission_id, reason="the mission was cancelled"))
        return None
    if which == "mission_exception_raised":
        raised = event.mission_exception_raised
        command = _exception_command(raised.mission.removeprefix("missions/"), raised.exception)
        return None if command is None else (None, raised.mission, command)
    if which == "mission_exception_resolved":
        resolved = event.mission_exception_resolved
        if not resolved.exception.takeover.HasField("hand_back_request_time"):
            return None
        return None, resolved.mission, _takeover_command("hand_back", resolved.mission.removeprefix("missions/"),
                                                         resolved.exception, resolved.exception.resolution)
    return None
