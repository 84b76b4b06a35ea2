"""MissionService over gRPC: translation between the wire and the roster / mission rules, nothing more."""

from __future__ import annotations

import grpc

from haulmesh.mission.v1 import mission_service_pb2, mission_service_pb2_grpc
from services.runtime import NotFound, Policy, list_page, next_page_token

from .domain import parse_vehicle_name
from .store import MissionStore

__all__ = ["POLICY", "MissionServicer"]

_SERVICE = "/haulmesh.mission.v1.MissionService"
_OPERATORS = "operator/*"

#: Who may call what: the TMS through the gateway, the other services for their step of the flow, and
#: fleet operators (people and tools with an operator certificate).
POLICY = Policy({
    f"{_SERVICE}/CreateVehicle": [_OPERATORS],
    f"{_SERVICE}/GetVehicle": ["service/tender", "service/telemetry", "service/gateway", _OPERATORS],
    f"{_SERVICE}/ListVehicles": ["service/tender", "service/telemetry", "service/gateway", _OPERATORS],
    f"{_SERVICE}/UpdateVehicle": [_OPERATORS],
    f"{_SERVICE}/GetFleetCapacity": ["service/tender"],
    f"{_SERVICE}/CreateMission": ["service/tender", _OPERATORS],
    f"{_SERVICE}/GetMission": ["service/gateway", "service/tender", "service/telemetry", "service/billing",
                               _OPERATORS],
    f"{_SERVICE}/ListMissions": ["service/gateway", _OPERATORS],
    f"{_SERVICE}/AcknowledgeMissionDispatch": ["service/telemetry"],
    f"{_SERVICE}/StartMission": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/ArriveMission": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/SubmitProofOfDelivery": ["vehicle/*", _OPERATORS],
    f"{_SERVICE}/CompleteMission": [_OPERATORS],
    f"{_SERVICE}/CancelMission": ["service/tender", _OPERATORS],
    f"{_SERVICE}/AbortMission": [_OPERATORS],
    f"{_SERVICE}/RaiseMissionException": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/ResolveMissionException": ["service/telemetry", _OPERATORS],
    f"{_SERVICE}/RecordCheckIn": ["service/gateway", _OPERATORS],
})


class MissionServicer(mission_service_pb2_grpc.MissionServiceServicer):
    """Roster and mission RPCs. Methods not implemented yet answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, store: MissionStore) -> None:
        self._store = store

    async def GetVehicle(self, request: mission_service_pb2.GetVehicleRequest,
                         context: grpc.aio.ServicerContext):
        vehicle = await self._store.get_vehicle(parse_vehicle_name(request.name))
        if vehicle is None:
            raise NotFound(f"{request.name} does not exist", reason="VEHICLE_NOT_FOUND",
                           metadata={"name": request.name})
        return vehicle

    async def ListVehicles(self, request: mission_service_pb2.ListVehiclesRequest,
                           context: grpc.aio.ServicerContext):
        page, query = list_page(request, "vehicles")
        vehicles, cursor = await self._store.list_vehicles(page)
        return mission_service_pb2.ListVehiclesResponse(vehicles=vehicles,
                                                        next_page_token=next_page_token(cursor, query))
