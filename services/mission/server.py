"""MissionService over gRPC: decode the request, call a use case (:mod:`.usecases`), encode the answer.

Decoding includes the request's field checks, which :mod:`.domain` owns; they run before the carrier is
read from the call, as they always have (a request that is both malformed and tenant-less reports the
malformed fields). Rules live in :mod:`.domain`, orchestration in :mod:`.usecases`.
"""

from __future__ import annotations

import grpc

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from services.runtime import FLEET_OPERATORS, PLATFORM_ADMINS, FieldViolation, Policy, caller, carrier, requester

from . import convert, domain
from .domain import Action, parse_mission_name, parse_vehicle_name, raise_if
from .usecases import MissionUseCases

__all__ = ["POLICY", "MissionServicer"]

_SERVICE = "/haulmesh.mission.v1.MissionService"
#: A carrier's missions: its fleet operators (for the carriers their certificates name) and platform admins.
_OPERATORS = (FLEET_OPERATORS, PLATFORM_ADMINS)
#: The roster belongs to the fleet, not to a carrier (vehicle.proto), and a vehicle shows the mission it runs
#: and where it is, whichever carrier's: platform admins only.
_ROSTER = PLATFORM_ADMINS
Mission = mission_pb2.Mission
Context = grpc.aio.ServicerContext

#: Who may call what (mission_service.proto names the callers of each RPC): the TMS through the gateway,
#: the other services for their step of the flow, the mission's own truck for its proof of delivery,
#: and operators by role (docs/security.md, "Operator roles").
POLICY = Policy({
    f"{_SERVICE}/CreateVehicle": [_ROSTER],
    f"{_SERVICE}/GetVehicle": ["service/tender", "service/telemetry", "service/gateway", "service/billing",
                               "service/edi", _ROSTER],
    f"{_SERVICE}/ListVehicles": ["service/tender", "service/telemetry", "service/gateway", "service/billing",
                                 _ROSTER],
    f"{_SERVICE}/UpdateVehicle": [_ROSTER],
    f"{_SERVICE}/GetFleetCapacity": ["service/tender"],
    # Missions come from accepted tenders (the tender service); dispatching by hand reserves a fleet vehicle and
    # names a tender and quote the mission service cannot check: platform admins only.
    f"{_SERVICE}/CreateMission": ["service/tender", PLATFORM_ADMINS],
    f"{_SERVICE}/GetMission": ["service/gateway", "service/tender", "service/telemetry", "service/billing",
                               "service/edi", *_OPERATORS],
    f"{_SERVICE}/ListMissions": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/AcknowledgeMissionDispatch": ["service/telemetry", *_OPERATORS],
    f"{_SERVICE}/StartMission": ["service/telemetry", *_OPERATORS],
    f"{_SERVICE}/ArriveMission": ["service/telemetry", *_OPERATORS],
    f"{_SERVICE}/SubmitProofOfDelivery": ["vehicle/*", *_OPERATORS],
    f"{_SERVICE}/CompleteMission": _OPERATORS,
    f"{_SERVICE}/CancelMission": ["service/tender", *_OPERATORS],
    f"{_SERVICE}/AbortMission": _OPERATORS,
    f"{_SERVICE}/RaiseMissionException": ["service/telemetry", "service/gateway", *_OPERATORS],
    f"{_SERVICE}/ResolveMissionException": ["service/telemetry", "service/gateway", *_OPERATORS],
    f"{_SERVICE}/AcknowledgeMissionTakeover": ["service/telemetry", *_OPERATORS],
    f"{_SERVICE}/RecordCheckIn": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/ReportFleetState": ["service/telemetry"],
})


class MissionServicer(mission_service_pb2_grpc.MissionServiceServicer):
    """Roster and mission RPCs (the billing hand-off and vehicle release run in :mod:`.workers`)."""

    def __init__(self, missions: MissionUseCases) -> None:
        self._missions = missions

    # --- vehicles ------------------------------------------------------------------------------------

    async def CreateVehicle(self, request: mission_service_pb2.CreateVehicleRequest,
                            context: Context) -> vehicle_pb2.Vehicle:
        domain.validate_new_vehicle(request.vehicle_id, request.vehicle)
        return await self._missions.create_vehicle(request.vehicle_id, request.vehicle)

    async def GetVehicle(self, request: mission_service_pb2.GetVehicleRequest, context: Context) -> vehicle_pb2.Vehicle:
        return await self._missions.get_vehicle(request.name)

    async def ListVehicles(self, request: mission_service_pb2.ListVehiclesRequest,
                           context: Context) -> mission_service_pb2.ListVehiclesResponse:
        vehicles, token = await self._missions.list_vehicles(request.filter, request.page_size, request.page_token)
        return mission_service_pb2.ListVehiclesResponse(vehicles=vehicles, next_page_token=token)

    async def UpdateVehicle(self, request: mission_service_pb2.UpdateVehicleRequest,
                            context: Context) -> vehicle_pb2.Vehicle:
        vehicle_id = parse_vehicle_name(request.vehicle.name, field="vehicle.name")
        paths = domain.validate_vehicle_update(request.vehicle, request.update_mask.paths)
        return await self._missions.update_vehicle(vehicle_id, request.vehicle, paths)

    async def GetFleetCapacity(self, request: mission_service_pb2.GetFleetCapacityRequest,
                               context: Context) -> mission_service_pb2.GetFleetCapacityResponse:
        lane, windows, eligible = await self._missions.fleet_capacity(domain.capacity_query(request))
        return mission_service_pb2.GetFleetCapacityResponse(lane=lane, windows=convert.capacity_windows(windows),
                                                            eligible_vehicle_count=eligible)

    async def ReportFleetState(self, request: mission_service_pb2.ReportFleetStateRequest,
                               context: Context) -> mission_service_pb2.ReportFleetStateResponse:
        observations, rejected = domain.fleet_report(request)
        return await self._missions.report_fleet_state(observations, rejected)

    # --- missions ------------------------------------------------------------------------------------

    async def CreateMission(self, request: mission_service_pb2.CreateMissionRequest, context: Context) -> Mission:
        return await self._missions.create_mission(carrier(context), request)

    async def GetMission(self, request: mission_service_pb2.GetMissionRequest, context: Context) -> Mission:
        return await self._missions.get_mission(carrier(context), request.name)

    async def ListMissions(self, request: mission_service_pb2.ListMissionsRequest,
                           context: Context) -> mission_service_pb2.ListMissionsResponse:
        missions, token = await self._missions.list_missions(carrier(context), request.filter, request.page_size,
                                                             request.page_token)
        return mission_service_pb2.ListMissionsResponse(missions=missions, next_page_token=token)

    async def AcknowledgeMissionDispatch(self, request: mission_service_pb2.AcknowledgeMissionDispatchRequest,
                                         context: Context) -> Mission:
        if not request.HasField("ack_time"):
            raise_if([FieldViolation("ack_time", "is required")])
        return await self._missions.acknowledge(carrier(context), request.name, request.etag, request.ack_time)

    async def StartMission(self, request: mission_service_pb2.StartMissionRequest, context: Context) -> Mission:
        domain.validate_pre_trip_checks(request.pre_trip_checks)
        who = requester(context)
        return await self._missions.start(carrier(context), request.name, request.etag, request.pre_trip_checks, who)

    async def ArriveMission(self, request: mission_service_pb2.ArriveMissionRequest, context: Context) -> Mission:
        if not request.HasField("arrive_time"):
            raise_if([FieldViolation("arrive_time", "is required")])
        return await self._missions.arrive(carrier(context), request.name, request.etag, request.arrive_time)

    async def CompleteMission(self, request: mission_service_pb2.CompleteMissionRequest,
                              context: Context) -> Mission:
        return await self._missions.advance(carrier(context), request.name, request.etag, Action.COMPLETE)

    async def CancelMission(self, request: mission_service_pb2.CancelMissionRequest, context: Context) -> Mission:
        domain.validate_reason(Action.CANCEL, request.reason)
        return await self._missions.advance(carrier(context), request.name, request.etag, Action.CANCEL,
                                            reason=request.reason)

    async def AbortMission(self, request: mission_service_pb2.AbortMissionRequest, context: Context) -> Mission:
        domain.validate_reason(Action.ABORT, request.reason)
        return await self._missions.advance(carrier(context), request.name, request.etag, Action.ABORT,
                                            reason=request.reason)

    # --- exceptions, check-ins, proof of delivery ----------------------------------------------------

    async def RaiseMissionException(self, request: mission_service_pb2.RaiseMissionExceptionRequest,
                                    context: Context) -> mission_service_pb2.RaiseMissionExceptionResponse:
        domain.validate_exception(request.exception)
        carrier_id = carrier(context)
        parse_mission_name(request.name)
        return await self._missions.raise_exception(carrier_id, request, requester(context))

    async def ResolveMissionException(self, request: mission_service_pb2.ResolveMissionExceptionRequest,
                                      context: Context) -> mission_service_pb2.ResolveMissionExceptionResponse:
        domain.validate_resolution(request.exception_id, request.resolution)
        who = requester(context)
        mission, exc = await self._missions.resolve_exception(carrier(context), request.name, request.etag,
                                                              request.exception_id, request.resolution, who)
        return mission_service_pb2.ResolveMissionExceptionResponse(mission=mission, exception=exc)

    async def AcknowledgeMissionTakeover(self, request: mission_service_pb2.AcknowledgeMissionTakeoverRequest,
                                         context: Context) -> Mission:
        domain.validate_takeover_ack(request.exception_id, request.step,
                                     request.ack_time if request.HasField("ack_time") else None, request.refusal)
        return await self._missions.acknowledge_takeover(carrier(context), request.name, request.etag,
                                                         request.exception_id, domain.TakeoverStep(request.step),
                                                         request.ack_time, request.refusal)

    async def RecordCheckIn(self, request: mission_service_pb2.RecordCheckInRequest,
                            context: Context) -> mission_service_pb2.RecordCheckInResponse:
        domain.validate_check_in(request.check_in)
        carrier_id = carrier(context)
        parse_mission_name(request.name)
        return await self._missions.record_check_in(carrier_id, request, requester(context))

    async def SubmitProofOfDelivery(self, request: mission_service_pb2.SubmitProofOfDeliveryRequest,
                                    context: Context) -> Mission:
        parse_mission_name(request.name)
        domain.validate_proof(request.proof_of_delivery)
        identity = caller()
        if identity.kind == "vehicle":  # the mission's own truck, with the certificate it presents now
            certificate = context.auth_context()["x509_pem_cert"][0]
            return await self._missions.submit_proof_from_vehicle(identity.name, certificate, request)
        return await self._missions.submit_proof_for_carrier(carrier(context), request)
