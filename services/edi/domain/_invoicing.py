"""From a Haulmesh invoice to the 210: a billing ``Invoice`` and the 204 it answers → :class:`FreightInvoice`.

:func:`freight_invoice` is what the service calls on ``haulmesh.billing.v1.invoice_issued``; its result goes to
:func:`invoice_210` with the partner's charge-code map (:func:`check_charge_codes` checks one at start-up). Rules:

* every ``ChargeLine`` is one charge, in the invoice's order: ``type`` without ``CHARGE_TYPE_`` its kind, ``code``
  its line code (the partner map is looked up by code, then by kind, over :data:`CHARGE_CODES`), the usage it was
  priced on (``quantity`` of ``unit``: miles, hours, a load; the writer sends it as L0) and its rate (``unit_price``
  per unit, or ``rate_bps`` of another line);
* money is Decimal from integer minor units (``Money.amount_minor`` scaled by the currency's minor unit, as
  services/runtime/money.py says), never float; ``Invoice.total`` is checked against the lines here and again by
  the writer (L3-05 = B3-07 = sum of L1-04);
* echoed from the 204: B2-04 (B3-03), its header references as N9 (all, or the qualifiers the partner wants, e.g.
  ``BM`` bill of lading and ``PO``), its payment method (B3-04), the bill-to, shipper and consignee (N1 loops: the
  header parties, else the first pickup's and last delivery's places) and the total weight;
* the billing date is the issue time's date and the delivery date the delivery's (the delivery stop's dwell that
  ended at the proof of delivery), both in ``zone`` (X12 dates carry no zone).

Refused with an :class:`InvoiceError` naming the line (``line 3 DETENTION-STOP-2: ...``): a line whose type is
not set, a currency other than the total's, fractions of a cent (an N2 element holds cents), an amount too large
for its element, a usage that is not a finite number of at least 0, an invoice with no lines or more than 999.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.type.v1 import charge_line_pb2, money_pb2
from services.runtime.money import minor_unit_exponent

from ._invoice import FreightInvoice, InvoiceCharge, InvoiceError, InvoiceParty
from ._load_tender import LoadTender, Party, Quantity
from ._status import ShipmentReference, clean_text

__all__ = ["check_charge_codes", "freight_invoice", "invoice_charge"]

#: B3-04 payment methods a 204's B2-06 may carry over; anything else is billed prepaid.
_PAYMENT_METHODS = frozenset({"PP", "CC", "TP"})
#: N2 elements: L1-04 and B3-07 hold at most 12 digits (9,999,999,999.99).
_MAX_CENTS = 10 ** 12
_MAX_LINES = 999
_DESCRIPTION = 50  # L5-02
_CHARGE_CODE = re.compile(r"[A-Z0-9]{3}")


def _money(money: money_pb2.Money, currency: str, what: str) -> Decimal:
    """Integer minor units as Decimal in ``currency`` (refused if another currency, or not whole cents)."""
    if money.currency_code != currency:
        raise InvoiceError(f"{what}: currency {money.currency_code or '(none)'!r} is not the invoice's {currency}")
    amount = Decimal(money.amount_minor).scaleb(-minor_unit_exponent(currency))
    cents = amount.scaleb(2)
    if cents != cents.to_integral_value():
        raise InvoiceError(f"{what}: {amount} {currency} has fractions of a cent, which an N2 element cannot carry")
    if abs(cents) >= _MAX_CENTS:
        raise InvoiceError(f"{what}: {amount} {currency} is too large for an N2 element of 12 digits")
    return amount


def _short(text: str, width: int) -> str:
    """Free text as X12 keeps it, cut at a word boundary to ``width``."""
    cleaned = clean_text(text)
    if len(cleaned) <= width:
        return cleaned
    head = cleaned[:width + 1]
    cut = head.rsplit(" ", 1)[0] if " " in head else cleaned[:width]
    return cut.rstrip(" ,(-/#&.") or cleaned[:width]


def invoice_charge(line: charge_line_pb2.ChargeLine, currency: str, *, number: int = 1) -> InvoiceCharge:
    """One ``ChargeLine`` as an :class:`InvoiceCharge` (``number`` is its 1-based place, for the messages)."""
    what = f"line {number} {line.code or '(no code)'}"
    if line.type == charge_line_pb2.CHARGE_TYPE_UNSPECIFIED:
        raise InvoiceError(f"{what}: the charge type is not set: the 210 cannot say what the line is")
    try:
        kind = charge_line_pb2.ChargeType.Name(line.type).removeprefix("CHARGE_TYPE_")
    except ValueError as error:
        raise InvoiceError(f"{what}: unknown charge type {line.type}") from error
    if not line.code or any(not " " <= c <= "~" for c in line.code):
        raise InvoiceError(f"{what}: a line needs its printable code (the partner's charge-code map is keyed on it)")
    amount = _money(line.amount, currency, f"{what} amount")
    unit = ""
    quantity: float | None = None
    if line.unit != charge_line_pb2.CHARGE_UNIT_UNSPECIFIED:
        try:
            unit = charge_line_pb2.ChargeUnit.Name(line.unit).removeprefix("CHARGE_UNIT_")
        except ValueError as error:
            raise InvoiceError(f"{what}: unknown charge unit {line.unit}") from error
        if not math.isfinite(line.quantity) or line.quantity < 0:
            raise InvoiceError(f"{what}: the usage {line.quantity!r} {unit.lower()} is not a number of at least 0")
        quantity = line.quantity  # a measured double: the writer sends it to the thousandth
    unit_price = _money(line.unit_price, currency, f"{what} unit price") if line.HasField("unit_price") else None
    if line.rate_bps < 0:
        raise InvoiceError(f"{what}: a percentage rate of {line.rate_bps} basis points")
    return InvoiceCharge(kind, line.code, amount, _short(line.description, _DESCRIPTION), quantity, unit, unit_price,
                         line.rate_bps)


def _kept(value: str, pattern: str) -> str:
    return value if re.fullmatch(pattern, value) else ""


def _party(party: Party | None, role: str) -> InvoiceParty | None:
    """A 204 party as an N1 loop. What the 210's N1/N4 cannot carry is left out, not refused: the echo is a
    courtesy, and a stray 204 address must not stop the invoice (the writer refuses what it is given)."""
    if party is None or not clean_text(party.name):
        return None  # N1-02 is what the writer names a party by: a 204 party known only by id is not echoed
    identified = bool(re.fullmatch(r"[A-Z0-9]{1,2}", party.id_qualifier)) and 2 <= len(party.id) <= 80 and all(
        " " <= c <= "~" for c in party.id)
    postal = party.postal_code.replace(" ", "").replace("-", "").upper()
    return InvoiceParty(role, party.name, party.id_qualifier if identified else "", party.id if identified else "",
                        tuple(a for a in party.address if clean_text(a))[:4],
                        party.city if 2 <= len(clean_text(party.city)) <= 30 else "", _kept(party.state, "[A-Z]{2}"),
                        party.postal_code if re.fullmatch(r"[A-Z0-9]{3,15}", postal) else "",
                        _kept(party.country, "[A-Z]{2,3}"))


def _parties(tender: LoadTender) -> tuple[InvoiceParty, ...]:
    pickup = tender.pickups[0].place if tender.pickups else None
    delivery = tender.deliveries[-1].place if tender.deliveries else None
    found = (_party(tender.party("BT"), "BT"), _party(tender.party("SH") or pickup, "SH"),
             _party(tender.party("CN") or delivery, "CN"))
    return tuple(p for p in found if p is not None)


def _references(tender: LoadTender, echo: Collection[str] | None) -> tuple[ShipmentReference, ...]:
    seen: list[ShipmentReference] = []
    for reference in tender.references:
        if echo is not None and reference.qualifier not in echo:
            continue
        echoed = ShipmentReference(reference.qualifier, reference.value)
        if echoed not in seen:
            seen.append(echoed)
    return tuple(seen)


def _weight(tender: LoadTender) -> Quantity | None:
    """The shipment's weight in pounds or kilograms: the 204's L3, else its pickups' weights added (an L3 weight
    often comes without its unit, L3-12, while the S5s say it)."""
    if tender.total_weight is not None and tender.total_weight.unit in ("L", "K"):
        return tender.total_weight
    weights = [s.weight for s in tender.pickups]
    units = {w.unit for w in weights if w is not None}
    if not weights or None in weights or len(units) != 1 or not units <= {"L", "K"}:
        return None
    return Quantity(sum((w.value for w in weights if w is not None), Decimal(0)), units.pop())


def _day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def _delivered(invoice: invoice_pb2.Invoice, zone: ZoneInfo) -> date | None:
    """The delivery's date: the dwell that ended at the proof of delivery (the delivery stop's), if recorded."""
    basis = invoice_pb2.StopDwell.BASIS_GEOFENCE_ENTRY_TO_DELIVERY
    dwells = [d for d in invoice.usage.stop_dwells if d.basis == basis and d.HasField("depart_time")]
    return _day(dwells[-1].depart_time.ToDatetime(tzinfo=ZoneInfo("UTC")), zone) if dwells else None


def freight_invoice(invoice: invoice_pb2.Invoice, tender: LoadTender, *, scac: str,
                    echo: Collection[str] | None = None, zone: str = "UTC",
                    delivery_date: date | None = None) -> FreightInvoice:
    """The 210's content for ``invoice`` (a ``haulmesh.billing.v1.Invoice``) answering ``tender`` (the 204).

    ``scac`` is ours (B3-11); ``echo`` the 204 reference qualifiers the partner wants back as N9 (``None``: all of
    the 204's header references); ``zone`` the IANA zone the billing and delivery dates are read in;
    ``delivery_date`` overrides the one read from the invoice's usage. Raises :class:`InvoiceError` naming the line
    (or the total) that cannot be expressed."""
    try:
        where = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvoiceError(f"unknown zone {zone!r} for the billing date") from error
    if not invoice.invoice_number:
        raise InvoiceError(f"{invoice.name or 'the invoice'}: no invoice number (B3-02)")
    if not invoice.HasField("total") or not invoice.total.currency_code:
        raise InvoiceError(f"{invoice.invoice_number}: no total with its currency")
    currency = invoice.total.currency_code
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise InvoiceError(f"{invoice.invoice_number}: {currency!r} is not an ISO 4217 currency code")
    if not 1 <= len(invoice.lines) <= _MAX_LINES:
        raise InvoiceError(f"{invoice.invoice_number}: a 210 carries 1 to {_MAX_LINES} charge lines, "
                           f"not {len(invoice.lines)}")
    charges = tuple(invoice_charge(line, currency, number=n) for n, line in enumerate(invoice.lines, 1))
    total = _money(invoice.total, currency, f"{invoice.invoice_number} total")
    lines_sum = sum((c.amount for c in charges), Decimal(0))
    if total != lines_sum:
        raise InvoiceError(f"{invoice.invoice_number}: the total {total} is not the sum of its lines {lines_sum}")
    if abs(lines_sum.scaleb(2)) >= _MAX_CENTS:
        raise InvoiceError(f"{invoice.invoice_number}: the total {lines_sum} is too large for B3-07 (12 digits)")
    weight = _weight(tender)
    issued = invoice.issue_time.ToDatetime(tzinfo=ZoneInfo("UTC")) if invoice.HasField("issue_time") else None
    if issued is None:
        raise InvoiceError(f"{invoice.invoice_number}: no issue time (B3-06 is the billing date)")
    return FreightInvoice(
        invoice_number=invoice.invoice_number,
        shipment_id=tender.shipment_id,
        scac=scac,
        billing_date=_day(issued, where),
        charges=charges,
        payment_method=tender.payment_method if tender.payment_method in _PAYMENT_METHODS else "PP",
        parties=_parties(tender),
        references=_references(tender, echo),
        weight=weight.value if weight is not None else None,
        weight_unit=weight.unit if weight is not None else "L",
        total=total,
        delivery_date=delivery_date or _delivered(invoice, where),
        currency=currency,
    )


def check_charge_codes(codes: Mapping[str, str]) -> list[str]:
    """Problems of a partner's L1-08 map (keys: a line code such as ``DETENTION-STOP-1`` or a kind such as
    ``DETENTION``; values: three-character charge codes such as ``DET``), each naming the key; empty when good."""
    problems = []
    for key, code in codes.items():
        if not isinstance(key, str) or not key or any(not " " <= c <= "~" for c in key):
            problems.append(f"{key!r}: a line code or charge kind of printable characters")
        if not isinstance(code, str) or not _CHARGE_CODE.fullmatch(code):
            problems.append(f"{key!r}: {code!r} is not a charge code (L1-08: three upper-case letters or digits)")
    return problems
