"""The 210 freight invoice writer: a Haulmesh invoice (``haulmesh.billing.v1.Invoice``) as X12 B3/L5/L0/L1/L3.

Inputs are plain dataclasses the service fills from the invoice, one to one: each ``ChargeLine`` becomes an
:class:`InvoiceCharge` (``type`` without ``CHARGE_TYPE_`` as :attr:`~InvoiceCharge.kind`, ``code``,
``description``, ``quantity``, ``unit`` without ``CHARGE_UNIT_``, ``unit_price`` and ``amount`` as Decimal from
``amount_minor``, ``rate_bps``); ``Invoice.total`` is :attr:`FreightInvoice.total`, checked against the lines.

Rules (shared/notes/edi.md, 210): B3-03 echoes the 204's B2-04, B3-04 is PP, CC or TP, B3-06 the billing date,
B3-11 our SCAC; B3-07, L1-04 and L3-05 are N2 (implied cents: $1,234.50 is ``123450``), money is Decimal only and
never rounded here (an amount with fractions of a cent is refused); L1-02 (rate) and L1-03 (its qualifier) are
always sent together; L1-08 comes from a per-partner charge-code map (:data:`CHARGE_CODES` by default; a line
no map names carries its description in L1-12 instead, as the standard says); L3-05 = sum of L1-04 = B3-07, or
:class:`InvoiceError`.

Each charge line is one LX loop: L5 (what it is), L0 (the usage it was priced on: miles, hours, the load; the
shipment's weight on the line-haul line), L1 (rate, qualifier, charge, code).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

from ._envelope import TransactionSet
from ._errors import WriteRefused
from ._set_210 import PAYMENT_METHODS
from ._set_5010 import reference_max
from ._status import ShipmentReference, clean_text
from ._tokens import Segment
from ._values import format_date, from_implied, to_implied

__all__ = [
    "BILLED_AS_BY_UNIT",
    "CHARGE_CODES",
    "RATE_QUALIFIER_BY_UNIT",
    "FreightInvoice",
    "InvoiceCharge",
    "InvoiceError",
    "InvoiceParty",
    "invoice_210",
]

#: L1-08 (X12 element 150) by Haulmesh charge type or line code; a partner's map is laid over it. 400 freight,
#: 405 fuel surcharge, DET detention, HAZ hazardous cargo charge, MIN minimum charge. Accessorials and
#: adjustments have no default: the partner names them, else L1-12 describes them.
CHARGE_CODES: Mapping[str, str] = {
    "LINEHAUL": "400",
    "FUEL_SURCHARGE": "405",
    "DETENTION": "DET",
    "HAZMAT_SURCHARGE": "HAZ",
    "MINIMUM_CHARGE": "MIN",
}
#: L1-03 for a metered line's unit: per mile, per hour, per load.
RATE_QUALIFIER_BY_UNIT: Mapping[str, str] = {"MILE": "PM", "HOUR": "PR", "LOAD": "PL"}
#: L0-03 for a metered line's unit: miles, hours, load.
BILLED_AS_BY_UNIT: Mapping[str, str] = {"MILE": "DM", "HOUR": "TH", "LOAD": "NL"}
#: A percentage line (fuel surcharge in basis points): L1-02 is the percentage, qualifier CT.
_PERCENT = "CT"
#: A line neither metered nor a percentage: L1-02 is its amount, qualifier FR (flat rate).
_FLAT = "FR"
_GROSS = "G"
_DELIVERED = "035"
_MAX_LINES = 999
_THOUSANDTH = Decimal("0.001")


class InvoiceError(WriteRefused):
    """An invoice the 210 cannot carry faithfully: totals that disagree, a float or fractional-cent amount,
    a value too long for its element."""


@dataclass(frozen=True)
class InvoiceCharge:
    """One charge line: what it is (``kind``: LINEHAUL, FUEL_SURCHARGE, DETENTION, ...; ``code``: the line's
    stable code, e.g. ``DETENTION-STOP-2``), its ``amount``, and how it was priced: ``quantity`` of ``unit``
    (MILE, HOUR, LOAD) at ``unit_price``, or ``rate_bps`` basis points of another line."""

    kind: str
    code: str
    amount: Decimal
    description: str = ""
    quantity: Decimal | float | int | None = None
    unit: str = ""
    unit_price: Decimal | None = None
    rate_bps: int = 0


@dataclass(frozen=True)
class InvoiceParty:
    """An N1 loop: ``role`` (N1-01: BT bill-to, SH shipper, CN consignee), name, id (N1-03/04), address."""

    role: str
    name: str
    id_qualifier: str = ""
    identifier: str = ""
    street: tuple[str, ...] = ()
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True)
class FreightInvoice:
    """A 210: our invoice number, the 204's B2-04, our SCAC, the billing date, the charges, and what the partner
    expects echoed. ``weight`` is the shipment's total weight (``weight_unit`` L pounds, K kilograms); ``total``
    the invoice's own total (``Invoice.total``), checked against the sum of the charges when given."""

    invoice_number: str
    shipment_id: str
    scac: str
    billing_date: date
    charges: tuple[InvoiceCharge, ...]
    payment_method: str = "PP"
    parties: tuple[InvoiceParty, ...] = ()
    references: tuple[ShipmentReference, ...] = ()
    weight: Decimal | float | int | None = None
    weight_unit: str = "L"
    total: Decimal | None = None
    delivery_date: date | None = None
    currency: str = "USD"


def _money(amount: object, what: str) -> str:
    if not isinstance(amount, Decimal):
        raise InvoiceError(f"{what}: amounts are Decimal, not {type(amount).__name__}")
    try:
        return to_implied(amount)
    except WriteRefused as error:
        raise InvoiceError(f"{what}: {error}") from error


def _real(value: Decimal | float | int, digits: int, what: str) -> str:
    """An ``R`` element: no exponent, no trailing zeros, at most ``digits`` digits. A Decimal is written exactly
    (or refused); a float (a usage measured as a proto double) to the thousandth."""
    if isinstance(value, bool) or not isinstance(value, Decimal | float | int):
        raise InvoiceError(f"{what}: not a number: {value!r}")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise InvoiceError(f"{what}: not a number: {value!r}")
    if isinstance(value, float):  # a measured usage (proto double): to the thousandth, as the contract keeps it
        number = number.quantize(_THOUSANDTH, rounding=ROUND_HALF_EVEN)
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    if sum(c.isdigit() for c in text) > digits:
        raise InvoiceError(f"{what}: {text} has more than {digits} digits")
    return text


def _text(value: str, low: int, high: int, what: str) -> str:
    cleaned = clean_text(value)[:high].rstrip()
    if len(cleaned) < low:
        raise InvoiceError(f"{what}: {value!r} is not {low} to {high} characters")
    return cleaned


def _id(value: str, low: int, high: int, what: str) -> str:
    """An identifier echoed as given (never rewritten): printable ASCII of the element's length."""
    if not low <= len(value) <= high or any(not " " <= c <= "~" for c in value):
        raise InvoiceError(f"{what}: {value!r} is not {low} to {high} printable characters")
    return value


def _party(party: InvoiceParty) -> list[Segment]:
    if not re.fullmatch(r"[A-Z0-9]{2,3}", party.role) or bool(party.id_qualifier) != bool(party.identifier):
        raise InvoiceError(f"N1: a role and, if any, an id with its qualifier: {party!r}")
    if (party.state and not re.fullmatch(r"[A-Z]{2}", party.state)) or (
            party.country and not re.fullmatch(r"[A-Z]{2,3}", party.country)) or (
            party.postal_code and not re.fullmatch(r"[A-Z0-9]{3,15}", _postal(party.postal_code))):
        raise InvoiceError(f"N4: a two-letter state, a postal code of 3 to 15, a country code: {party!r}")
    identifier = _id(party.identifier, 2, 80, "N1-04") if party.identifier else ""
    segments = [Segment.of("N1", party.role, _text(party.name, 1, 60, "N1-02"), party.id_qualifier, identifier)]
    streets = [_text(s, 1, 55, "N3") for s in party.street if clean_text(s)]
    if len(streets) > 4:
        raise InvoiceError(f"N3: at most four street lines, not {len(streets)}")
    segments += [Segment.of("N3", *streets[i:i + 2]) for i in range(0, len(streets), 2)]
    if party.city or party.state or party.postal_code:
        segments.append(Segment.of("N4", _text(party.city, 2, 30, "N4-01") if party.city else "", party.state,
                                   _postal(party.postal_code), party.country))
    return segments


def _postal(code: str) -> str:
    return code.replace(" ", "").replace("-", "").upper()


def _rate(charge: InvoiceCharge) -> tuple[str, str]:
    """L1-02 and L1-03, always together (the notes: never one without the other)."""
    if charge.unit_price is not None and charge.unit in RATE_QUALIFIER_BY_UNIT:
        if not isinstance(charge.unit_price, Decimal):
            raise InvoiceError(f"{charge.code}: a unit price is Decimal, not {type(charge.unit_price).__name__}")
        return _real(charge.unit_price, 9, f"{charge.code} L1-02"), RATE_QUALIFIER_BY_UNIT[charge.unit]
    if charge.rate_bps:
        return _real(Decimal(charge.rate_bps).scaleb(-2), 9, f"{charge.code} L1-02"), _PERCENT
    return _real(charge.amount, 9, f"{charge.code} L1-02"), _FLAT


def _line(number: int, charge: InvoiceCharge, codes: Mapping[str, str], weight: str, weight_unit: str) -> \
        list[Segment]:
    amount = _money(charge.amount, f"{charge.code} L1-04")
    description = clean_text(charge.description)
    if len(description) < 2:  # L5-02 and L1-12 want words: the line's code says what it is
        description = clean_text(f"{charge.code.replace('-', ' ')} {description}") or clean_text(charge.kind)
    segments = [Segment.of("LX", str(number)), Segment.of("L5", str(number), _text(description, 1, 50, "L5-02"))]
    quantity, billed_as = "", ""
    if charge.quantity is not None and charge.unit in BILLED_AS_BY_UNIT:
        quantity, billed_as = _real(charge.quantity, 11, f"{charge.code} L0-02"), BILLED_AS_BY_UNIT[charge.unit]
    if quantity or weight:
        segments.append(Segment.of("L0", str(number), quantity, billed_as, weight, _GROSS if weight else "",
                                   "", "", "", "", "", weight_unit if weight else ""))
    rate, qualifier = _rate(charge)
    code = codes.get(charge.code) or codes.get(charge.kind, "")
    if code and not re.fullmatch(r"[A-Z0-9]{3}", code):
        raise InvoiceError(f"{charge.code}: L1-08 {code!r} is not a three-character charge code")
    segments.append(Segment.of("L1", str(number), rate, qualifier, amount, "", "", "", code, "", "", "",
                               "" if code else _text(description, 2, 25, "L1-12")))
    return segments


def invoice_210(invoice: FreightInvoice, *, control: str, charge_codes: Mapping[str, str] | None = None,
                references: Iterable[ShipmentReference] | None = None, version: str = "004010") -> TransactionSet:
    """The 210 (ST02 ``control``) for ``invoice``: B3, C3, the references as N9, the parties as N1 loops, one LX
    loop per charge, L3 totals. ``version`` is the partner's GS08: the segments are the same in 004010 and
    005010, whose N9-02 may be 50 characters long, not 30.

    ``charge_codes`` is the partner's L1-08 map (by line code, then by kind), laid over :data:`CHARGE_CODES`.
    ``references`` replaces ``invoice.references`` when given. Raises :class:`InvoiceError` when the total
    disagrees with the lines or a value cannot be written faithfully."""
    longest = reference_max(version)
    if invoice.payment_method not in PAYMENT_METHODS:
        raise InvoiceError(f"B3-04 {invoice.payment_method!r} is not one of {sorted(PAYMENT_METHODS)}")
    if not re.fullmatch(r"[A-Z0-9]{2,4}", invoice.scac):
        raise InvoiceError(f"B3-11: not a SCAC: {invoice.scac!r}")
    if not 1 <= len(invoice.charges) <= _MAX_LINES:
        raise InvoiceError(f"a 210 carries 1 to {_MAX_LINES} charge lines, not {len(invoice.charges)}")
    if invoice.weight_unit not in ("L", "K") or not re.fullmatch(r"[A-Z]{3}", invoice.currency):
        raise InvoiceError(f"weight unit L or K and an ISO currency: {invoice.weight_unit!r} {invoice.currency!r}")
    for charge in invoice.charges:
        _money(charge.amount, f"{charge.code} L1-04")
    total = sum((c.amount for c in invoice.charges), Decimal(0))
    if invoice.total is not None:
        _money(invoice.total, "invoice total")
        if invoice.total != total:
            raise InvoiceError(f"the invoice total {invoice.total} is not the sum of its lines {total}")
    codes = {**CHARGE_CODES, **(charge_codes or {})}
    weight = _real(invoice.weight, 10, "weight") if invoice.weight is not None else ""
    weight_line = next((i for i, c in enumerate(invoice.charges) if c.kind == "LINEHAUL"), 0)
    body = [Segment.of("B3", "", _id(invoice.invoice_number, 1, 22, "B3-02"),
                       _id(invoice.shipment_id, 0, 30, "B3-03"), invoice.payment_method,
                       invoice.weight_unit if weight else "", format_date(invoice.billing_date),
                       _money(total, "B3-07"), "",
                       format_date(invoice.delivery_date) if invoice.delivery_date else "",
                       _DELIVERED if invoice.delivery_date else "", invoice.scac),
            Segment.of("C3", invoice.currency)]
    echoed = tuple(invoice.references if references is None else references)
    if len(echoed) > 300:
        raise InvoiceError(f"at most 300 references, not {len(echoed)}")
    for reference in echoed:
        if not re.fullmatch(r"[A-Z0-9]{2,3}", reference.qualifier):
            raise InvoiceError(f"N9-01: not a reference qualifier: {reference.qualifier!r}")
        body.append(Segment.of("N9", reference.qualifier, _id(reference.value, 1, longest, "N9-02")))
    if len(invoice.parties) > 10:
        raise InvoiceError(f"at most 10 parties, not {len(invoice.parties)}")
    for party in invoice.parties:
        body += _party(party)
    for index, charge in enumerate(invoice.charges):
        body += _line(index + 1, charge, codes, weight if index == weight_line else "", invoice.weight_unit)
    body.append(Segment.of("L3", weight, _GROSS if weight else "", "", "", _money(total, "L3-05"),
                           "", "", "", "", "", "", invoice.weight_unit if weight else ""))
    _check_totals(body)
    return TransactionSet("210", control, tuple(body))


def _check_totals(body: list[Segment]) -> None:
    """L3-05 = sum of L1-04 = B3-07, read back from the segments as written."""
    lines = sum((from_implied(s.get(4)) for s in body if s.id == "L1"), Decimal(0))
    b3 = from_implied(body[0].get(7))
    l3 = from_implied(body[-1].get(5))
    if not lines == b3 == l3:
        raise InvoiceError(f"totals disagree: L1-04 sum {lines}, B3-07 {b3}, L3-05 {l3}")
