"""The 210 writer: an invoice by hand, money as implied cents, the totals invariant, validation and round trips."""

from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    SCHEMA_210,
    Delimiters,
    FreightInvoice,
    FunctionalGroup,
    Interchange,
    InvoiceCharge,
    InvoiceError,
    InvoiceParty,
    ShipmentReference,
    from_implied,
    invoice_210,
    read,
    validate,
    write,
)

from .test_status import delimiters

LINEHAUL = InvoiceCharge("LINEHAUL", "LINEHAUL", Decimal("2249.79"), "Line-haul 789.4 mi @ USD 2.85/mi", 789.4,
                         "MILE", Decimal("2.85"))
FUEL = InvoiceCharge("FUEL_SURCHARGE", "FUEL", Decimal("641.19"), "Fuel surcharge 28.50 pct", rate_bps=2850)
DETENTION = InvoiceCharge("DETENTION", "DETENTION-STOP-2", Decimal("112.50"), "Detention stop 2, 1.5 h",
                          Decimal("1.5"), "HOUR", Decimal("75.00"))
BILL_TO = InvoiceParty("BT", "Prairie Freight LLC", "93", "PF-AP", ("1200 Main St", "Suite 400"), "Houston", "TX",
                       "77002", "US")
INVOICE = FreightInvoice("HM-2026-000123", "SHIP-1", "HMSH", date(2026, 3, 18), (LINEHAUL, FUEL, DETENTION),
                         parties=(BILL_TO,), references=(ShipmentReference("BM", "BOL-778"),
                                                         ShipmentReference("PO", "PO-55120")),
                         weight=42000, total=Decimal("3003.48"), delivery_date=date(2026, 3, 16))


def lines(invoice: FreightInvoice, **options) -> list[str]:
    return [str(s) for s in invoice_210(invoice, control="0001", **options).segments]


def test_an_invoice_by_hand() -> None:
    # 789.4 mi x 2.85 = 2,249.79; 28.50 % of it = 641.19; 1.5 h x 75 = 112.50; total 3,003.48
    assert lines(INVOICE) == [
        "B3**HM-2026-000123*SHIP-1*PP*L*20260318*300348**20260316*035*HMSH",
        "C3*USD",
        "N9*BM*BOL-778",
        "N9*PO*PO-55120",
        "N1*BT*Prairie Freight LLC*93*PF-AP",
        "N3*1200 Main St*Suite 400",
        "N4*Houston*TX*77002*US",
        "LX*1", "L5*1*Line-haul 789.4 mi USD 2.85/mi", "L0*1*789.4*DM*42000*G******L", "L1*1*2.85*PM*224979****400",
        "LX*2", "L5*2*Fuel surcharge 28.50 pct", "L1*2*28.5*CT*64119****405",
        "LX*3", "L5*3*Detention stop 2, 1.5 h", "L0*3*1.5*TH", "L1*3*75*PR*11250****DET",
        "L3*42000*G***300348*******L",
    ]
    assert validate(SCHEMA_210, invoice_210(INVOICE, control="0001").segments, Delimiters()) == ()


def test_money_is_implied_cents_from_decimal_only() -> None:
    one = FreightInvoice("INV-1", "S", "HMSH", date(2026, 3, 18),
                         (InvoiceCharge("LINEHAUL", "LINEHAUL", Decimal("1234.50")),))
    written = lines(one)
    assert written[0] == "B3**INV-1*S*PP**20260318*123450****HMSH"
    assert written[-2] == "L1*1*1234.5*FR*123450****400" and written[-1] == "L3*****123450"
    with pytest.raises(InvoiceError):  # a float is never money
        lines(dataclasses.replace(one, charges=(InvoiceCharge("LINEHAUL", "LINEHAUL", 1234.5),)))  # type: ignore
    with pytest.raises(InvoiceError):  # fractions of a cent are not rounded away
        lines(dataclasses.replace(one, charges=(InvoiceCharge("LINEHAUL", "LINEHAUL", Decimal("1234.505")),)))
    credit = dataclasses.replace(one, charges=(*one.charges, InvoiceCharge("ADJUSTMENT", "CREDIT-1",
                                                                            Decimal("-34.50"), "Goodwill credit")))
    assert lines(credit)[-2:] == ["L1*2*-34.5*FR*-3450********Goodwill credit", "L3*****120000"]


def test_totals_that_disagree_are_an_error() -> None:
    with pytest.raises(InvoiceError, match="sum of its lines"):
        lines(dataclasses.replace(INVOICE, total=Decimal("3003.47")))
    with pytest.raises(InvoiceError):
        lines(dataclasses.replace(INVOICE, total=3003.48))  # type: ignore[arg-type]


def test_the_partner_names_the_charge_codes() -> None:
    mapped = lines(INVOICE, charge_codes={"DETENTION-STOP-2": "DTL", "FUEL_SURCHARGE": "FUE"})
    assert "L1*2*28.5*CT*64119****FUE" in mapped and "L1*3*75*PR*11250****DTL" in mapped
    tarp = InvoiceCharge("ACCESSORIAL", "TARP", Decimal("75.00"), "Tarping")
    unmapped = lines(dataclasses.replace(INVOICE, charges=(LINEHAUL, tarp), total=None))
    assert "L1*2*75*FR*7500********Tarping" in unmapped  # no code: L1-12 says what it is
    assert "L1*2*75*FR*7500****TRP" in lines(dataclasses.replace(INVOICE, charges=(LINEHAUL, tarp), total=None),
                                             charge_codes={"ACCESSORIAL": "TRP"})
    with pytest.raises(InvoiceError):
        lines(INVOICE, charge_codes={"LINEHAUL": "LINE"})


def test_what_a_210_cannot_carry_is_refused() -> None:
    for change in [{"payment_method": "XX"}, {"scac": "hmsh"}, {"charges": ()}, {"invoice_number": "X" * 23},
                   {"weight_unit": "T"}, {"parties": (dataclasses.replace(BILL_TO, state="Texas"),)},
                   {"charges": (dataclasses.replace(LINEHAUL, unit_price=2.85),), "total": None}]:
        with pytest.raises(InvoiceError):
            lines(dataclasses.replace(INVOICE, **change))


# --- the totals invariant and round trips ---------------------------------------------------------------------------

_CENTS = st.integers(-500_000, 5_000_000).map(lambda c: Decimal(c).scaleb(-2))
_KINDS = ["LINEHAUL", "FUEL_SURCHARGE", "MINIMUM_CHARGE", "HAZMAT_SURCHARGE", "DETENTION", "ACCESSORIAL",
          "ADJUSTMENT"]


@st.composite
def charges(draw) -> InvoiceCharge:
    kind = draw(st.sampled_from(_KINDS))
    unit = draw(st.sampled_from(["", "MILE", "HOUR", "LOAD"]))
    return InvoiceCharge(
        kind, f"{kind}-{draw(st.integers(1, 9))}", draw(_CENTS),
        draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz0123456789.,-/", max_size=60)),
        draw(st.none() | st.integers(0, 9_999_999).map(lambda q: Decimal(q).scaleb(-1)) | st.floats(0, 99_999)),
        unit,
        draw(st.none() | st.integers(0, 99_999_999).map(lambda r: Decimal(r).scaleb(-4))),
        draw(st.sampled_from([0, 0, 1250, 2850])))


@st.composite
def invoices(draw) -> FreightInvoice:
    items = tuple(draw(st.lists(charges(), min_size=1, max_size=12)))
    words = st.from_regex(r"[A-Z0-9][A-Z0-9-]{0,20}", fullmatch=True)
    return FreightInvoice(
        draw(words), draw(words), draw(st.sampled_from(["HMSH", "AURA", "XY"])),
        draw(st.dates(date(2001, 1, 1), date(2098, 12, 31))), items,
        draw(st.sampled_from(["PP", "CC", "TP"])),
        tuple(draw(st.lists(st.builds(InvoiceParty, st.sampled_from(["BT", "SH", "CN"]),
                                      st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ &.", min_size=1, max_size=70)
                                      .filter(lambda n: n.strip(" &.") != "")), max_size=3))),
        tuple(draw(st.lists(st.builds(ShipmentReference, st.sampled_from(["BM", "PO", "SI"]), words), max_size=3))),
        draw(st.none() | st.integers(1, 80_000)),
        draw(st.sampled_from(["L", "K"])),
        draw(st.sampled_from([None, sum((c.amount for c in items), Decimal(0))])),
        draw(st.none() | st.dates(date(2001, 1, 1), date(2098, 12, 31))),
    )


@settings(max_examples=150, deadline=None)
@given(invoices())
def test_l3_05_is_b3_07_is_the_sum_of_l1_04_to_the_cent(invoice: FreightInvoice) -> None:
    segments = invoice_210(invoice, control="0001").segments
    total = sum((c.amount for c in invoice.charges), Decimal(0))
    l1 = [from_implied(s.get(4)) for s in segments if s.id == "L1"]
    assert [s.id for s in segments].count("LX") == len(invoice.charges) == len(l1)
    assert l1 == [c.amount for c in invoice.charges]
    assert from_implied(segments[0].get(7)) == from_implied(segments[-1].get(5)) == sum(l1, Decimal(0)) == total
    assert all(bool(s.get(2)) == bool(s.get(3)) for s in segments if s.id == "L1")  # rate and qualifier together
    if invoice.total is None:
        with pytest.raises(InvoiceError):
            invoice_210(dataclasses.replace(invoice, total=total + Decimal("0.01")), control="0001")


@settings(max_examples=80, deadline=None)
@given(invoices(), delimiters())
def test_random_invoices_validate_clean_and_round_trip_byte_stable(invoice: FreightInvoice, d: Delimiters) -> None:
    group = FunctionalGroup("IM", "HAULMESH", "PRAIRIEFRT", "20260318", "0716", "52", "004010",
                            (invoice_210(invoice, control="0001"), invoice_210(invoice, control="0002")))
    sent = Interchange("ZZ", "HAULMESH", "ZZ", "PRAIRIEFRT", "260318", "0716", "000000052", groups=(group,),
                       delimiters=d)
    data = write(sent)
    (reading,) = read(data)
    assert reading.problems == () and reading.groups[0].problems == ()
    for set_reading in reading.groups[0].sets:
        assert set_reading.problems == () and set_reading.segment_errors == (), set_reading.segment_errors
    assert reading.interchange == sent
    assert write(reading.interchange) == data
