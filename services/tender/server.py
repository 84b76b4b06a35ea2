"""TenderService and FacilityService over gRPC: the carrier from the call's metadata, the request to a use case
(:class:`~services.tender.usecases.TenderBook`, :class:`~services.tender.usecases.FacilityRegistry`), its answer
back. No rules here."""

from __future__ import annotations

import time

from google.protobuf import empty_pb2

from haulmesh.tender.v1 import facility_service_pb2_grpc, tender_service_pb2_grpc
from services.runtime import Policy, carrier

from .domain import State
from .metrics import TENDER_PROCESSING
from .usecases import FacilityRegistry, TenderBook

__all__ = ["FACILITY_POLICY", "POLICY", "TENDER_POLICY", "FacilityServicer", "TenderServicer"]

_SERVICE = "/haulmesh.tender.v1.TenderService"
_FACILITIES = "/haulmesh.tender.v1.FacilityService"

#: Who may call what. The TMS's doors reach the tender book: the gateway (REST) and the EDI service (X12 204s,
#: always for its partner's carrier).
TENDER_POLICY = Policy({
    f"{_SERVICE}/CreateTender": ["service/gateway", "service/edi"],
    f"{_SERVICE}/GetTender": ["service/gateway", "service/mission", "service/billing", "service/edi"],
    f"{_SERVICE}/ListTenders": ["service/gateway"],
    f"{_SERVICE}/UpdateTender": ["service/gateway", "service/edi"],
    f"{_SERVICE}/CancelTender": ["service/gateway", "service/edi"],
    f"{_SERVICE}/AcceptTender": ["service/gateway", "service/edi"],
    f"{_SERVICE}/DeclineTender": ["service/gateway", "service/edi"],
})
#: The facility registry is the carrier's, managed through its door like its tenders.
FACILITY_POLICY = Policy({
    f"{_FACILITIES}/CreateFacility": ["service/gateway"],
    f"{_FACILITIES}/GetFacility": ["service/gateway"],
    f"{_FACILITIES}/ListFacilities": ["service/gateway"],
    f"{_FACILITIES}/UpdateFacility": ["service/gateway"],
    f"{_FACILITIES}/DeleteFacility": ["service/gateway"],
})
#: What the tender process serves (its __main__ runs both services).
POLICY = TENDER_POLICY | FACILITY_POLICY


class TenderServicer(tender_service_pb2_grpc.TenderServiceServicer):
    """Tender book RPCs: the carrier from the call's metadata, the rest in :class:`TenderBook`."""

    def __init__(self, book: TenderBook) -> None:
        self._book = book

    async def CreateTender(self, request, context):
        began = time.perf_counter()
        outcome = "failed"
        try:
            tender = await self._book.create(carrier(context), request)
            outcome = "rejected" if tender.state == State.STATE_REJECTED else "offered"
            return tender
        finally:
            TENDER_PROCESSING.labels(outcome).observe(time.perf_counter() - began)

    async def GetTender(self, request, context):
        return await self._book.get(carrier(context), request.name)

    async def ListTenders(self, request, context):
        return await self._book.list(carrier(context), request)

    async def UpdateTender(self, request, context):
        return await self._book.update(carrier(context), request)

    async def CancelTender(self, request, context):
        return await self._book.cancel(carrier(context), request)

    async def AcceptTender(self, request, context):
        return await self._book.accept(carrier(context), request)

    async def DeclineTender(self, request, context):
        return await self._book.decline(carrier(context), request)


class FacilityServicer(facility_service_pb2_grpc.FacilityServiceServicer):
    """Facility registry RPCs: the carrier from the call's metadata, the rest in :class:`FacilityRegistry`."""

    def __init__(self, registry: FacilityRegistry) -> None:
        self._registry = registry

    async def CreateFacility(self, request, context):
        return await self._registry.create(carrier(context), request)

    async def GetFacility(self, request, context):
        return await self._registry.get(carrier(context), request.name)

    async def ListFacilities(self, request, context):
        return await self._registry.list(carrier(context), request)

    async def UpdateFacility(self, request, context):
        return await self._registry.update(carrier(context), request)

    async def DeleteFacility(self, request, context):
        await self._registry.delete(carrier(context), request)
        return empty_pb2.Empty()
