"""Commands to trucks: the command a mission event calls for (domain/commands.py), and an operator's
(domain/operator_commands.py), each remembered with its carrier and mission and queued for the truck (the store
rings the doorbell; the deliverer sends it on the truck's stream, now or on its next connection, until the truck
acknowledges it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from haulmesh.events.v1 import event_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import command_pb2, stream_pb2, telemetry_service_pb2
from services.runtime import (
    PLATFORM_ADMINS,
    VEHICLE_ID,
    FailedPrecondition,
    FieldViolation,
    Idempotency,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    caller_may,
    check_operator_serves,
    decode_page,
    new_id,
    next_page_token,
    resource_id_pattern,
    timestamp_ms,
)

from .. import metrics
from ..domain import command_for
from ..domain.operator_commands import NEEDS_MISSION, command_state, stream_command, validate_vehicle_command
from ..store import TelemetryStore

__all__ = ["CommandRelay", "OperatorCommands"]

_log = logging.getLogger("haulmesh.telemetry.commands")


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


class OperatorCommands:
    """An operator's commands to a vehicle (CreateVehicleCommand): checked (domain/operator_commands.py), recorded,
    queued for the truck like any other command, and read back with the truck's acknowledgements."""

    def __init__(self, store: TelemetryStore, idempotency: Idempotency,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._idempotency = idempotency
        self._clock = clock

    async def create(self, vehicle_id: str, request: telemetry_service_pb2.CreateVehicleCommandRequest,
                     requester: str, acting_for: str | None = None) -> command_pb2.VehicleCommand:
        """Queue ``request``'s command; ``acting_for`` is the carrier a service caller (the gateway) speaks for,
        None for an operator (whose certificate's grant decides)."""
        now = self._clock()
        wanted = request.vehicle_command
        validate_vehicle_command(wanted, now)
        current = await self._store.mission(vehicle_id)
        carrier_id, mission = ("", "") if current is None else (current[0], mission_pb2.Mission.FromString(
            current[1]).name)
        _check_may_command(vehicle_id, carrier_id, acting_for)
        action = wanted.WhichOneof("action")
        if action in NEEDS_MISSION and not mission:
            raise FailedPrecondition(f"vehicles/{vehicle_id} has no current mission to {action.replace('_', ' ')}",
                                     reason="NO_CURRENT_MISSION", metadata={"vehicle": f"vehicles/{vehicle_id}"})
        normalised = telemetry_service_pb2.CreateVehicleCommandRequest(parent=request.parent, vehicle_command=wanted)
        created = False

        async def compute() -> command_pb2.VehicleCommand:
            nonlocal created
            command_id = new_id()
            record = command_pb2.VehicleCommand(name=f"vehicles/{vehicle_id}/commands/{command_id}",
                                                reason=wanted.reason, mission=mission, requester=requester)
            command = stream_command(wanted, command_id, mission.removeprefix("missions/"), now)
            getattr(record, action).CopyFrom(getattr(command, action))
            record.expire_time.CopyFrom(command.expire_time)
            record.create_time.CopyFrom(command.issue_time)
            await self._store.record_operator_command(vehicle_id, command_id, record.SerializeToString(),
                                                      command.issue_time.ToMilliseconds(), carrier_id, mission)
            await self._store.enqueue_command(vehicle_id, command)
            _log.info("vehicle %s: %s command %s queued by %s (%s)", vehicle_id, action, command_id, requester,
                      mission or "no mission")
            metrics.OPERATOR_COMMANDS.labels(action).inc()
            created = True
            return _view(record, [], now)

        result = await self._idempotency.run(f"{vehicle_id}:CreateVehicleCommand", request.request_id, normalised,
                                             compute, command_pb2.VehicleCommand)
        return result if created else await self.get(result.name, acting_for)

    async def get(self, name: str, acting_for: str | None = None) -> command_pb2.VehicleCommand:
        vehicle_id, command_id = _parse_command_name(name)
        found = await self._store.operator_command(vehicle_id, command_id)
        if found is None:
            raise NotFound(f"{name} does not exist", reason="COMMAND_NOT_FOUND", metadata={"name": name})
        _check_may_command(vehicle_id, found.carrier_id, acting_for)
        return _view(command_pb2.VehicleCommand.FromString(found.record), found.acks, self._clock())

    async def list(self, vehicle_id: str, request: telemetry_service_pb2.ListVehicleCommandsRequest,
                   acting_for: str | None = None) -> telemetry_service_pb2.ListVehicleCommandsResponse:
        query = f"commands of {vehicle_id}"
        page = decode_page(request.page_size, request.page_token, query)
        found, cursor = await self._store.operator_commands(vehicle_id, page.after, page.size)
        now = self._clock()
        # A fleet operator (or the gateway, for one carrier) sees the commands sent for its carriers' missions only.
        visible = [c for c in found if _may_see(vehicle_id, c.carrier_id, acting_for)]
        if acting_for is not None and not visible and not page.after:
            current = await self._store.mission(vehicle_id)
            _check_may_command(vehicle_id, current[0] if current is not None else "", acting_for)
        return telemetry_service_pb2.ListVehicleCommandsResponse(
            vehicle_commands=[_view(command_pb2.VehicleCommand.FromString(c.record), c.acks, now) for c in visible],
            next_page_token=next_page_token(cursor, query))


def _check_may_command(vehicle_id: str, carrier_id: str, acting_for: str | None) -> None:
    """A platform admin may command any vehicle; a fleet operator only one running a mission of a carrier it serves;
    the gateway, acting for one carrier, only one running a mission of that carrier."""
    if acting_for is not None:
        # NOT_FOUND, as any other carrier's resource is to a carrier (AIP-211): whether the vehicle exists, and
        # whose mission it runs, is not the carrier's to learn.
        if carrier_id != acting_for:
            raise NotFound(f"vehicles/{vehicle_id} runs no mission of carriers/{acting_for}",
                           reason="VEHICLE_NOT_FOUND", metadata={"vehicle": f"vehicles/{vehicle_id}"})
        return
    if carrier_id:
        check_operator_serves(carrier_id)
    elif not caller_may([PLATFORM_ADMINS]):
        raise PermissionDenied(f"vehicles/{vehicle_id} runs no mission: only a platform admin may command it",
                               reason="TENANT_NOT_ALLOWED", metadata={"vehicle": f"vehicles/{vehicle_id}"})


def _may_see(vehicle_id: str, carrier_id: str, acting_for: str | None) -> bool:
    try:
        _check_may_command(vehicle_id, carrier_id, acting_for)
    except (PermissionDenied, NotFound):
        return False
    return True


def _parse_command_name(name: str) -> tuple[str, str]:
    """(vehicle id, command id) of ``vehicles/{vehicle}/commands/{command}``; INVALID_ARGUMENT otherwise."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "vehicles" or parts[2] != "commands" or not VEHICLE_ID.fullmatch(parts[1]) \
            or not resource_id_pattern("commands").fullmatch(parts[3]):
        raise InvalidArgument(f"name must be vehicles/{{vehicle}}/commands/{{command}}, got {name[:200]!r}",
                              reason="INVALID_RESOURCE_NAME",
                              violations=[FieldViolation("name", "must be vehicles/{vehicle}/commands/{command}")])
    return parts[1], parts[3]


def _view(record: command_pb2.VehicleCommand, acks: list[tuple[int, stream_pb2.CommandAck]],
          now: datetime) -> command_pb2.VehicleCommand:
    view = command_pb2.VehicleCommand()
    view.CopyFrom(record)
    view.acks.extend(ack for _, ack in acks)
    expire = record.expire_time.ToDatetime(tzinfo=UTC) if record.HasField("expire_time") else None
    view.state = command_state(view.acks, expire, now)
    view.update_time.CopyFrom(timestamp_ms(acks[-1][0]) if acks else record.create_time)
    return view
