"""The mesh services the EDI service calls, always for the partner's carrier, and which of their failures pass."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import redis

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, mission_service_pb2_grpc, vehicle_pb2
from haulmesh.tender.v1 import tender_pb2, tender_service_pb2, tender_service_pb2_grpc
from services.runtime import Unavailable, carrier_metadata

from ..convert import UPDATE_PATHS

__all__ = ["MissionClient", "TenderClient", "is_transient"]


class TenderClient:
    """The tender service as the edi service calls it: always for the partner's carrier (haulmesh-carrier)."""

    def __init__(self, stub: Callable[[], tender_service_pb2_grpc.TenderServiceStub]) -> None:
        self._stub = stub

    async def create(self, carrier: str, request: tender_service_pb2.CreateTenderRequest) -> tender_pb2.Tender:
        return await self._stub().CreateTender(request, metadata=carrier_metadata(carrier))

    async def get(self, carrier: str, name: str) -> tender_pb2.Tender:
        return await self._stub().GetTender(tender_service_pb2.GetTenderRequest(name=name),
                                            metadata=carrier_metadata(carrier))

    async def update(self, carrier: str, name: str, changed: tender_pb2.Tender) -> tender_pb2.Tender:
        request = tender_service_pb2.UpdateTenderRequest(tender=changed)
        request.tender.name = name
        request.update_mask.paths.extend(UPDATE_PATHS)
        return await self._stub().UpdateTender(request, metadata=carrier_metadata(carrier))

    async def cancel(self, carrier: str, name: str, reason: str) -> tender_pb2.Tender:
        return await self._stub().CancelTender(tender_service_pb2.CancelTenderRequest(name=name, reason=reason),
                                               metadata=carrier_metadata(carrier))

    async def accept(self, carrier: str, name: str) -> tender_pb2.Tender:
        return await self._stub().AcceptTender(tender_service_pb2.AcceptTenderRequest(name=name),
                                               metadata=carrier_metadata(carrier))

    async def decline(self, carrier: str, name: str, reason: int, comment: str) -> tender_pb2.Tender:
        return await self._stub().DeclineTender(
            tender_service_pb2.DeclineTenderRequest(name=name, reason=reason, comment=comment),
            metadata=carrier_metadata(carrier))


class MissionClient:
    """The mission service as the edi service reads it: a partner's mission (its tender, vehicle and stops) when
    its dispatch was not seen, and the position of its vehicle for en-route statuses (X6)."""

    def __init__(self, stub: Callable[[], mission_service_pb2_grpc.MissionServiceStub]) -> None:
        self._stub = stub

    async def get(self, carrier: str, name: str) -> mission_pb2.Mission:
        return await self._stub().GetMission(mission_service_pb2.GetMissionRequest(name=name),
                                             metadata=carrier_metadata(carrier))

    async def vehicle(self, name: str) -> vehicle_pb2.Vehicle:
        return await self._stub().GetVehicle(mission_service_pb2.GetVehicleRequest(name=name))


#: A call failed by these passes by itself: the file stays in ``in/`` and is taken again (never a 990 decline).
_TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED})


def is_transient(exc: BaseException) -> bool:
    """Whether a failed step is to be retried (the store, a peer or the disk hiccuped), not answered or failed."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _TRANSIENT_CODES
    return isinstance(exc, (redis.RedisError, OSError, TimeoutError, Unavailable))
