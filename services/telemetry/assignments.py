"""Mission assignments to trucks: a dispatched mission becomes a command on its truck's stream.

The mission service announces a dispatch with a ``haulmesh.mission.v1.dispatched`` event; the telemetry
service, which holds the trucks' streams, queues the assignment for the truck (sent at once when it is
connected, on its next connection otherwise). The command id is derived from the mission, so a
redelivered event never sends a second assignment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import stream_pb2

from .store import TelemetryStore

__all__ = ["DISPATCHED", "AssignmentRelay", "assignment_command"]

DISPATCHED = "haulmesh.mission.v1.dispatched"
_PREFIX = "assign-"


def assignment_command(mission: mission_pb2.Mission) -> stream_pb2.Command:
    """The MissionAssignment command for a dispatched mission (id ``assign-<mission id>``)."""
    mission_id = mission.name.removeprefix("missions/")
    command = stream_pb2.Command(command_id=f"{_PREFIX}{mission_id}", assign_mission=stream_pb2.MissionAssignment(
        mission_id=mission_id, load=mission.load, stops=mission.stops,
        check_ins_required=mission.check_in_requirement.required))
    command.issue_time.GetCurrentTime()
    return command


class AssignmentRelay:
    """Queues each dispatched mission's assignment for its truck, and reports the truck's acceptance.

    ``acknowledge(carrier_id, mission_name, ack)`` tells the mission service the truck accepted (the
    dispatch acknowledgement time of the seed's SLO is the truck's, from its CommandAck).
    """

    def __init__(self, store: TelemetryStore,
                 acknowledge: Callable[[str, str, stream_pb2.CommandAck], Awaitable[None]]) -> None:
        self._store = store
        self._acknowledge = acknowledge

    async def __call__(self, event: event_pb2.Event) -> None:
        mission = event.mission_dispatched.mission
        if not mission.vehicle:
            return
        vehicle_id = mission.vehicle.removeprefix("vehicles/")
        command = assignment_command(mission)
        await self._store.remember_command_carrier(vehicle_id, command.command_id,
                                                   event.carrier.removeprefix("carriers/"))
        await self._store.enqueue_command(vehicle_id, command)

    async def on_command_ack(self, vehicle_id: str, ack: stream_pb2.CommandAck) -> None:
        """Called for every CommandAck: an accepted assignment acknowledges the dispatch."""
        accepted = (stream_pb2.CommandAck.OUTCOME_ACCEPTED, stream_pb2.CommandAck.OUTCOME_COMPLETED)
        if not ack.command_id.startswith(_PREFIX) or ack.outcome not in accepted:
            return
        carrier_id = await self._store.command_carrier(vehicle_id, ack.command_id)
        if carrier_id:
            await self._acknowledge(carrier_id, f"missions/{ack.command_id.removeprefix(_PREFIX)}", ack)
