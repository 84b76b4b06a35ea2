"""A billing Invoice and its 204 → FreightInvoice → 210: each charge kind, the echoed references and parties,
refusals naming the line, and the totals invariant over generated invoices."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.type.v1 import charge_line_pb2 as cl
from haulmesh.type.v1 import money_pb2
from services.edi.domain import (
    SCHEMA_210,
    Delimiters,
    InvoiceError,
    LoadTender,
    ShipmentReference,
    check_charge_codes,
    freight_invoice,
    from_implied,
    invoice_210,
    read,
    read_load_tender,
    validate,
)

from .builders import sample


def tender() -> LoadTender:
    [reading] = read(sample("204_original.edi"))
    result = read_load_tender(reading.groups[0].sets[0].transaction)
    assert isinstance(result, LoadTender)
    return result


TENDER = tender()


def usd(minor: int, currency: str = "USD") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=minor)


def line(kind: int, code: str, minor: int, description: str = "", quantity: float = 0.0, unit: int = 0,
         unit_price: int | None = None, rate_bps: int = 0, currency: str = "USD") -> cl.ChargeLine:
    out = cl.ChargeLine(type=kind, code=code, description=description, quantity=quantity, unit=unit,
                        amount=usd(minor, currency), rate_bps=rate_bps)
    if unit_price is not None:
        out.unit_price.CopyFrom(usd(unit_price, currency))
    return out


LINEHAUL = line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 224979,
                "Line-haul 789.4 mi measured (frames #12..#3141, 1 gap bridged 41.2 mi) @ USD 2.85/mi", 789.4,
                cl.CHARGE_UNIT_MILE, 285)
FUEL = line(cl.CHARGE_TYPE_FUEL_SURCHARGE, "FUEL", 64119, "Fuel surcharge 28.50 % of line-haul", rate_bps=2850)
DETENTION = line(cl.CHARGE_TYPE_DETENTION, "DETENTION-STOP-2", 11250,
                 "Detention stop 2: 185 min dwell, 120 min free, 90 min billed @ USD 75.00/h", 1.5,
                 cl.CHARGE_UNIT_HOUR, 7500)
HAZMAT = line(cl.CHARGE_TYPE_HAZMAT_SURCHARGE, "HAZMAT", 15000, "Hazmat surcharge", 1, cl.CHARGE_UNIT_LOAD, 15000)
MINIMUM = line(cl.CHARGE_TYPE_MINIMUM_CHARGE, "MINIMUM", 5000, "Minimum charge top-up")
CREDIT = line(cl.CHARGE_TYPE_ADJUSTMENT, "CREDIT-1", -2500, "Goodwill credit")


def invoice(*lines: cl.ChargeLine, total: int | None = None, currency: str = "USD") -> invoice_pb2.Invoice:
    out = invoice_pb2.Invoice(name="invoices/01J9Z5INV", invoice_number="HM-2026-000123", lines=lines,
                              total=usd(sum(x.amount.amount_minor for x in lines) if total is None else total,
                                        currency))
    out.issue_time.FromDatetime(datetime(2026, 3, 18, 3, 30, tzinfo=UTC))
    dwell = out.usage.stop_dwells.add(stop_index=1, dwell_minutes=185,
                                      basis=invoice_pb2.StopDwell.BASIS_GEOFENCE_ENTRY_TO_DELIVERY)
    dwell.arrive_time.FromDatetime(datetime(2026, 3, 17, 11, 0, tzinfo=UTC))
    dwell.depart_time.FromDatetime(datetime(2026, 3, 17, 14, 5, tzinfo=UTC))
    return out


def segments(inv: invoice_pb2.Invoice, **options) -> list[str]:
    freight = freight_invoice(inv, TENDER, scac="HMSH", **options)
    return [str(s) for s in invoice_210(freight, control="0001").segments]


def test_each_charge_kind_becomes_an_l1_with_its_usage_and_code() -> None:
    written = segments(invoice(LINEHAUL, FUEL, DETENTION, HAZMAT, MINIMUM, CREDIT))
    assert written[:2] == ["B3**HM-2026-000123*PF-DAL-HOU-0315*PP*L*20260318*317848**20260317*035*HMSH", "C3*USD"]
    l0 = [s for s in written if s.startswith("L0")]
    l1 = [s for s in written if s.startswith("L1")]
    assert l0 == ["L0*1*789.4*DM*42000*G******L", "L0*3*1.5*TH", "L0*4*1*NL"]
    assert l1 == ["L1*1*2.85*PM*224979****400",  # miles at the per-mile rate, freight
                  "L1*2*28.5*CT*64119****405",  # a percentage of the line haul, fuel surcharge
                  "L1*3*75*PR*11250****DET",  # hours at the hourly rate, detention
                  "L1*4*150*PL*15000****HAZ",  # per load, hazardous cargo
                  "L1*5*50*FR*5000****MIN",  # flat, minimum charge
                  "L1*6*-25*FR*-2500********Goodwill credit"]  # no code: described in L1-12
    assert written[-1] == "L3*42000*G***317848*******L"
    # the line haul's description keeps its provenance, cut at a word boundary to L5-02's 50 characters
    assert "L5*1*Line-haul 789.4 mi measured (frames #12..#3141, 1" in written


def test_the_204_is_echoed_references_parties_and_payment() -> None:
    written = segments(invoice(LINEHAUL))
    assert [s for s in written if s.startswith("N9")] == ["N9*BM*BOL-778812", "N9*PO*PO-55120"]
    assert [s for s in written if s.startswith("N1")] == [
        "N1*BT*Prairie Freight Payables*93*PF-BILLTO", "N1*SH*Prairie Dallas Cross-Dock*93*PF-DAL-01",
        "N1*CN*Prairie Houston DC*93*PF-HOU-02"]
    assert "N4*Houston*TX*77002*US" in written
    only_bol = segments(invoice(LINEHAUL), echo={"BM"})
    assert [s for s in only_bol if s.startswith("N9")] == ["N9*BM*BOL-778812"]
    freight = freight_invoice(invoice(LINEHAUL), TENDER, scac="HMSH")
    assert freight.references == (ShipmentReference("BM", "BOL-778812"), ShipmentReference("PO", "PO-55120"))


def test_what_an_n1_loop_cannot_carry_is_left_out_of_the_echo() -> None:
    bill_to = TENDER.party("BT")
    assert bill_to is not None
    odd = dataclasses.replace(bill_to, state="Texas", postal_code="75", country="USA1", id_qualifier="ABC",
                              address=("1200 Commerce St", "", "Floor 2", "Dock 4", "Door 9", "Gate 1"))
    tender = dataclasses.replace(TENDER, parties=(odd,))
    written = [str(s) for s in invoice_210(freight_invoice(invoice(LINEHAUL), tender, scac="HMSH"),
                                           control="0001").segments]
    assert written[4:7] == ["N1*BT*Prairie Freight Payables", "N3*1200 Commerce St*Floor 2", "N3*Dock 4*Door 9"]
    assert written[7] == "N4*Dallas"


def test_dates_are_read_in_the_partners_zone() -> None:
    freight = freight_invoice(invoice(LINEHAUL), TENDER, scac="HMSH", zone="America/Chicago")
    # issued 03:30 UTC on the 18th is the evening of the 17th in Chicago; delivered 14:05 UTC is the 17th
    assert (freight.billing_date, freight.delivery_date) == (date(2026, 3, 17), date(2026, 3, 17))
    assert freight_invoice(invoice(LINEHAUL), TENDER, scac="HMSH", delivery_date=date(2026, 3, 19)).delivery_date \
        == date(2026, 3, 19)
    with pytest.raises(InvoiceError, match="zone"):
        freight_invoice(invoice(LINEHAUL), TENDER, scac="HMSH", zone="Mars/Olympus")


def test_a_partner_charge_code_map_is_laid_over_the_defaults() -> None:
    freight = freight_invoice(invoice(LINEHAUL, DETENTION, CREDIT), TENDER, scac="HMSH")
    codes = {"DETENTION-STOP-2": "DTL", "ADJUSTMENT": "ADJ"}
    assert check_charge_codes(codes) == []
    l1 = [str(s) for s in invoice_210(freight, control="0001", charge_codes=codes).segments if s.id == "L1"]
    assert [s.split("*")[8] for s in l1] == ["400", "DTL", "ADJ"]
    assert check_charge_codes({"FUEL": "FUELS", "": "405"}) == [
        "'FUEL': 'FUELS' is not a charge code (L1-08: three upper-case letters or digits)",
        "'': a line code or charge kind of printable characters"]


@pytest.mark.parametrize(("lines", "total", "currency", "message"), [
    ((line(0, "MYSTERY", 100),), None, "USD", "line 1 MYSTERY: the charge type is not set"),
    ((LINEHAUL, line(cl.CHARGE_TYPE_FUEL_SURCHARGE, "FUEL", 100, currency="CAD")), None, "USD",
     "line 2 FUEL amount: currency 'CAD' is not the invoice's USD"),
    ((line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 12345, quantity=float("nan"), unit=cl.CHARGE_UNIT_MILE),), None,
     "USD", "line 1 LINEHAUL: the usage nan mile"),
    ((line(cl.CHARGE_TYPE_DETENTION, "DETENTION-STOP-1", 1000, quantity=-1.0, unit=cl.CHARGE_UNIT_HOUR),), None,
     "USD", "line 1 DETENTION-STOP-1: the usage -1.0 hour"),
    ((line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 12345, currency="KWD"),), None, "KWD",
     "line 1 LINEHAUL amount: 12.345 KWD has fractions of a cent"),
    ((line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 10 ** 12),), None, "USD", "too large for an N2 element"),
    ((line(cl.CHARGE_TYPE_LINEHAUL, "", 100),), None, "USD", r"line 1 \(no code\): a line needs its printable code"),
    ((LINEHAUL, FUEL), 1, "USD", "the total 0.01 is not the sum of its lines 2890.98"),
    ((), None, "USD", "1 to 999 charge lines, not 0"),
])
def test_what_cannot_be_expressed_is_refused_naming_the_line(lines, total, currency, message) -> None:
    with pytest.raises(InvoiceError, match=message):
        freight_invoice(invoice(*lines, total=total, currency=currency), TENDER, scac="HMSH")


def test_other_currencies_become_decimal_by_their_minor_unit() -> None:
    yen = freight_invoice(invoice(line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 123456, currency="JPY"),
                                  currency="JPY"), TENDER, scac="HMSH")
    assert yen.charges[0].amount == Decimal("123456") and yen.currency == "JPY"
    dinar = freight_invoice(invoice(line(cl.CHARGE_TYPE_LINEHAUL, "LINEHAUL", 12340, currency="KWD"),
                                    currency="KWD"), TENDER, scac="HMSH")
    assert dinar.charges[0].amount == Decimal("12.340")
    assert [str(s) for s in invoice_210(dinar, control="1").segments][-1] == "L3*42000*G***1234*******L"


def test_no_invoice_number_total_or_issue_time_is_refused() -> None:
    bare = invoice(LINEHAUL)
    bare.ClearField("issue_time")
    with pytest.raises(InvoiceError, match="no issue time"):
        freight_invoice(bare, TENDER, scac="HMSH")
    bare = invoice(LINEHAUL)
    bare.ClearField("total")
    with pytest.raises(InvoiceError, match="no total"):
        freight_invoice(bare, TENDER, scac="HMSH")
    bare = invoice(LINEHAUL)
    bare.invoice_number = ""
    with pytest.raises(InvoiceError, match="no invoice number"):
        freight_invoice(bare, TENDER, scac="HMSH")


_KINDS = st.sampled_from([
    (cl.CHARGE_TYPE_LINEHAUL, cl.CHARGE_UNIT_MILE), (cl.CHARGE_TYPE_FUEL_SURCHARGE, cl.CHARGE_UNIT_UNSPECIFIED),
    (cl.CHARGE_TYPE_DETENTION, cl.CHARGE_UNIT_HOUR), (cl.CHARGE_TYPE_HAZMAT_SURCHARGE, cl.CHARGE_UNIT_LOAD),
    (cl.CHARGE_TYPE_MINIMUM_CHARGE, cl.CHARGE_UNIT_UNSPECIFIED), (cl.CHARGE_TYPE_ACCESSORIAL, cl.CHARGE_UNIT_LOAD),
    (cl.CHARGE_TYPE_ADJUSTMENT, cl.CHARGE_UNIT_UNSPECIFIED)])
_LINES = st.lists(st.tuples(_KINDS, st.integers(-10 ** 7, 10 ** 9), st.floats(0, 99_999, allow_nan=False),
                            st.integers(1, 99_999), st.integers(0, 10_000), st.text(max_size=80)),
                  min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(_LINES)
def test_totals_always_agree(drawn) -> None:
    lines = []
    for n, ((kind, unit), minor, quantity, price, bps, text) in enumerate(drawn, 1):
        lines.append(line(kind, f"L-{n}", minor, text, quantity if unit else 0.0, unit, price if unit else None,
                          bps if not unit else 0))
    freight = freight_invoice(invoice(*lines), TENDER, scac="HMSH")
    written = invoice_210(freight, control="0001")
    assert validate(SCHEMA_210, written.segments, Delimiters()) == ()
    b3 = from_implied(written.segments[0].get(7))
    l3 = from_implied(written.segments[-1].get(5))
    l1 = sum((from_implied(s.get(4)) for s in written.segments if s.id == "L1"), Decimal(0))
    assert b3 == l3 == l1 == Decimal(sum(minor for _, minor, *_ in drawn)).scaleb(-2)
