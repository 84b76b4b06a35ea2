"""BillingService in the real mesh: real processes, real mTLS, real Valkey.

Each test bills its own carrier (a fresh id), so tests do not see each other's rate cards or invoices.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from haulmesh.billing.v1 import billing_service_pb2 as api
from haulmesh.billing.v1 import billing_service_pb2_grpc, invoice_pb2, quote_pb2, rate_card_pb2
from haulmesh.events.v1 import event_pb2, tender_events_pb2
from haulmesh.tender.v1 import tender_pb2
from haulmesh.type.v1 import lane_pb2, money_pb2
from services.runtime import Mesh, add_event, connect_async, new_event, transact

from ..conftest import Pki, rich_error, wait_for

LANE = lane_pb2.Lane(origin_region="US-TX-HOU", destination_region="US-GA-ATL")
DRY_VAN = 1


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_minor=minor)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def new_carrier() -> tuple[str, tuple[tuple[str, str], ...]]:
    carrier_id = f"acme-{uuid.uuid4().hex[:8]}"
    return carrier_id, (("haulmesh-carrier", f"carriers/{carrier_id}"),)


class Billing:
    """Stubs to the billing service as each caller the policy knows."""

    def __init__(self, mesh: Mesh, pki: Pki) -> None:
        self._channels = {who: grpc.aio.secure_channel(mesh.address("billing"), pki.credentials(*who))
                          for who in [("service", "tender"), ("service", "mission"), ("service", "gateway"),
                                      ("operator", "ops")]}

    def as_(self, kind: str, name: str) -> billing_service_pb2_grpc.BillingServiceStub:
        return billing_service_pb2_grpc.BillingServiceStub(self._channels[(kind, name)])

    @property
    def tender(self):
        return self.as_("service", "tender")

    @property
    def mission(self):
        return self.as_("service", "mission")

    @property
    def gateway(self):
        return self.as_("service", "gateway")

    @property
    def ops(self):
        return self.as_("operator", "ops")

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))


@pytest.fixture
async def billing(mesh: Mesh, mesh_pki: Pki):
    client = Billing(mesh, mesh_pki)
    yield client
    await client.close()


def error_of(error: grpc.aio.AioRpcError) -> tuple[str, str, list[str], dict[str, str]]:
    """(code, ErrorInfo reason, BadRequest fields, ErrorInfo metadata)."""
    return tuple(rich_error(error))


async def fails(call) -> tuple[str, str, list[str], dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_of(caught.value)


def quote_request(tender: str = "", miles: float = 789.4, request_id: str = "", hazmat: bool = False):
    return api.CreateQuoteRequest(quote=quote_pb2.Quote(tender=tender, lane=LANE, route_miles=miles,
                                                        equipment=DRY_VAN, hazmat=hazmat),
                                  request_id=request_id)


def usage(dwell_minutes: list[int], miles: float = 790.2) -> invoice_pb2.Usage:
    start = datetime(2026, 1, 18, 8, tzinfo=UTC)
    dwells = []
    for i, minutes in enumerate(dwell_minutes):
        arrive = start + timedelta(hours=10 * i)
        dwells.append(invoice_pb2.StopDwell(stop_index=i, arrive_time=ts(arrive),
                                            depart_time=ts(arrive + timedelta(minutes=minutes, seconds=30)),
                                            dwell_minutes=minutes))
    return invoice_pb2.Usage(lane=LANE, miles=miles, hours=13.5, stop_dwells=dwells)


def codes(lines) -> dict[str, int]:
    return {line.code: line.amount.amount_minor for line in lines}


async def events_of(mesh: Mesh, carrier_id: str) -> list[event_pb2.Event]:
    client = connect_async(mesh.store.url)
    try:
        entries = await client.xrange(f"events:{{{carrier_id}}}")
    finally:
        await client.aclose()
    return [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]


async def test_quote_usage_invoice_reconcile(mesh: Mesh, billing: Billing) -> None:
    carrier_id, md = new_carrier()
    # A fresh carrier is priced with the built-in default card: USD 2.85/mi, fuel 28.50 %, detention
    # USD 75/h after 120 min in 15-min increments.
    quote = await billing.tender.CreateQuote(quote_request("tenders/t-1"), metadata=md, timeout=5)
    assert quote.name.startswith("quotes/") and quote.carrier == f"carriers/{carrier_id}"
    assert quote.rate_card == "rateCards/default"
    assert codes(quote.lines) == {"LINEHAUL": 224_979, "FUEL": 64_119}
    assert quote.total == usd(289_098)
    assert quote.expire_time.ToDatetime() - quote.create_time.ToDatetime() == timedelta(hours=24)
    assert await billing.gateway.GetQuote(api.GetQuoteRequest(name=quote.name), metadata=md, timeout=5) == quote
    card = await billing.gateway.GetRateCard(api.GetRateCardRequest(name="rateCards/default"), metadata=md,
                                             timeout=5)
    assert card.default_rate_per_mile == usd(285)

    record = api.RecordUsageRequest(mission="missions/m-1", tender="tenders/t-1", quote=quote.name,
                                    tms_load_id="TND-20260118-001", usage=usage([45, 200]))
    invoice = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    assert invoice.state == invoice_pb2.Invoice.STATE_ISSUED
    # Stop 2 dwelt 200 min: 80 over the free time, billed as 90 min = USD 112.50.
    assert codes(invoice.lines) == {"LINEHAUL": 224_979, "FUEL": 64_119, "DETENTION-STOP-2": 11_250}
    assert invoice.total == usd(300_348)
    assert invoice.invoice_number == f"HM-{datetime.now(UTC).year}-000001"
    assert (invoice.mission, invoice.tender, invoice.quote, invoice.tms_load_id) == (
        "missions/m-1", "tenders/t-1", quote.name, "TND-20260118-001")
    assert invoice.etag

    # Recording the same usage again returns the same invoice; other usage for the mission is refused.
    again = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    assert again == invoice
    other = api.RecordUsageRequest()
    other.CopyFrom(record)
    other.usage.miles = 800
    code, reason, _, metadata = await fails(billing.mission.RecordUsage(other, metadata=md, timeout=5))
    assert (code, reason, metadata) == ("ALREADY_EXISTS", "INVOICE_ALREADY_EXISTS", {"invoice": invoice.name})

    got = await billing.gateway.GetInvoice(api.GetInvoiceRequest(name=invoice.name), metadata=md, timeout=5)
    assert got == invoice

    # The TMS disagrees on line-haul and has no detention line: DISPUTED with the differences.
    disputed = await billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=usd(288_000), tms_reference="V-1", etag=invoice.etag,
        tms_lines=[invoice_pb2.TmsChargeLine(code="LINEHAUL", amount=usd(223_881)),
                   invoice_pb2.TmsChargeLine(code="FUEL", amount=usd(64_119))]), metadata=md, timeout=5)
    assert disputed.state == invoice_pb2.Invoice.STATE_DISPUTED
    rec = disputed.reconciliation
    assert rec.result == invoice_pb2.Reconciliation.RESULT_DISPUTED
    assert rec.total_difference == usd(-12_348) and rec.tms_reference == "V-1"
    assert [(d.code, invoice_pb2.LineDifference.Kind.Name(d.kind), d.difference.amount_minor)
            for d in rec.line_differences] == [("LINEHAUL", "KIND_AMOUNT_DIFFERS", -1_098),
                                               ("DETENTION-STOP-2", "KIND_MISSING_IN_TMS", -11_250)]
    assert not rec.line_differences[1].HasField("tms_amount")
    assert disputed.etag != invoice.etag

    # The stale etag is refused; the same figures again change nothing.
    code, reason, _, _ = await fails(billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=usd(300_348), etag=invoice.etag), metadata=md, timeout=5))
    assert (code, reason) == ("ABORTED", "ETAG_MISMATCH")
    same = await billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=usd(288_000), tms_reference="V-1",
        tms_lines=[invoice_pb2.TmsChargeLine(code="LINEHAUL", amount=usd(223_881)),
                   invoice_pb2.TmsChargeLine(code="FUEL", amount=usd(64_119))]), metadata=md, timeout=5)
    assert same == disputed

    # Agreeing figures: MATCHED.
    matched = await billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=usd(300_348), etag=disputed.etag,
        tms_lines=[invoice_pb2.TmsChargeLine(code=line.code, amount=line.amount) for line in invoice.lines]),
        metadata=md, timeout=5)
    assert matched.state == invoice_pb2.Invoice.STATE_MATCHED
    assert matched.reconciliation.result == invoice_pb2.Reconciliation.RESULT_MATCHED
    assert list(matched.reconciliation.line_differences) == []

    # Each state change committed with its event, in order.
    events = await events_of(mesh, carrier_id)
    assert [(e.type, e.subject) for e in events] == [
        ("haulmesh.billing.v1.invoice_issued", invoice.name),
        ("haulmesh.billing.v1.invoice_reconciled", invoice.name),
        ("haulmesh.billing.v1.invoice_reconciled", invoice.name)]
    assert events[0].billing_invoice_issued.invoice == invoice
    assert events[2].billing_invoice_reconciled.invoice == matched
    assert all(e.carrier == f"carriers/{carrier_id}" and e.source == "//haulmesh.io/billing" for e in events)


async def test_measured_usage_bills_the_measured_miles_and_reports_the_estimate(billing: Billing) -> None:
    """Usage with provenance (measured from telemetry): the line-haul bills the measured miles at the quote's
    rate and cites its frames; fuel follows; the quote stays the estimate, reported per line."""
    _, md = new_carrier()
    quote = await billing.tender.CreateQuote(quote_request("tenders/t-m"), metadata=md, timeout=5)  # 789.4 mi
    measured = usage([45, 200], miles=778.4)
    measured.stop_dwells[1].basis = invoice_pb2.StopDwell.BASIS_GEOFENCE_ENTRY_TO_DELIVERY
    measured.provenance.CopyFrom(invoice_pb2.UsageProvenance(
        mission="missions/m-m", vehicle="vehicles/AU-TRK-1001", first_sequence=12, last_sequence=3141,
        frame_count=3129, source=invoice_pb2.UsageProvenance.SOURCE_POSITIONS, telemetry_log_sha256="ab" * 32,
        gaps=[invoice_pb2.TelemetryGap(after_sequence=400, before_sequence=401, seconds=6000, bridged_miles=41.2)]))
    record = api.RecordUsageRequest(mission="missions/m-m", tender="tenders/t-m", quote=quote.name,
                                    tms_load_id="TND-M", usage=measured)
    invoice = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    # 778.4 mi x USD 2.85 = 2218.44; fuel 28.50 % = 632.2554 -> 632.26; detention as before.
    assert codes(invoice.lines) == {"LINEHAUL": 221_844, "FUEL": 63_226, "DETENTION-STOP-2": 11_250}
    assert invoice.total == usd(221_844 + 63_226 + 11_250)
    linehaul = invoice.lines[0]
    assert linehaul.quantity == 778.4 and linehaul.unit_price == usd(285)
    assert linehaul.description == ("Line-haul 778.4 mi measured (frames #12..#3141, 1 gap bridged 41.2 mi) "
                                    "@ USD 2.85/mi")
    assert "(geofence entry to delivery)" in invoice.lines[2].description
    assert invoice.usage.provenance.telemetry_log_sha256 == "ab" * 32
    estimates = {d.code: (d.estimated_quantity, d.measured_quantity, d.estimated_amount.amount_minor,
                          d.measured_amount.amount_minor, d.difference.amount_minor)
                 for d in invoice.estimate_differences}
    assert estimates == {"LINEHAUL": (789.4, 778.4, 224_979, 221_844, -3_135),
                         "FUEL": (0.0, 0.0, 64_119, 63_226, -893),
                         "DETENTION-STOP-2": (0.0, 1.5, 0, 11_250, 11_250)}
    # Reconciliation's outcome still compares the TMS with the invoice, and reports estimate vs measured.
    matched = await billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=invoice.total, etag=invoice.etag), metadata=md, timeout=5)
    assert matched.state == invoice_pb2.Invoice.STATE_MATCHED
    assert list(matched.reconciliation.estimate_differences) == list(invoice.estimate_differences)
    # A malformed provenance is named field by field.
    bad = api.RecordUsageRequest()
    bad.CopyFrom(record)
    bad.mission = "missions/m-bad"
    bad.usage.provenance.telemetry_log_sha256 = "nope"
    bad.usage.provenance.source = invoice_pb2.UsageProvenance.SOURCE_UNSPECIFIED
    _, reason, fields, _ = await fails(billing.mission.RecordUsage(bad, metadata=md, timeout=5))
    assert reason == "INVALID_ARGUMENT"
    assert set(fields) == {"usage.provenance.telemetry_log_sha256", "usage.provenance.source"}


async def test_operator_rate_card_prices_later_quotes_only(billing: Billing) -> None:
    _, md = new_carrier()
    now = datetime.now(UTC)
    card = rate_card_pb2.RateCard(
        display_name="2026 contract", currency_code="USD", default_rate_per_mile=usd(300),
        lane_rates=[rate_card_pb2.LaneRate(lane=LANE, rate_per_mile=usd(250), equipment=[DRY_VAN])],
        fuel_surcharge_bps=1000, minimum_charge=usd(50_000), hazmat_surcharge=usd(20_000),
        detention=rate_card_pb2.DetentionTerms(free_time_minutes=60, rate_per_hour=usd(6_000)),
        effective_time=ts(now - timedelta(hours=1)))
    created = await billing.ops.CreateRateCard(api.CreateRateCardRequest(rate_card=card, request_id="rc-1"),
                                               metadata=md, timeout=5)
    assert created.name.startswith("rateCards/") and created.etag
    again = await billing.ops.CreateRateCard(api.CreateRateCardRequest(rate_card=card, request_id="rc-1"),
                                             metadata=md, timeout=5)
    assert again == created

    quote = await billing.tender.CreateQuote(quote_request(miles=100, hazmat=True), metadata=md, timeout=5)
    assert quote.rate_card == created.name
    # 100 mi x 2.50 = 250.00; fuel 25.00; minimum tops up to 500.00; hazmat 200.00.
    assert codes(quote.lines) == {"LINEHAUL": 25_000, "FUEL": 2_500, "MINIMUM": 22_500, "HAZMAT": 20_000}

    # Raising the lane rate reprices later quotes, not the quote already made.
    changed = rate_card_pb2.RateCard(name=created.name, etag=created.etag,
                                     lane_rates=[rate_card_pb2.LaneRate(lane=LANE, rate_per_mile=usd(600))])
    updated = await billing.ops.UpdateRateCard(api.UpdateRateCardRequest(
        rate_card=changed, update_mask=field_mask_pb2.FieldMask(paths=["lane_rates"])), metadata=md, timeout=5)
    assert updated.etag != created.etag and updated.display_name == "2026 contract"
    code, reason, _, _ = await fails(billing.ops.UpdateRateCard(api.UpdateRateCardRequest(
        rate_card=changed, update_mask=field_mask_pb2.FieldMask(paths=["lane_rates"])), metadata=md, timeout=5))
    assert (code, reason) == ("ABORTED", "ETAG_MISMATCH")
    code, reason, fields, _ = await fails(billing.ops.UpdateRateCard(api.UpdateRateCardRequest(
        rate_card=rate_card_pb2.RateCard(name=created.name, currency_code="EUR"),
        update_mask=field_mask_pb2.FieldMask(paths=["currency_code"])), metadata=md, timeout=5))
    assert (code, reason, fields) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT", ["update_mask"])
    later = await billing.tender.CreateQuote(quote_request(miles=100), metadata=md, timeout=5)
    assert codes(later.lines)["LINEHAUL"] == 60_000
    kept = await billing.gateway.GetQuote(api.GetQuoteRequest(name=quote.name), metadata=md, timeout=5)
    assert kept == quote

    # An amount in another currency than the card's is CURRENCY_MISMATCH, naming the field.
    bad = rate_card_pb2.RateCard()
    bad.CopyFrom(card)
    bad.hazmat_surcharge.currency_code = "EUR"
    code, reason, fields, _ = await fails(billing.ops.CreateRateCard(api.CreateRateCardRequest(rate_card=bad),
                                                                     metadata=md, timeout=5))
    assert (code, reason, fields) == ("INVALID_ARGUMENT", "CURRENCY_MISMATCH",
                                      ["rate_card.hazmat_surcharge.currency_code"])

    listed = await billing.gateway.ListRateCards(api.ListRateCardsRequest(), metadata=md, timeout=5)
    assert [c.name for c in listed.rate_cards] == [created.name]  # the default is never made: a card exists
    future = await billing.ops.ListRateCards(api.ListRateCardsRequest(
        filter=f'effective_time > "{(now + timedelta(days=1)).isoformat()}"'), metadata=md, timeout=5)
    assert list(future.rate_cards) == []


async def test_no_rate_card_in_effect_is_failed_precondition(billing: Billing) -> None:
    _, md = new_carrier()
    future = rate_card_pb2.RateCard(currency_code="USD", default_rate_per_mile=usd(300),
                                    effective_time=ts(datetime.now(UTC) + timedelta(days=30)))
    await billing.ops.CreateRateCard(api.CreateRateCardRequest(rate_card=future), metadata=md, timeout=5)
    code, reason, _, _ = await fails(billing.tender.CreateQuote(quote_request(), metadata=md, timeout=5))
    assert (code, reason) == ("FAILED_PRECONDITION", "NO_RATE_CARD")


async def test_quote_request_id_is_idempotent_even_when_concurrent(billing: Billing) -> None:
    _, md = new_carrier()
    request = quote_request("tenders/t-9", request_id="offer-t-9")
    quotes = await asyncio.gather(*(billing.tender.CreateQuote(request, metadata=md, timeout=10)
                                    for _ in range(20)))
    assert len({q.SerializeToString() for q in quotes}) == 1
    code, reason, fields, _ = await fails(billing.tender.CreateQuote(
        quote_request("tenders/t-9", miles=12.5, request_id="offer-t-9"), metadata=md, timeout=5))
    assert (code, reason, fields) == ("INVALID_ARGUMENT", "REQUEST_ID_REUSED", ["request_id"])


async def test_concurrent_first_quotes_and_usage_records(mesh: Mesh, billing: Billing) -> None:
    """A fresh carrier's first quotes race to make its default card; a mission's usage races to invoice."""
    carrier_id, md = new_carrier()
    quotes = await asyncio.gather(*(billing.tender.CreateQuote(quote_request("tenders/t-1"), metadata=md,
                                                               timeout=10) for _ in range(10)))
    assert {q.rate_card for q in quotes} == {"rateCards/default"} and len({q.name for q in quotes}) == 10
    record = api.RecordUsageRequest(mission="missions/m-1", tender="tenders/t-1", quote=quotes[0].name,
                                    tms_load_id="L-1", usage=usage([130]))
    replies = await asyncio.gather(*(billing.mission.RecordUsage(record, metadata=md, timeout=10)
                                     for _ in range(10)))
    assert len({r.invoice.SerializeToString() for r in replies}) == 1
    listed = await billing.gateway.ListInvoices(api.ListInvoicesRequest(), metadata=md, timeout=5)
    assert [i.name for i in listed.invoices] == [replies[0].invoice.name]
    assert [e.type for e in await events_of(mesh, carrier_id)] == ["haulmesh.billing.v1.invoice_issued"]


async def test_bad_input_names_the_fields(billing: Billing) -> None:
    _, md = new_carrier()
    bad = api.CreateQuoteRequest(quote=quote_pb2.Quote(lane=lane_pb2.Lane(origin_region="houston"),
                                                       route_miles=-3))
    code, reason, fields, _ = await fails(billing.tender.CreateQuote(bad, metadata=md, timeout=5))
    assert (code, reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert fields == ["quote.lane.origin_region", "quote.lane.destination_region", "quote.route_miles",
                      "quote.equipment"]
    quote = await billing.tender.CreateQuote(quote_request("tenders/t-2"), metadata=md, timeout=5)
    record = api.RecordUsageRequest(mission="missions/m-2", tender="tenders/t-2", quote=quote.name,
                                    tms_load_id="L-2", usage=usage([30]))
    record.usage.stop_dwells[0].dwell_minutes = 31  # disagrees with its geofence times
    code, reason, fields, _ = await fails(billing.mission.RecordUsage(record, metadata=md, timeout=5))
    assert (code, fields) == ("INVALID_ARGUMENT", ["usage.stop_dwells[0].dwell_minutes"])
    record.usage.stop_dwells[0].dwell_minutes = 30
    record.tender = "tenders/another"
    code, reason, fields, _ = await fails(billing.mission.RecordUsage(record, metadata=md, timeout=5))
    assert (code, fields) == ("INVALID_ARGUMENT", ["quote"])
    record.tender = "tenders/t-2"
    invoice = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    code, reason, fields, _ = await fails(billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(
        name=invoice.name, tms_total=money_pb2.Money(currency_code="CAD", amount_minor=1)), metadata=md, timeout=5))
    assert (code, reason, fields) == ("INVALID_ARGUMENT", "CURRENCY_MISMATCH", ["tms_total.currency_code"])


async def test_list_invoices_newest_first_paged_and_filtered(billing: Billing) -> None:
    _, md = new_carrier()
    names = []
    for i in range(3):
        quote = await billing.tender.CreateQuote(quote_request(f"tenders/t-{i}"), metadata=md, timeout=5)
        reply = await billing.mission.RecordUsage(api.RecordUsageRequest(
            mission=f"missions/m-{i}", tender=f"tenders/t-{i}", quote=quote.name, tms_load_id=f"L-{i}",
            usage=usage([10])), metadata=md, timeout=5)
        names.append(reply.invoice.name)
        await asyncio.sleep(0.005)  # distinct issue times
    first = await billing.gateway.ListInvoices(api.ListInvoicesRequest(page_size=2), metadata=md, timeout=5)
    assert [i.name for i in first.invoices] == names[:0:-1] and first.next_page_token
    second = await billing.gateway.ListInvoices(api.ListInvoicesRequest(page_size=2,
                                                                        page_token=first.next_page_token),
                                                metadata=md, timeout=5)
    assert [i.name for i in second.invoices] == names[:1] and second.next_page_token == ""
    await billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(name=names[1], tms_total=usd(1)),
                                           metadata=md, timeout=5)
    disputed = await billing.gateway.ListInvoices(api.ListInvoicesRequest(filter="state = DISPUTED"),
                                                  metadata=md, timeout=5)
    assert [i.name for i in disputed.invoices] == [names[1]]
    by_load = await billing.gateway.ListInvoices(api.ListInvoicesRequest(filter='tms_load_id = "L-2"'),
                                                 metadata=md, timeout=5)
    assert [i.name for i in by_load.invoices] == [names[2]]
    code, reason, _, _ = await fails(billing.gateway.ListInvoices(api.ListInvoicesRequest(
        filter="state = LOST"), metadata=md, timeout=5))
    assert (code, reason) == ("INVALID_ARGUMENT", "INVALID_FILTER")
    code, reason, _, _ = await fails(billing.gateway.ListInvoices(api.ListInvoicesRequest(
        filter="state = DISPUTED", page_token=first.next_page_token), metadata=md, timeout=5))
    assert (code, reason) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")


async def test_another_carrier_sees_nothing(billing: Billing) -> None:
    _, md = new_carrier()
    _, other = new_carrier()
    quote = await billing.tender.CreateQuote(quote_request("tenders/t-1"), metadata=md, timeout=5)
    record = api.RecordUsageRequest(mission="missions/m-1", tender="tenders/t-1", quote=quote.name,
                                    tms_load_id="L-1", usage=usage([]))
    invoice = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    card_name = quote.rate_card
    await billing.gateway.GetRateCard(api.GetRateCardRequest(name=card_name), metadata=md, timeout=5)
    for call, reason in [
        (billing.gateway.GetQuote(api.GetQuoteRequest(name=quote.name), metadata=other, timeout=5),
         "QUOTE_NOT_FOUND"),
        (billing.gateway.GetInvoice(api.GetInvoiceRequest(name=invoice.name), metadata=other, timeout=5),
         "INVOICE_NOT_FOUND"),
        (billing.gateway.ReconcileInvoice(api.ReconcileInvoiceRequest(name=invoice.name, tms_total=usd(1)),
                                          metadata=other, timeout=5), "INVOICE_NOT_FOUND"),
        (billing.mission.RecordUsage(record, metadata=other, timeout=5), "QUOTE_NOT_FOUND"),
        (billing.ops.UpdateRateCard(api.UpdateRateCardRequest(rate_card=rate_card_pb2.RateCard(
            name=card_name, display_name="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"])), metadata=other, timeout=5),
         "RATE_CARD_NOT_FOUND"),
    ]:
        code, got, _, _ = await fails(call)
        assert (code, got) == ("NOT_FOUND", reason)
    listed = await billing.gateway.ListInvoices(api.ListInvoicesRequest(), metadata=other, timeout=5)
    assert list(listed.invoices) == []
    code, got, _, _ = await fails(billing.gateway.GetRateCard(api.GetRateCardRequest(name=card_name),
                                                              metadata=other, timeout=5))
    assert (code, got) == ("NOT_FOUND", "RATE_CARD_NOT_FOUND")


@pytest.mark.parametrize("caller,method,request_", [
    (("service", "gateway"), "CreateQuote", quote_request()),
    (("service", "tender"), "RecordUsage", api.RecordUsageRequest()),
    (("service", "tender"), "ReconcileInvoice", api.ReconcileInvoiceRequest()),
    (("service", "gateway"), "CreateRateCard", api.CreateRateCardRequest()),
    (("vehicle", "AU-TRK-1001"), "GetInvoice", api.GetInvoiceRequest(name="invoices/x")),
])
async def test_policy_denies_other_callers(mesh: Mesh, mesh_pki: Pki, caller, method, request_) -> None:
    _, md = new_carrier()
    async with grpc.aio.secure_channel(mesh.address("billing"), mesh_pki.credentials(*caller)) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub, method)(request_, metadata=md, timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def publish_acceptance(mesh: Mesh, carrier_id: str, quote_name: str, accepted: datetime) -> None:
    """What the tender service commits when the TMS accepts an offer: a `tender.v1.accepted` event."""
    tender = tender_pb2.Tender(name="tenders/t-late", accept_time=ts(accepted),
                               offer=tender_pb2.Offer(quote=quote_name))
    event = new_event("tender_accepted", tender_events_pb2.TenderAccepted(tender=tender), subject=tender.name,
                      carrier_id=carrier_id, source="tender")
    client = connect_async(mesh.store.url)
    try:
        async def write(pipe) -> None:
            pipe.multi()
            add_event(pipe, event)

        await transact(client, carrier_id, [], write)
        key = f"quote-accepted:{{{carrier_id}}}:{quote_name.removeprefix('quotes/')}"
        await wait_for(lambda: client.exists(key), timeout_seconds=10)
    finally:
        await client.aclose()


async def test_quote_accepted_after_expiry_is_not_invoiced(mesh: Mesh, billing: Billing) -> None:
    carrier_id, md = new_carrier()
    late = await billing.tender.CreateQuote(quote_request("tenders/t-late"), metadata=md, timeout=5)
    await publish_acceptance(mesh, carrier_id, late.name, late.expire_time.ToDatetime(tzinfo=UTC)
                             + timedelta(seconds=1))
    record = api.RecordUsageRequest(mission="missions/m-late", tender="tenders/t-late", quote=late.name,
                                    tms_load_id="L-late", usage=usage([]))
    code, reason, _, metadata = await fails(billing.mission.RecordUsage(record, metadata=md, timeout=5))
    assert (code, reason, metadata) == ("FAILED_PRECONDITION", "QUOTE_EXPIRED", {"quote": late.name})

    in_time = await billing.tender.CreateQuote(quote_request("tenders/t-late"), metadata=md, timeout=5)
    await publish_acceptance(mesh, carrier_id, in_time.name, in_time.create_time.ToDatetime(tzinfo=UTC)
                             + timedelta(minutes=5))
    record.quote = in_time.name
    invoice = (await billing.mission.RecordUsage(record, metadata=md, timeout=5)).invoice
    assert invoice.state == invoice_pb2.Invoice.STATE_ISSUED
