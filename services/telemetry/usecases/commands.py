"""Commands to trucks: the command a mission event calls for (domain/commands.py) is remembered with its carrier
and mission, and queued for the truck (the store rings the doorbell; the deliverer sends it on the truck's
stream, now or on its next connection, until the truck acknowledges it)."""

from __future__ import annotations

from haulmesh.events.v1 import event_pb2
from haulmesh.telemetry.v1 import stream_pb2

from ..domain import command_for
from ..store import TelemetryStore

__all__ = ["CommandRelay"]


class CommandRelay:
    """Queues the command each mission event calls for (consumer ``telemetry-missions``, workers.py)."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def __call__(self, event: event_pb2.Event) -> None:
        found = command_for(event)
        if found is None:
            return
        vehicle, mission, command = found
        if vehicle is None:  # the event names only the mission: the vehicle it was assigned to
            vehicle = await self._store.mission_vehicle(mission)
        await self._queue(vehicle, mission, event.carrier.removeprefix("carriers/"), command)

    async def _queue(self, vehicle: str, mission: str, carrier_id: str, command: stream_pb2.Command) -> None:
        if not vehicle:
            return
        vehicle_id = vehicle.removeprefix("vehicles/")
        await self._store.remember_command(vehicle_id, command.command_id, carrier_id, mission)
        await self._store.enqueue_command(vehicle_id, command)
