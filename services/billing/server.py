"""BillingService over gRPC: translation between the wire and the billing rules, nothing more."""

from __future__ import annotations

import grpc

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from services.runtime import NotFound, Policy, carrier, list_page, next_page_token

from .domain import parse_invoice_name
from .store import BillingStore

__all__ = ["POLICY", "BillingServicer"]

_SERVICE = "/haulmesh.billing.v1.BillingService"
_OPERATORS = "operator/*"

#: Who may call what: the TMS (through the gateway) reads and reconciles, tender prices offers, mission
#: meters usage, commercial operators keep the rate cards.
POLICY = Policy({
    f"{_SERVICE}/CreateRateCard": [_OPERATORS],
    f"{_SERVICE}/GetRateCard": ["service/gateway", "service/tender", _OPERATORS],
    f"{_SERVICE}/ListRateCards": ["service/gateway", "service/tender", _OPERATORS],
    f"{_SERVICE}/UpdateRateCard": [_OPERATORS],
    f"{_SERVICE}/CreateQuote": ["service/tender"],
    f"{_SERVICE}/GetQuote": ["service/gateway", "service/tender", _OPERATORS],
    f"{_SERVICE}/RecordUsage": ["service/mission"],
    f"{_SERVICE}/GetInvoice": ["service/gateway", _OPERATORS],
    f"{_SERVICE}/ListInvoices": ["service/gateway", _OPERATORS],
    f"{_SERVICE}/ReconcileInvoice": ["service/gateway"],
})


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """Billing RPCs. Methods not implemented yet answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, store: BillingStore) -> None:
        self._store = store

    async def GetInvoice(self, request: billing_service_pb2.GetInvoiceRequest,
                         context: grpc.aio.ServicerContext):
        invoice = await self._store.get_invoice(carrier(context), parse_invoice_name(request.name))
        if invoice is None:
            raise NotFound(f"{request.name} does not exist", reason="INVOICE_NOT_FOUND",
                           metadata={"name": request.name})
        return invoice

    async def ListInvoices(self, request: billing_service_pb2.ListInvoicesRequest,
                           context: grpc.aio.ServicerContext):
        tenant = carrier(context)
        page, query = list_page(request, f"invoices of {tenant}")
        invoices, cursor = await self._store.list_invoices(tenant, page)
        return billing_service_pb2.ListInvoicesResponse(invoices=invoices,
                                                        next_page_token=next_page_token(cursor, query))
