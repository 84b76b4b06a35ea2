"""The billing use cases: each reads the store, asks the rules (domain.py, through convert.py), and commits
the record with its event. The servicer (server.py) only hands them the caller's carrier and the request."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf.message import Message

from haulmesh.billing.v1 import billing_service_pb2, invoice_pb2, quote_pb2, rate_card_pb2
from haulmesh.events.v1 import billing_events_pb2, event_pb2
from services.runtime import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    Filter,
    FilterField,
    Idempotency,
    InvalidArgument,
    NotFound,
    check_etag,
    decode_page,
    new_event,
    new_id,
    next_page_token,
    parse_filter,
    parse_name,
    to_timestamp,
)

from . import convert, domain
from .config import BillingConfig
from .convert import (
    card_from_pb,
    etag_of,
    line_to_pb,
    money_from_pb,
    money_to_pb,
    optional_time,
    reconciliation_to_pb,
    usage_from_pb,
)
from .store import BillingStore

__all__ = ["Billing"]

_SOURCE = "billing"

_RATE_CARD_OUTPUT_ONLY = ("name", "carrier", "create_time", "update_time", "etag")
_RATE_CARD_UPDATABLE = ("display_name", "default_rate_per_mile", "lane_rates", "fuel_surcharge_bps",
                        "minimum_charge", "hazmat_surcharge", "detention", "effective_time", "expire_time")
_ISSUED = invoice_pb2.Invoice.STATE_ISSUED


T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _not_found(name: str, reason: str) -> NotFound:
    return NotFound(f"{name} does not exist", reason=reason, metadata={"name": name})


def _found(resource: T | None, name: str, reason: str) -> T:
    """``resource`` as read, or NOT_FOUND ``reason`` naming ``name`` when there is none."""
    if resource is None:
        raise _not_found(name, reason)
    return resource


def _stamp(resource: Message, when: datetime) -> None:
    """Set ``update_time`` and the ``etag`` that goes with the new content."""
    resource.update_time.CopyFrom(to_timestamp(when))
    resource.etag = etag_of(resource)


def _list_query(scope: str, request: Message, fields: Mapping[str, FilterField]) -> tuple[Filter, str]:
    # The filter is part of the query a page token is bound to: a token cannot be replayed with another.
    return parse_filter(request.filter, fields), f"{scope} where {request.filter.strip()}"


class Billing:
    """The billing use cases, one method per RPC: ``(carrier, request) -> answer``."""

    def __init__(self, store: BillingStore, idempotency: Idempotency, config: BillingConfig) -> None:
        self._store = store
        self._idempotency = idempotency
        self._config = config

    # --- rate cards -----------------------------------------------------------------------------------

    async def create_rate_card(self, tenant: str, request: billing_service_pb2.CreateRateCardRequest
                               ) -> rate_card_pb2.RateCard:
        async def create() -> rate_card_pb2.RateCard:
            card = rate_card_pb2.RateCard()
            card.CopyFrom(request.rate_card)
            for name in _RATE_CARD_OUTPUT_ONLY:
                card.ClearField(name)
            domain.validate_rate_card(card_from_pb(card))
            card_id, now = new_id(), _now()
            card.name, card.carrier = f"rateCards/{card_id}", f"carriers/{tenant}"
            card.create_time.CopyFrom(to_timestamp(now))
            _stamp(card, now)
            await self._store.create_rate_card(tenant, card_id, card)
            return card

        return await self._idempotency.run(f"{tenant}:CreateRateCard", request.request_id, request, create,
                                           rate_card_pb2.RateCard)

    async def get_rate_card(self, tenant: str, request: billing_service_pb2.GetRateCardRequest
                            ) -> rate_card_pb2.RateCard:
        return _found(await self._store.get_rate_card(tenant, domain.parse_rate_card_name(request.name)),
                      request.name, "RATE_CARD_NOT_FOUND")

    async def list_rate_cards(self, tenant: str, request: billing_service_pb2.ListRateCardsRequest
                              ) -> billing_service_pb2.ListRateCardsResponse:
        selected, query = _list_query(f"rateCards of {tenant}", request, convert.RATE_CARD_FILTER)
        page = decode_page(request.page_size, request.page_token, query)
        cards, cursor = await self._store.list_rate_cards(
            tenant, page, lambda card: selected.matches(convert.rate_card_filter_values(card)))
        return billing_service_pb2.ListRateCardsResponse(rate_cards=cards,
                                                         next_page_token=next_page_token(cursor, query))

    async def update_rate_card(self, tenant: str, request: billing_service_pb2.UpdateRateCardRequest
                               ) -> rate_card_pb2.RateCard:
        sent = request.rate_card
        card_id = domain.parse_rate_card_name(sent.name, field="rate_card.name")
        paths = [p for p in request.update_mask.paths if p != "*"] or list(_RATE_CARD_UPDATABLE)
        bad = [p for p in paths if p not in _RATE_CARD_UPDATABLE]
        if bad:
            raise InvalidArgument(f"update_mask names fields that cannot be updated: {', '.join(bad)}",
                                  violations=[FieldViolation("update_mask", f"{p}: not updatable") for p in bad])

        def mutate(current: rate_card_pb2.RateCard | None) -> rate_card_pb2.RateCard:
            if current is None:
                raise _not_found(sent.name, "RATE_CARD_NOT_FOUND")
            check_etag(sent.etag, current.etag, current.name)
            updated = rate_card_pb2.RateCard()
            updated.CopyFrom(current)
            for path in paths:
                updated.ClearField(path)
                descriptor = sent.DESCRIPTOR.fields_by_name[path]
                if descriptor.message_type is None:
                    setattr(updated, path, getattr(sent, path))
                elif descriptor.is_repeated:
                    getattr(updated, path).extend(getattr(sent, path))
                elif sent.HasField(path):
                    getattr(updated, path).CopyFrom(getattr(sent, path))
            domain.validate_rate_card(card_from_pb(updated))
            if updated == current:
                return current
            _stamp(updated, _now())
            return updated

        return await self._store.update_rate_card(tenant, card_id, mutate)

    async def _rate_card_in_effect(self, tenant: str, at: datetime) -> rate_card_pb2.RateCard:
        for attempt in range(2):
            async for chunk in self._store.rate_cards_effective_before(tenant, int(at.timestamp() * 1000)):
                found = domain.card_in_effect(((c.name, card_from_pb(c)) for c in chunk), at)
                if found is not None:
                    return next(c for c in chunk if c.name == found[0])
            default = self._config.default_rate_card
            if attempt or default is None:
                break
            # A carrier that has no rate card at all gets the configured default, stored like any other
            # card (so quotes name it and operators can read and change it).
            card = rate_card_pb2.RateCard()
            card.CopyFrom(default)
            card.name, card.carrier = "rateCards/default", f"carriers/{tenant}"
            card.create_time.CopyFrom(to_timestamp(at))
            _stamp(card, at)
            # Not created when the carrier has a card after all (maybe made by a concurrent first quote):
            # either way, look again.
            await self._store.create_rate_card(tenant, "default", card, only_if_none=True)
        raise FailedPrecondition(f"carriers/{tenant} has no rate card in effect; nothing can be quoted",
                                 reason="NO_RATE_CARD")

    # --- quotes ---------------------------------------------------------------------------------------

    async def create_quote(self, tenant: str, request: billing_service_pb2.CreateQuoteRequest) -> quote_pb2.Quote:
        sent = request.quote

        async def create() -> quote_pb2.Quote:
            lane = domain.Lane(sent.lane.origin_region, sent.lane.destination_region) \
                if sent.HasField("lane") else None
            miles = domain.validate_move(lane, sent.route_miles, sent.equipment)
            if sent.tender:
                parse_name(sent.tender, "tenders", field="quote.tender")
            now = _now()
            card = await self._rate_card_in_effect(tenant, now)
            lines = domain.price_quote(card_from_pb(card), lane, miles, sent.equipment, sent.hazmat)
            quote_id = new_id()
            quote = quote_pb2.Quote(
                name=f"quotes/{quote_id}", carrier=f"carriers/{tenant}", tender=sent.tender, lane=sent.lane,
                route_miles=sent.route_miles, equipment=sent.equipment, hazmat=sent.hazmat, rate_card=card.name,
                lines=[line_to_pb(line) for line in lines],
                total=money_to_pb(domain.sum_lines(card.currency_code, lines)),
                create_time=to_timestamp(now), expire_time=to_timestamp(now + domain.QUOTE_VALIDITY))
            await self._store.create_quote(tenant, quote_id, quote, card)
            return quote

        return await self._idempotency.run(f"{tenant}:CreateQuote", request.request_id, request, create,
                                           quote_pb2.Quote)

    async def get_quote(self, tenant: str, request: billing_service_pb2.GetQuoteRequest) -> quote_pb2.Quote:
        quote, _, _ = _found(await self._store.get_quote(tenant, domain.parse_quote_name(request.name)),
                             request.name, "QUOTE_NOT_FOUND")
        return quote

    # --- invoices -------------------------------------------------------------------------------------

    async def record_usage(self, tenant: str, request: billing_service_pb2.RecordUsageRequest
                           ) -> billing_service_pb2.RecordUsageResponse:
        mission_id = parse_name(request.mission, "missions", field="mission")
        parse_name(request.tender, "tenders", field="tender")
        quote_id = domain.parse_quote_name(request.quote, field="quote")
        if not 0 < len(request.tms_load_id) <= 64:
            raise InvalidArgument("tms_load_id is required (at most 64 characters)",
                                  violations=[FieldViolation("tms_load_id", "required, at most 64 characters")])
        if not request.HasField("usage"):
            raise InvalidArgument("usage is required", violations=[FieldViolation("usage", "required")])
        usage = usage_from_pb(request.usage)
        domain.validate_usage(usage)
        quote, basis, accepted_ms = _found(await self._store.get_quote(tenant, quote_id), request.quote,
                                           "QUOTE_NOT_FOUND")
        domain.check_quote_accepted_in_time(
            request.quote, None if accepted_ms is None else datetime.fromtimestamp(accepted_ms / 1000, UTC),
            optional_time(quote, "expire_time"))
        if quote.tender and quote.tender != request.tender:
            raise InvalidArgument(f"{request.quote} prices {quote.tender}, not {request.tender}",
                                  violations=[FieldViolation("quote", f"prices {quote.tender}")])
        card = card_from_pb(basis)
        detention = domain.detention_lines(card.detention, usage.stop_dwells, basis.currency_code)
        if usage.provenance is not None:
            # Measured from telemetry: the line-haul bills the measured miles at the quote's rate (fuel, minimum
            # and hazmat follow); the quote stays the estimate the TMS accepted, reported line by line.
            lane = domain.Lane(quote.lane.origin_region, quote.lane.destination_region)
            measured = domain.measured_lines(card, lane, usage, quote.equipment, quote.hazmat)
            lines = [line_to_pb(line) for line in (*measured, *detention)]
        else:
            lines = [*quote.lines, *(line_to_pb(line) for line in detention)]
        total = domain.sum_money(basis.currency_code, (money_from_pb(line.amount) for line in lines))
        estimates = convert.estimate_differences_to_pb(domain.estimate_differences(
            [convert.line_figure(line) for line in quote.lines], [convert.line_figure(line) for line in lines],
            basis.currency_code))

        def existing(invoice: invoice_pb2.Invoice) -> invoice_pb2.Invoice:
            same = (invoice.usage == request.usage and invoice.tender == request.tender
                    and invoice.quote == request.quote and invoice.tms_load_id == request.tms_load_id)
            if not same:
                raise AlreadyExists(f"{request.mission} is already invoiced ({invoice.name}) with other usage",
                                    reason="INVOICE_ALREADY_EXISTS", metadata={"invoice": invoice.name})
            return invoice

        def build(sequence: int) -> tuple[invoice_pb2.Invoice, event_pb2.Event]:
            now = _now()
            invoice = invoice_pb2.Invoice(
                name=f"invoices/{new_id()}", carrier=f"carriers/{tenant}",
                invoice_number=f"HM-{now.year}-{sequence:06d}", mission=request.mission, tender=request.tender,
                tms_load_id=request.tms_load_id, quote=request.quote, lines=lines, total=money_to_pb(total),
                usage=request.usage, state=_ISSUED, issue_time=to_timestamp(now), estimate_differences=estimates,
                due_time=to_timestamp(now + timedelta(days=self._config.payment_terms_days)))
            _stamp(invoice, now)
            return invoice, new_event("billing_invoice_issued", billing_events_pb2.InvoiceIssued(invoice=invoice),
                                      subject=invoice.name, carrier_id=tenant, source=_SOURCE)

        invoice = await self._store.issue_invoice(tenant, mission_id, existing, build)
        return billing_service_pb2.RecordUsageResponse(invoice=invoice)

    async def get_invoice(self, tenant: str, request: billing_service_pb2.GetInvoiceRequest) -> invoice_pb2.Invoice:
        return _found(await self._store.get_invoice(tenant, domain.parse_invoice_name(request.name)),
                      request.name, "INVOICE_NOT_FOUND")

    async def list_invoices(self, tenant: str, request: billing_service_pb2.ListInvoicesRequest
                            ) -> billing_service_pb2.ListInvoicesResponse:
        selected, query = _list_query(f"invoices of {tenant}", request, convert.INVOICE_FILTER)

        def keep(invoice: invoice_pb2.Invoice) -> bool:
            return selected.matches(convert.invoice_filter_values(invoice))

        page = decode_page(request.page_size, request.page_token, query)
        invoices, cursor = await self._store.list_invoices(tenant, page, keep)
        return billing_service_pb2.ListInvoicesResponse(invoices=invoices,
                                                        next_page_token=next_page_token(cursor, query))

    async def reconcile_invoice(self, tenant: str, request: billing_service_pb2.ReconcileInvoiceRequest
                                ) -> invoice_pb2.Invoice:
        invoice_id = domain.parse_invoice_name(request.name)
        tms_total = money_from_pb(request.tms_total) if request.HasField("tms_total") else None
        tms_lines = [(line.code, money_from_pb(line.amount) if line.HasField("amount") else None)
                     for line in request.tms_lines]

        def mutate(current: invoice_pb2.Invoice | None):
            if current is None:
                raise _not_found(request.name, "INVOICE_NOT_FOUND")
            check_etag(request.etag, current.etag, current.name)
            currency = current.total.currency_code
            domain.validate_tms_figures(currency, tms_total, tms_lines, request.tms_reference)
            result = domain.reconcile([(line.code, money_from_pb(line.amount)) for line in current.lines],
                                      money_from_pb(current.total), tms_total, tms_lines)
            reconciliation = reconciliation_to_pb(result, tms_total, request.tms_reference)
            reconciliation.estimate_differences.extend(current.estimate_differences)
            previous = invoice_pb2.Reconciliation()
            previous.CopyFrom(current.reconciliation)
            previous.ClearField("reconcile_time")
            if current.HasField("reconciliation") and previous == reconciliation:
                return None  # the same figures again: nothing changes (invoice.proto)
            now = _now()
            reconciliation.reconcile_time.CopyFrom(to_timestamp(now))
            updated = invoice_pb2.Invoice()
            updated.CopyFrom(current)
            updated.reconciliation.CopyFrom(reconciliation)
            updated.state = invoice_pb2.Invoice.STATE_MATCHED if result.matched else invoice_pb2.Invoice.STATE_DISPUTED
            _stamp(updated, now)
            event = new_event("billing_invoice_reconciled", billing_events_pb2.InvoiceReconciled(invoice=updated),
                              subject=updated.name, carrier_id=tenant, source=_SOURCE)
            return updated, event

        return await self._store.update_invoice(tenant, invoice_id, mutate)

