"""TenderService over gRPC: translation between the wire and the tender book, nothing more."""

from __future__ import annotations

import grpc

from haulmesh.tender.v1 import tender_service_pb2, tender_service_pb2_grpc
from services.runtime import NotFound, Policy, carrier, list_page, next_page_token

from .domain import parse_tender_name
from .store import TenderStore

__all__ = ["POLICY", "TenderServicer"]

_SERVICE = "/haulmesh.tender.v1.TenderService"

#: Who may call what. Only the gateway (the TMS's door) reaches the tender book.
POLICY = Policy({
    f"{_SERVICE}/CreateTender": ["service/gateway"],
    f"{_SERVICE}/GetTender": ["service/gateway", "service/mission", "service/billing"],
    f"{_SERVICE}/ListTenders": ["service/gateway"],
    f"{_SERVICE}/UpdateTender": ["service/gateway"],
    f"{_SERVICE}/CancelTender": ["service/gateway"],
    f"{_SERVICE}/AcceptTender": ["service/gateway"],
    f"{_SERVICE}/DeclineTender": ["service/gateway"],
})


class TenderServicer(tender_service_pb2_grpc.TenderServiceServicer):
    """Tender book RPCs. Methods not implemented yet answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, store: TenderStore) -> None:
        self._store = store

    async def GetTender(self, request: tender_service_pb2.GetTenderRequest,
                        context: grpc.aio.ServicerContext):
        tender_id = parse_tender_name(request.name)
        tender = await self._store.get(carrier(context), tender_id)
        if tender is None:
            raise NotFound(f"{request.name} does not exist", reason="TENDER_NOT_FOUND",
                           metadata={"name": request.name})
        return tender

    async def ListTenders(self, request: tender_service_pb2.ListTendersRequest,
                          context: grpc.aio.ServicerContext):
        tenant = carrier(context)
        page, query = list_page(request, f"tenders of {tenant}")
        tenders, cursor = await self._store.list(tenant, page)
        return tender_service_pb2.ListTendersResponse(tenders=tenders,
                                                      next_page_token=next_page_token(cursor, query))
