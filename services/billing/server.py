"""BillingService over gRPC: the carrier from the call's metadata, the request to a use case
(:class:`~services.billing.usecases.Billing`), its answer back. No rules here."""

from __future__ import annotations

import grpc

from haulmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc, invoice_pb2, quote_pb2, rate_card_pb2
from services.runtime import BILLING_ADMINS, PLATFORM_ADMINS, Policy, carrier

from .usecases import Billing

__all__ = ["POLICY", "BillingServicer"]

_SERVICE = "/haulmesh.billing.v1.BillingService"
#: A carrier's billing: its billing admins (for the carriers their certificates name) and platform admins.
_OPERATORS = (BILLING_ADMINS, PLATFORM_ADMINS)

#: Who may call what: the TMS (through the gateway) reads and reconciles, tender prices offers, mission
#: meters usage, billing admins keep the rate cards. The KPI report and evidence packs keep their
#: own policies (reports/server.py, evidence/server.py).
POLICY = Policy({
    f"{_SERVICE}/CreateRateCard": _OPERATORS,
    f"{_SERVICE}/GetRateCard": ["service/gateway", "service/tender", *_OPERATORS],
    f"{_SERVICE}/ListRateCards": ["service/gateway", "service/tender", *_OPERATORS],
    f"{_SERVICE}/UpdateRateCard": _OPERATORS,
    f"{_SERVICE}/CreateQuote": ["service/tender"],
    f"{_SERVICE}/GetQuote": ["service/gateway", "service/tender", *_OPERATORS],
    f"{_SERVICE}/RecordUsage": ["service/mission"],
    f"{_SERVICE}/GetInvoice": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/ListInvoices": ["service/gateway", *_OPERATORS],
    f"{_SERVICE}/ReconcileInvoice": ["service/gateway"],
})


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    """Billing RPCs: the carrier from the call's metadata, the rest in :class:`Billing`."""

    def __init__(self, billing: Billing) -> None:
        self._billing = billing

    # --- rate cards -----------------------------------------------------------------------------------

    async def CreateRateCard(self, request: billing_service_pb2.CreateRateCardRequest,
                             context: grpc.aio.ServicerContext) -> rate_card_pb2.RateCard:
        return await self._billing.create_rate_card(carrier(context), request)

    async def GetRateCard(self, request: billing_service_pb2.GetRateCardRequest,
                          context: grpc.aio.ServicerContext) -> rate_card_pb2.RateCard:
        return await self._billing.get_rate_card(carrier(context), request)

    async def ListRateCards(self, request: billing_service_pb2.ListRateCardsRequest,
                            context: grpc.aio.ServicerContext) -> billing_service_pb2.ListRateCardsResponse:
        return await self._billing.list_rate_cards(carrier(context), request)

    async def UpdateRateCard(self, request: billing_service_pb2.UpdateRateCardRequest,
                             context: grpc.aio.ServicerContext) -> rate_card_pb2.RateCard:
        return await self._billing.update_rate_card(carrier(context), request)

    # --- quotes ---------------------------------------------------------------------------------------

    async def CreateQuote(self, request: billing_service_pb2.CreateQuoteRequest,
                          context: grpc.aio.ServicerContext) -> quote_pb2.Quote:
        return await self._billing.create_quote(carrier(context), request)

    async def GetQuote(self, request: billing_service_pb2.GetQuoteRequest,
                       context: grpc.aio.ServicerContext) -> quote_pb2.Quote:
        return await self._billing.get_quote(carrier(context), request)

    # --- invoices -------------------------------------------------------------------------------------

    async def RecordUsage(self, request: billing_service_pb2.RecordUsageRequest,
                          context: grpc.aio.ServicerContext) -> billing_service_pb2.RecordUsageResponse:
        return await self._billing.record_usage(carrier(context), request)

    async def GetInvoice(self, request: billing_service_pb2.GetInvoiceRequest,
                         context: grpc.aio.ServicerContext) -> invoice_pb2.Invoice:
        return await self._billing.get_invoice(carrier(context), request)

    async def ListInvoices(self, request: billing_service_pb2.ListInvoicesRequest,
                           context: grpc.aio.ServicerContext) -> billing_service_pb2.ListInvoicesResponse:
        return await self._billing.list_invoices(carrier(context), request)

    async def ReconcileInvoice(self, request: billing_service_pb2.ReconcileInvoiceRequest,
                               context: grpc.aio.ServicerContext) -> invoice_pb2.Invoice:
        return await self._billing.reconcile_invoice(carrier(context), request)
