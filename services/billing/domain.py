"""Billing rules. Plain Python: no gRPC, no Redis.

Money is an integer count of a currency's minor unit (:class:`Money`), never a float. Quantities that are
fractional on the wire (miles are a ``double``) are converted once, exactly, to :class:`~decimal.Decimal`
from their shortest decimal representation (``repr``: 789.4 is 789.4, not 789.39999999999997726...), and
every product or percentage is computed exactly as a :class:`~fractions.Fraction` and rounded half to
even to the minor unit once per line (protos/haulmesh/type/v1/money.proto). A document's total is the sum
of its rounded lines, so it always equals what a reader adds up.

The pricing rules are those of protos/haulmesh/billing/v1/quote.proto and invoice.proto; docs/billing.md
explains them with examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from haulmesh.type.v1 import equipment_pb2
from services.runtime import FailedPrecondition, FieldViolation, InvalidArgument, parse_name
from services.runtime.limits import CURRENCY_CODE, MARKET_CODE
from services.runtime.money import format_minor, minor_unit_exponent

__all__ = [
    "CHARGE_CODES",
    "MAX_LANE_RATES",
    "MAX_ROUTE_MILES",
    "MAX_TMS_LINES",
    "QUOTE_VALIDITY",
    "ChargeLine",
    "DetentionTerms",
    "EstimateDifference",
    "Lane",
    "LaneRate",
    "LineDifference",
    "LineFigure",
    "Money",
    "Provenance",
    "RateCard",
    "Reconciliation",
    "StopDwell",
    "Usage",
    "card_in_effect",
    "check_quote_accepted_in_time",
    "detention_lines",
    "estimate_differences",
    "exact_quantity",
    "format_money",
    "measured_lines",
    "minor_unit_exponent",
    "parse_invoice_name",
    "parse_quote_name",
    "parse_rate_card_name",
    "price_quote",
    "reconcile",
    "sum_lines",
    "sum_money",
    "validate_move",
    "validate_rate_card",
    "validate_tms_figures",
    "validate_usage",
]

#: A quote holds its price this long (quote.proto).
QUOTE_VALIDITY = timedelta(hours=24)
#: Line codes of the quote lines (invoice detention lines are ``DETENTION-STOP-{n}``).
CHARGE_CODES = {"LINEHAUL": "LINEHAUL", "FUEL_SURCHARGE": "FUEL", "MINIMUM_CHARGE": "MINIMUM",
                "HAZMAT_SURCHARGE": "HAZMAT"}

#: Bounds that keep every product far inside int64 and reject typos (a rate of USD 28,500/mi).
MAX_ROUTE_MILES = 10_000
MAX_LANE_RATES = 1000
MAX_TMS_LINES = 100
_MAX_RATE_PER_MILE_MINOR = 1_000_000
_MAX_FLAT_MINOR = 1_000_000_000
_MAX_RATE_PER_HOUR_MINOR = 10_000_000
_MAX_FREE_MINUTES = 7 * 24 * 60
_MAX_DWELL_MINUTES = 30 * 24 * 60
_MAX_HOURS = 24 * 60

_CURRENCY = CURRENCY_CODE
#: Market codes: ISO 3166-2 subdivision, hyphen, three-letter market (protos/haulmesh/type/v1/lane.proto).
_REGION = MARKET_CODE
_LINE_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,63}$")


def _currency_mismatch(message: str, violations: list[FieldViolation]) -> InvalidArgument:
    return InvalidArgument(message, reason="CURRENCY_MISMATCH", violations=violations)


@dataclass(frozen=True, order=True)
class Money:
    """``minor`` units of ``currency`` (ISO 4217): Money("USD", 123456) is USD 1,234.56."""

    currency: str
    minor: int

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise _currency_mismatch(f"cannot combine {other.currency} with {self.currency}", [])

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor + other.minor)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.currency, self.minor - other.minor)

    def __neg__(self) -> Money:
        return Money(self.currency, -self.minor)


def format_money(money: Money) -> str:
    """``USD 1234.56`` (for descriptions; amounts on the wire are always integer minor units)."""
    return format_minor(money.currency, money.minor)


def _round(value: Fraction) -> int:
    # Python's round() on a Fraction is exact and rounds half to even: the rule of money.proto.
    return round(value)


def exact_quantity(value: float) -> Decimal:
    """A wire ``double`` as the decimal its sender wrote: its shortest round-tripping representation."""
    return Decimal(repr(float(value)))


@dataclass(frozen=True)
class Lane:
    """Origin and destination market codes (directional)."""

    origin: str
    destination: str


@dataclass(frozen=True)
class LaneRate:
    """A lane's rate per mile, for some equipment (empty: all), with an optional own minimum charge."""

    lane: Lane
    rate_per_mile: Money
    equipment: frozenset[int] = frozenset()
    minimum_charge: Money | None = None

    def applies(self, lane: Lane, equipment: int) -> bool:
        return self.lane == lane and (not self.equipment or equipment in self.equipment)


@dataclass(frozen=True)
class DetentionTerms:
    """Free dwell per stop; billable dwell rounded up to ``increment_minutes`` and priced per hour."""

    free_time_minutes: int
    rate_per_hour: Money
    increment_minutes: int = 0


@dataclass(frozen=True)
class RateCard:
    """A carrier's contract prices (protos/haulmesh/billing/v1/rate_card.proto)."""

    currency: str
    default_rate_per_mile: Money
    effective_time: datetime | None
    lane_rates: tuple[LaneRate, ...] = ()
    fuel_surcharge_bps: int = 0
    minimum_charge: Money | None = None
    hazmat_surcharge: Money | None = None
    detention: DetentionTerms | None = None
    expire_time: datetime | None = None
    display_name: str = ""

    def in_effect(self, at: datetime) -> bool:
        return (self.effective_time is not None and self.effective_time <= at
                and (self.expire_time is None or at < self.expire_time))


@dataclass(frozen=True)
class ChargeLine:
    """One priced line; ``amount`` is authoritative, the rest explains it (charge_line.proto).

    ``type`` is the ChargeType name without its prefix (``LINEHAUL``, ``DETENTION``...), ``unit`` the
    ChargeUnit name without its prefix (``MILE``, ``HOUR``, ``LOAD``) or "" for percentage lines.
    """

    type: str
    code: str
    description: str
    amount: Money
    quantity: Fraction = Fraction(0)
    unit: str = ""
    unit_price: Money | None = None
    rate_bps: int = 0


def sum_money(currency: str, amounts: Iterable[Money]) -> Money:
    """The sum of ``amounts`` (all in ``currency``, else CURRENCY_MISMATCH)."""
    total = Money(currency, 0)
    for amount in amounts:
        total = total + amount
    return total


def sum_lines(currency: str, lines: Iterable[ChargeLine]) -> Money:
    """The total of ``lines``: the sum of their amounts."""
    return sum_money(currency, (line.amount for line in lines))


# --- validation -------------------------------------------------------------------------------------


class _Checks:
    """Collects field violations; currency mismatches are kept apart to choose the error's reason."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.currency_violations: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def money(self, path: str, money: Money | None, currency: str, *, required: bool = False,
              minimum: int = 0, maximum: int = _MAX_FLAT_MINOR) -> None:
        if money is None:
            if required:
                self.add(path, "required")
            return
        if money.currency != currency:
            self.currency_violations.append(FieldViolation(
                f"{path}.currency_code", f"must be {currency or 'the card currency'}, got {money.currency!r}"))
        if not minimum <= money.minor <= maximum:
            self.add(f"{path}.amount_minor", f"must be in [{minimum}, {maximum}] minor units")

    def lane(self, path: str, lane: Lane | None) -> None:
        if lane is None:
            self.add(path, "required")
            return
        for name, value in (("origin_region", lane.origin), ("destination_region", lane.destination)):
            if not _REGION.fullmatch(value):
                self.add(f"{path}.{name}", "must be a market code such as US-TX-HOU")

    def raise_if_any(self, what: str) -> None:
        if self.violations:
            raise InvalidArgument(f"invalid {what}", violations=self.violations + self.currency_violations)
        if self.currency_violations:
            raise _currency_mismatch(f"{what}: an amount is not in the expected currency",
                                     self.currency_violations)


def validate_rate_card(card: RateCard, *, path: str = "rate_card") -> None:
    """INVALID_ARGUMENT (or CURRENCY_MISMATCH when only currencies are wrong) naming every bad field."""
    checks = _Checks()
    currency = card.currency
    if not _CURRENCY.fullmatch(currency):
        checks.add(f"{path}.currency_code", "must be an ISO 4217 code such as USD")
    if len(card.display_name) > 100:
        checks.add(f"{path}.display_name", "at most 100 characters")
    checks.money(f"{path}.default_rate_per_mile", card.default_rate_per_mile, currency, required=True,
                 minimum=1, maximum=_MAX_RATE_PER_MILE_MINOR)
    if len(card.lane_rates) > MAX_LANE_RATES:
        checks.add(f"{path}.lane_rates", f"at most {MAX_LANE_RATES} entries")
    for i, rate in enumerate(card.lane_rates[:MAX_LANE_RATES]):
        at = f"{path}.lane_rates[{i}]"
        checks.lane(f"{at}.lane", rate.lane)
        checks.money(f"{at}.rate_per_mile", rate.rate_per_mile, currency, required=True, minimum=1,
                     maximum=_MAX_RATE_PER_MILE_MINOR)
        checks.money(f"{at}.minimum_charge", rate.minimum_charge, currency)
        if equipment_pb2.EQUIPMENT_UNSPECIFIED in rate.equipment:
            checks.add(f"{at}.equipment", "must not contain EQUIPMENT_UNSPECIFIED")
    if not 0 <= card.fuel_surcharge_bps <= 10_000:
        checks.add(f"{path}.fuel_surcharge_bps", "must be in [0, 10000]")
    checks.money(f"{path}.minimum_charge", card.minimum_charge, currency)
    checks.money(f"{path}.hazmat_surcharge", card.hazmat_surcharge, currency)
    if card.detention is not None:
        terms = card.detention
        if not 0 <= terms.free_time_minutes <= _MAX_FREE_MINUTES:
            checks.add(f"{path}.detention.free_time_minutes", f"must be in [0, {_MAX_FREE_MINUTES}]")
        checks.money(f"{path}.detention.rate_per_hour", terms.rate_per_hour, currency, required=True,
                     maximum=_MAX_RATE_PER_HOUR_MINOR)
        if not 0 <= terms.increment_minutes <= 1440:
            checks.add(f"{path}.detention.increment_minutes", "must be in [0, 1440]")
    if card.effective_time is None:
        checks.add(f"{path}.effective_time", "required")
    elif card.expire_time is not None and card.expire_time <= card.effective_time:
        checks.add(f"{path}.expire_time", "must be after effective_time")
    checks.raise_if_any("rate card")


def card_in_effect(cards: Iterable[tuple[str, RateCard]], at: datetime) -> tuple[str, RateCard] | None:
    """The (id, card) in effect at ``at``: latest ``effective_time`` not after it, not expired.

    Ties on ``effective_time`` go to the greater id (ids are ULIDs: the card created last).
    """
    best: tuple[str, RateCard] | None = None
    for card_id, card in cards:
        if not card.in_effect(at):
            continue
        if best is None or (card.effective_time, card_id) > (best[1].effective_time, best[0]):
            best = (card_id, card)
    return best


# --- quotes -----------------------------------------------------------------------------------------


def validate_move(lane: Lane | None, route_miles: float, equipment: int, *, path: str = "quote") -> Decimal:
    """The route miles as an exact decimal, or INVALID_ARGUMENT naming every bad field of the move."""
    checks = _Checks()
    checks.lane(f"{path}.lane", lane)
    miles = Decimal(0)
    if not math.isfinite(route_miles) or not 0 < route_miles <= MAX_ROUTE_MILES:
        checks.add(f"{path}.route_miles", f"must be > 0 and at most {MAX_ROUTE_MILES}")
    else:
        miles = exact_quantity(route_miles)
    if equipment == equipment_pb2.EQUIPMENT_UNSPECIFIED:
        checks.add(f"{path}.equipment", "required")
    checks.raise_if_any("quote")
    return miles


def price_quote(card: RateCard, lane: Lane, miles: Decimal, equipment: int, hazmat: bool) -> list[ChargeLine]:
    """The quote's lines: LINEHAUL, FUEL, then MINIMUM and HAZMAT when they apply (quote.proto).

    Each line is rounded half to even once; MINIMUM tops up the *rounded* line-haul + fuel, so the total
    (the sum of the lines) is exactly the minimum when it applies.
    """
    currency = card.currency
    lane_rate = next((r for r in card.lane_rates if r.applies(lane, equipment)), None)
    rate = lane_rate.rate_per_mile if lane_rate else card.default_rate_per_mile
    minimum = lane_rate.minimum_charge if lane_rate and lane_rate.minimum_charge else card.minimum_charge
    linehaul = Money(currency, _round(Fraction(miles) * rate.minor))
    where = f"lane {lane.origin}>{lane.destination}" if lane_rate else "default rate"
    lines = [ChargeLine("LINEHAUL", "LINEHAUL",
                        f"Line-haul {miles} mi @ {format_money(rate)}/mi ({where})", linehaul,
                        quantity=Fraction(miles), unit="MILE", unit_price=rate)]
    fuel = Money(currency, _round(Fraction(linehaul.minor * card.fuel_surcharge_bps, 10_000)))
    lines.append(ChargeLine("FUEL_SURCHARGE", "FUEL",
                            f"Fuel surcharge {Decimal(card.fuel_surcharge_bps) / 100}% of line-haul", fuel,
                            rate_bps=card.fuel_surcharge_bps))
    if minimum is not None and minimum.minor > linehaul.minor + fuel.minor:
        top_up = Money(currency, minimum.minor - linehaul.minor - fuel.minor)
        lines.append(ChargeLine("MINIMUM_CHARGE", "MINIMUM",
                                f"Minimum charge {format_money(minimum)} top-up", top_up))
    if hazmat and card.hazmat_surcharge is not None and card.hazmat_surcharge.minor > 0:
        lines.append(ChargeLine("HAZMAT_SURCHARGE", "HAZMAT", "Hazmat surcharge", card.hazmat_surcharge,
                                quantity=Fraction(1), unit="LOAD", unit_price=card.hazmat_surcharge))
    return lines


def check_quote_accepted_in_time(quote_name: str, accepted: datetime | None, expires: datetime) -> None:
    """FAILED_PRECONDITION QUOTE_EXPIRED if the quote was accepted after it expired.

    ``accepted`` is None when billing has not (yet) learnt of an acceptance: the tender service refuses to
    accept a lapsed offer and an offer never outlives its quote, so absence is not evidence of lateness.
    """
    if accepted is not None and accepted > expires:
        raise FailedPrecondition(f"{quote_name} expired at {expires.isoformat()} before it was accepted at "
                                 f"{accepted.isoformat()}", reason="QUOTE_EXPIRED",
                                 metadata={"quote": quote_name})


# --- usage and invoices -----------------------------------------------------------------------------


#: What a dwell was measured between (StopDwell.Basis without its prefix), as the detention line says it.
_DWELL_BASIS_TEXT = {"GEOFENCE": "geofence entry to exit",
                     "GEOFENCE_ENTRY_TO_DELIVERY": "geofence entry to delivery"}
#: Bounds of a usage's provenance: gaps listed, frames measured.
MAX_USAGE_GAPS = 10_000
_MAX_FRAMES = 10_000_000
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StopDwell:
    """Dwell at the stop ``stop_index`` (0-based) in whole minutes, with its geofence times if known and what
    they are (``basis``: the StopDwell.Basis name without prefix, "" when not recorded)."""

    stop_index: int
    dwell_minutes: int
    arrive_time: datetime | None = None
    depart_time: datetime | None = None
    basis: str = ""


@dataclass(frozen=True)
class Provenance:
    """The frames behind measured miles (invoice.proto UsageProvenance), as the line-haul line cites them."""

    first_sequence: int
    last_sequence: int
    frames: int
    gaps: int
    bridged_miles: float
    #: "POSITIONS" or "ODOMETER".
    source: str
    telemetry_log_sha256: str


@dataclass(frozen=True)
class Usage:
    """Metered usage of a completed mission; ``provenance`` set when the miles were measured from telemetry."""

    lane: Lane | None
    miles: float
    hours: float
    stop_dwells: tuple[StopDwell, ...] = field(default_factory=tuple)
    provenance: Provenance | None = None


def validate_usage(usage: Usage, *, path: str = "usage") -> None:
    """INVALID_ARGUMENT naming every bad field of ``usage``.

    Dwell minutes must agree with the geofence times when both are given (whole minutes, rounded down), so
    that the detention billed can be traced to the telemetry that measured it.
    """
    checks = _Checks()
    checks.lane(f"{path}.lane", usage.lane)
    if not math.isfinite(usage.miles) or not 0 <= usage.miles <= MAX_ROUTE_MILES:
        checks.add(f"{path}.miles", f"must be in [0, {MAX_ROUTE_MILES}]")
    if not math.isfinite(usage.hours) or not 0 <= usage.hours <= _MAX_HOURS:
        checks.add(f"{path}.hours", f"must be in [0, {_MAX_HOURS}]")
    seen: set[int] = set()
    for i, dwell in enumerate(usage.stop_dwells):
        at = f"{path}.stop_dwells[{i}]"
        if not 0 <= dwell.stop_index < 1000:
            checks.add(f"{at}.stop_index", "must be in [0, 999]")
        elif dwell.stop_index in seen:
            checks.add(f"{at}.stop_index", "stop listed twice")
        seen.add(dwell.stop_index)
        if not 0 <= dwell.dwell_minutes <= _MAX_DWELL_MINUTES:
            checks.add(f"{at}.dwell_minutes", f"must be in [0, {_MAX_DWELL_MINUTES}]")
        if dwell.arrive_time is not None and dwell.depart_time is not None:
            seconds = (dwell.depart_time - dwell.arrive_time).total_seconds()
            if seconds < 0:
                checks.add(f"{at}.depart_time", "must not be before arrive_time")
            elif int(seconds // 60) != dwell.dwell_minutes:
                checks.add(f"{at}.dwell_minutes", f"must be {int(seconds // 60)} (depart_time - arrive_time)")
    p = usage.provenance
    if p is not None:
        at = f"{path}.provenance"
        if not 0 <= p.frames <= _MAX_FRAMES:
            checks.add(f"{at}.frame_count", f"must be in [0, {_MAX_FRAMES}]")
        if p.frames and not 1 <= p.first_sequence <= p.last_sequence:
            checks.add(f"{at}.first_sequence", "must be >= 1 and <= last_sequence")
        if not 0 <= p.gaps <= MAX_USAGE_GAPS:
            checks.add(f"{at}.gaps", f"at most {MAX_USAGE_GAPS}")
        if not math.isfinite(p.bridged_miles) or not 0 <= p.bridged_miles <= MAX_ROUTE_MILES:
            checks.add(f"{at}.gaps", f"bridged miles must be in [0, {MAX_ROUTE_MILES}]")
        if p.source not in ("POSITIONS", "ODOMETER"):
            checks.add(f"{at}.source", "SOURCE_POSITIONS or SOURCE_ODOMETER")
        if not _SHA256_HEX.fullmatch(p.telemetry_log_sha256):
            checks.add(f"{at}.telemetry_log_sha256", "64 lowercase hex characters")
    checks.raise_if_any("usage")


def measured_lines(card: RateCard, lane: Lane, usage: Usage, equipment: int, hazmat: bool) -> list[ChargeLine]:
    """The quote's lines repriced on the measured miles: LINEHAUL = measured miles at the quote's rate (the
    card the quote was priced with), FUEL follows line-haul, MINIMUM and HAZMAT as in :func:`price_quote`. The
    line-haul line cites its provenance: "Line-haul 778.4 mi measured (frames #12..#3141, 1 gap bridged
    41.2 mi) @ USD 2.85/mi"."""
    assert usage.provenance is not None
    p = usage.provenance
    miles = exact_quantity(usage.miles)
    lines = price_quote(card, lane, miles, equipment, hazmat)
    linehaul = lines[0]
    assert linehaul.unit_price is not None
    source = "odometer, " if p.source == "ODOMETER" else ""
    if p.gaps:
        gaps = f", {p.gaps} gap{'s' if p.gaps > 1 else ''} bridged {p.bridged_miles:.1f} mi"
    else:
        gaps = ", no gaps"
    lines[0] = ChargeLine(linehaul.type, linehaul.code,
                          f"Line-haul {miles} mi measured ({source}frames #{p.first_sequence}..#{p.last_sequence}"
                          f"{gaps}) @ {format_money(linehaul.unit_price)}/mi", linehaul.amount,
                          quantity=linehaul.quantity, unit=linehaul.unit, unit_price=linehaul.unit_price)
    return lines


@dataclass(frozen=True)
class LineFigure:
    """What estimate-vs-measured compares of a line: its code, unit ("" for none), quantity and amount."""

    code: str
    unit: str
    quantity: float
    amount: Money


@dataclass(frozen=True)
class EstimateDifference:
    """One line code's estimate (the accepted quote) against its measured value (the invoice)."""

    code: str
    unit: str
    estimated_quantity: float
    measured_quantity: float
    estimated: Money
    measured: Money

    @property
    def difference(self) -> Money:
        """Measured minus estimated (positive: the run cost more than quoted)."""
        return self.measured - self.estimated


def estimate_differences(estimated: Sequence[LineFigure], measured: Sequence[LineFigure],
                         currency: str) -> list[EstimateDifference]:
    """Per line code on either side, in the invoice's line order then the quote-only codes: a missing side
    counts as zero. Reported, never an outcome: reconciliation compares the TMS with the invoice."""
    quote = {line.code: line for line in estimated}
    invoice = {line.code: line for line in measured}
    zero = Money(currency, 0)
    codes = [line.code for line in measured] + [line.code for line in estimated if line.code not in invoice]
    out = []
    for code in codes:
        e, m = quote.get(code), invoice.get(code)
        either = m or e
        assert either is not None  # every code comes from one side
        out.append(EstimateDifference(code, either.unit, e.quantity if e else 0.0, m.quantity if m else 0.0,
                                      e.amount if e else zero, m.amount if m else zero))
    return out


def detention_lines(terms: DetentionTerms | None, dwells: Sequence[StopDwell], currency: str) -> list[ChargeLine]:
    """One DETENTION line per stop whose dwell exceeded the free time, in stop order.

    Billable minutes = dwell - free time, rounded *up* to the increment (0 or 1: per minute); amount =
    billable minutes x rate per hour / 60, rounded half to even once.
    """
    if terms is None:
        return []
    step = max(terms.increment_minutes, 1)
    lines = []
    for dwell in sorted(dwells, key=lambda d: d.stop_index):
        over = dwell.dwell_minutes - terms.free_time_minutes
        if over <= 0:
            continue
        billable = -(-over // step) * step
        amount = Money(currency, _round(Fraction(billable * terms.rate_per_hour.minor, 60)))
        number = dwell.stop_index + 1
        basis = f" ({_DWELL_BASIS_TEXT[dwell.basis]})" if dwell.basis in _DWELL_BASIS_TEXT else ""
        lines.append(ChargeLine(
            "DETENTION", f"DETENTION-STOP-{number}",
            f"Detention stop {number}: {dwell.dwell_minutes} min dwell{basis}, {terms.free_time_minutes} min free, "
            f"{billable} min billed @ {format_money(terms.rate_per_hour)}/h", amount,
            quantity=Fraction(billable, 60), unit="HOUR", unit_price=terms.rate_per_hour))
    return lines


# --- reconciliation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineDifference:
    """A line on which invoice and TMS differ; ``kind`` is the LineDifference.Kind name without prefix."""

    code: str
    kind: str
    invoiced: Money | None
    tms: Money | None
    difference: Money


@dataclass(frozen=True)
class Reconciliation:
    """MATCHED (``matched``) or DISPUTED, with the TMS's total minus the invoice's and the line differences."""

    matched: bool
    total_difference: Money
    line_differences: tuple[LineDifference, ...]


def validate_tms_figures(currency: str, tms_total: Money | None, tms_lines: Sequence[tuple[str, Money | None]],
                         tms_reference: str) -> None:
    """INVALID_ARGUMENT (CURRENCY_MISMATCH when only currencies are wrong) for the TMS's figures."""
    checks = _Checks()
    checks.money("tms_total", tms_total, currency, required=True, minimum=-(2 ** 62), maximum=2 ** 62)
    if len(tms_lines) > MAX_TMS_LINES:
        checks.add("tms_lines", f"at most {MAX_TMS_LINES} lines")
    seen: set[str] = set()
    for i, (code, amount) in enumerate(tms_lines[:MAX_TMS_LINES]):
        if not _LINE_CODE.fullmatch(code):
            checks.add(f"tms_lines[{i}].code", "must be an upper-case line code such as LINEHAUL")
        elif code in seen:
            checks.add(f"tms_lines[{i}].code", f"{code} listed twice")
        seen.add(code)
        checks.money(f"tms_lines[{i}].amount", amount, currency, required=True, minimum=-(2 ** 62),
                     maximum=2 ** 62)
    if len(tms_reference) > 64:
        checks.add("tms_reference", "at most 64 characters")
    checks.raise_if_any("reconciliation figures")


def reconcile(invoice_lines: Sequence[tuple[str, Money]], invoice_total: Money, tms_total: Money,
              tms_lines: Sequence[tuple[str, Money]]) -> Reconciliation:
    """Compare the TMS's figures with the invoice's (figures validated by :func:`validate_tms_figures`).

    MATCHED iff the totals are equal to the minor unit and, when the TMS sent lines, every code is on both
    sides with the same amount. Differences are listed in invoice line order, then the TMS-only lines in
    the TMS's order; each difference is TMS minus invoice, a missing side counting as zero.
    """
    currency = invoice_total.currency
    total_difference = tms_total - invoice_total
    differences: list[LineDifference] = []
    if tms_lines:
        theirs = dict(tms_lines)
        ours = dict(invoice_lines)
        for code, amount in invoice_lines:
            other = theirs.get(code)
            if other is None:
                differences.append(LineDifference(code, "MISSING_IN_TMS", amount, None, -amount))
            elif other != amount:
                differences.append(LineDifference(code, "AMOUNT_DIFFERS", amount, other, other - amount))
        for code, amount in tms_lines:
            if code not in ours:
                differences.append(LineDifference(code, "MISSING_IN_INVOICE", None, amount,
                                                  amount - Money(currency, 0)))
    matched = total_difference.minor == 0 and not differences
    return Reconciliation(matched, total_difference, tuple(differences))


# --- names and filters ------------------------------------------------------------------------------


def parse_invoice_name(name: str, *, field: str = "name") -> str:
    """The id of ``invoices/{invoice}``."""
    return parse_name(name, "invoices", field=field)


def parse_quote_name(name: str, *, field: str = "name") -> str:
    """The id of ``quotes/{quote}``."""
    return parse_name(name, "quotes", field=field)


def parse_rate_card_name(name: str, *, field: str = "name") -> str:
    """The id of ``rateCards/{rate_card}``."""
    return parse_name(name, "rateCards", field=field)
