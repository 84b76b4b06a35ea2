"""Mission assignments to trucks: a dispatched mission becomes a command on its truck's stream.

The mission service announces a dispatch with a ``haulmesh.mission.v1.dispatched`` event; the telemetry
service, which holds the trucks' streams, queues the assignment for the truck (sent at once when it is
connected, on its next connection otherwise). The command id is derived from the mission, so a
redelivered event never sends a second assignment.
"""

from __future__ import annotations

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import stream_pb2

from .store import TelemetryStore

__all__ = ["DISPATCHED", "AssignmentRelay", "assignment_command"]

DISPATCHED = "haulmesh.mission.v1.dispatched"


def assignment_command(mission: mission_pb2.Mission) -> stream_pb2.Command:
    """The MissionAssignment command for a dispatched mission (id ``assign-<mission id>``)."""
    mission_id = mission.name.removeprefix("missions/")
    command = stream_pb2.Command(command_id=f"assign-{mission_id}", assign_mission=stream_pb2.MissionAssignment(
        mission_id=mission_id, load=mission.load, stops=mission.stops,
        check_ins_required=mission.check_in_requirement.required))
    command.issue_time.GetCurrentTime()
    return command


class AssignmentRelay:
    """The event handler that queues each dispatched mission's assignment for its truck."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def __call__(self, event: event_pb2.Event) -> None:
        mission = event.mission_dispatched.mission
        if mission.vehicle:
            await self._store.enqueue_command(mission.vehicle.removeprefix("vehicles/"), assignment_command(mission))
