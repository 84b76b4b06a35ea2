"""Billing rules: pricing, detention, reconciliation, validation and filters (plain Python, hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing import domain
from services.billing.domain import (
    DetentionTerms,
    Lane,
    LaneRate,
    Money,
    RateCard,
    StopDwell,
    Usage,
)
from services.runtime import InvalidArgument

USD = "USD"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOU_ATL = Lane("US-TX-HOU", "US-GA-ATL")
DRY_VAN = 1


def usd(minor: int) -> Money:
    return Money(USD, minor)


def card(**changes) -> RateCard:
    base = dict(currency=USD, default_rate_per_mile=usd(285), effective_time=T0, fuel_surcharge_bps=2850,
                minimum_charge=usd(45_000), hazmat_surcharge=usd(15_000),
                detention=DetentionTerms(120, usd(7_500), 15))
    base.update(changes)
    return RateCard(**base)


def amounts(lines) -> dict[str, int]:
    return {line.code: line.amount.minor for line in lines}


# --- pricing: worked examples ------------------------------------------------------------------------


def test_linehaul_fuel_and_total_worked_example() -> None:
    # 789.4 mi x USD 2.85 = 2249.79 exactly; fuel 28.50 % of 224979 cents = 64119.015 -> 64119.
    lines = domain.price_quote(card(), HOU_ATL, domain.exact_quantity(789.4), DRY_VAN, hazmat=False)
    assert amounts(lines) == {"LINEHAUL": 224_979, "FUEL": 64_119}
    assert [line.type for line in lines] == ["LINEHAUL", "FUEL_SURCHARGE"]
    assert domain.sum_lines(USD, lines) == usd(289_098)
    assert lines[0].description == "Line-haul 789.4 mi @ USD 2.85/mi (default rate)"


def test_rounding_is_half_to_even_on_each_line() -> None:
    # 0.5 mi x 1 cent = 0.5 -> 0 (even); 1.5 mi -> 2; 2.5 mi -> 2.
    one_cent = card(default_rate_per_mile=usd(1), fuel_surcharge_bps=0, minimum_charge=None)
    for miles, expected in [("0.5", 0), ("1.5", 2), ("2.5", 2), ("3.5", 4)]:
        lines = domain.price_quote(one_cent, HOU_ATL, Decimal(miles), DRY_VAN, hazmat=False)
        assert amounts(lines)["LINEHAUL"] == expected, miles
    # Fuel: 5 cents x 1000 bp = 0.5 cent -> 0; 15 cents x 1000 bp = 1.5 -> 2.
    for linehaul, expected in [(5, 0), (15, 2), (25, 2)]:
        lines = domain.price_quote(card(default_rate_per_mile=usd(linehaul), fuel_surcharge_bps=1000,
                                        minimum_charge=None), HOU_ATL, Decimal(1), DRY_VAN, hazmat=False)
        assert amounts(lines)["FUEL"] == expected


def test_miles_are_taken_as_written_not_as_binary_float() -> None:
    # 0.1 + 0.2 as a float is 0.30000000000000004; its shortest repr is what is priced.
    assert domain.exact_quantity(0.1) == Decimal("0.1")
    assert domain.exact_quantity(789.4) == Decimal("789.4")
    # 2.675 is 2.67499999... in binary; priced as 2.675 x 100 = 267.5 -> 268 (half to even).
    lines = domain.price_quote(card(default_rate_per_mile=usd(100), fuel_surcharge_bps=0, minimum_charge=None),
                               HOU_ATL, domain.exact_quantity(2.675), DRY_VAN, hazmat=False)
    assert amounts(lines)["LINEHAUL"] == 268


def test_minimum_tops_up_rounded_linehaul_plus_fuel_and_hazmat_is_flat() -> None:
    lines = domain.price_quote(card(), HOU_ATL, Decimal(10), DRY_VAN, hazmat=True)
    # 10 mi x 285 = 2850; fuel 812.25 -> 812; minimum 45000 - 3662 = 41338; hazmat 15000.
    assert amounts(lines) == {"LINEHAUL": 2850, "FUEL": 812, "MINIMUM": 41_338, "HAZMAT": 15_000}
    assert [line.code for line in lines] == ["LINEHAUL", "FUEL", "MINIMUM", "HAZMAT"]
    assert domain.sum_lines(USD, lines) == usd(60_000)


def test_lane_rate_first_match_with_equipment_and_own_minimum() -> None:
    reefer_only = LaneRate(HOU_ATL, usd(400), frozenset({3}))
    any_equipment = LaneRate(HOU_ATL, usd(300), minimum_charge=usd(100_000))
    priced = card(lane_rates=(reefer_only, any_equipment))
    assert amounts(domain.price_quote(priced, HOU_ATL, Decimal(100), 3, False))["LINEHAUL"] == 40_000
    dry = domain.price_quote(priced, HOU_ATL, Decimal(100), DRY_VAN, False)
    assert amounts(dry)["LINEHAUL"] == 30_000
    assert domain.sum_lines(USD, dry) == usd(100_000)  # the lane's minimum, not the card's
    # Lanes are directional: the way back uses the default rate.
    back = domain.price_quote(priced, Lane("US-GA-ATL", "US-TX-HOU"), Decimal(100), 3, False)
    assert amounts(back)["LINEHAUL"] == 28_500


def test_card_in_effect_is_latest_effective_and_not_expired() -> None:
    old = card(effective_time=T0)
    new = card(effective_time=T0 + timedelta(days=10), expire_time=T0 + timedelta(days=20))
    future = card(effective_time=T0 + timedelta(days=100))
    cards = [("a", old), ("b", new), ("c", future)]
    assert domain.card_in_effect(cards, T0 + timedelta(days=1))[0] == "a"
    assert domain.card_in_effect(cards, T0 + timedelta(days=15))[0] == "b"
    assert domain.card_in_effect(cards, T0 + timedelta(days=20))[0] == "a"  # b expired: back to a
    assert domain.card_in_effect(cards, T0 - timedelta(days=1)) is None


# --- detention ---------------------------------------------------------------------------------------


def test_detention_per_stop_beyond_free_time_rounded_up_to_increment() -> None:
    terms = DetentionTerms(120, usd(7_500), 15)
    dwells = [StopDwell(0, 120), StopDwell(1, 121), StopDwell(2, 200)]
    lines = domain.detention_lines(terms, dwells, USD)
    # stop 2: 1 min over -> 15 min billed = 18.75; stop 3: 80 over -> 90 min = 112.50.
    assert amounts(lines) == {"DETENTION-STOP-2": 1875, "DETENTION-STOP-3": 11_250}
    assert lines[1].quantity == Fraction(3, 2) and lines[1].unit == "HOUR"
    assert domain.detention_lines(None, dwells, USD) == []


def test_detention_per_minute_rounds_half_to_even() -> None:
    # 1 min at 30 cents/h = 0.5 cent -> 0; 3 min = 1.5 -> 2.
    terms = DetentionTerms(0, usd(30), 0)
    assert amounts(domain.detention_lines(terms, [StopDwell(0, 1), StopDwell(1, 3)], USD)) == {
        "DETENTION-STOP-1": 0, "DETENTION-STOP-2": 2}


# --- reconciliation ----------------------------------------------------------------------------------

INVOICE = [("LINEHAUL", usd(224_979)), ("FUEL", usd(64_119)), ("DETENTION-STOP-2", usd(1_875))]
INVOICE_TOTAL = usd(290_973)


def test_reconcile_matched_on_total_only_and_with_lines() -> None:
    assert domain.reconcile(INVOICE, INVOICE_TOTAL, usd(290_973), []).matched
    result = domain.reconcile(INVOICE, INVOICE_TOTAL, usd(290_973), INVOICE)
    assert result.matched and result.line_differences == () and result.total_difference == usd(0)


def test_reconcile_disputed_lists_every_kind_of_difference() -> None:
    tms = [("LINEHAUL", usd(224_000)), ("FUEL", usd(64_119)), ("LUMPER", usd(5_000))]
    result = domain.reconcile(INVOICE, INVOICE_TOTAL, usd(293_119), tms)
    assert not result.matched
    assert result.total_difference == usd(2_146)
    assert [(d.code, d.kind, d.difference.minor) for d in result.line_differences] == [
        ("LINEHAUL", "AMOUNT_DIFFERS", -979),
        ("DETENTION-STOP-2", "MISSING_IN_TMS", -1_875),
        ("LUMPER", "MISSING_IN_INVOICE", 5_000),
    ]


def test_reconcile_total_difference_alone_disputes() -> None:
    result = domain.reconcile(INVOICE, INVOICE_TOTAL, usd(290_972), [])
    assert not result.matched and result.total_difference == usd(-1) and result.line_differences == ()


def test_tms_figures_in_another_currency_are_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_tms_figures(USD, Money("CAD", 1), [], "")
    assert caught.value.reason == "CURRENCY_MISMATCH"
    assert [v.field for v in caught.value.violations] == ["tms_total.currency_code"]
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_tms_figures(USD, usd(1), [("FUEL", usd(1)), ("FUEL", usd(2))], "")
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert [v.field for v in caught.value.violations] == ["tms_lines[1].code"]


# --- validation --------------------------------------------------------------------------------------


def test_rate_card_violations_name_every_bad_field() -> None:
    bad = card(currency="usd", default_rate_per_mile=usd(0), fuel_surcharge_bps=10_001,
               lane_rates=(LaneRate(Lane("houston", "US-GA-ATL"), usd(-1), frozenset({0})),),
               effective_time=T0, expire_time=T0)
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_rate_card(bad)
    fields = {v.field for v in caught.value.violations}
    assert {"rate_card.currency_code", "rate_card.default_rate_per_mile.amount_minor",
            "rate_card.fuel_surcharge_bps", "rate_card.lane_rates[0].lane.origin_region",
            "rate_card.lane_rates[0].rate_per_mile.amount_minor", "rate_card.lane_rates[0].equipment",
            "rate_card.expire_time"} <= fields


def test_rate_card_amount_in_another_currency_is_currency_mismatch() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_rate_card(card(hazmat_surcharge=Money("EUR", 100)))
    assert caught.value.reason == "CURRENCY_MISMATCH"
    assert [v.field for v in caught.value.violations] == ["rate_card.hazmat_surcharge.currency_code"]


def test_usage_dwell_must_agree_with_geofence_times() -> None:
    arrive = T0
    good = Usage(HOU_ATL, 10.0, 1.0, (StopDwell(0, 90, arrive, arrive + timedelta(minutes=90, seconds=59)),))
    domain.validate_usage(good)
    bad = Usage(HOU_ATL, -1.0, float("nan"), (StopDwell(0, 91, arrive, arrive + timedelta(minutes=90)),
                                               StopDwell(0, 5)))
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_usage(bad)
    assert [v.field for v in caught.value.violations] == [
        "usage.miles", "usage.hours", "usage.stop_dwells[0].dwell_minutes", "usage.stop_dwells[1].stop_index"]


def test_money_refuses_mixed_currencies() -> None:
    with pytest.raises(InvalidArgument) as caught:
        usd(1) + Money("EUR", 1)
    assert caught.value.reason == "CURRENCY_MISMATCH"
    assert domain.format_money(usd(-123_456)) == "USD -1234.56"
    assert domain.format_money(Money("JPY", 500)) == "JPY 500"
    assert domain.format_money(Money("KWD", 1_500)) == "KWD 1.500"


# --- filters -----------------------------------------------------------------------------------------


def test_filter_parses_and_matches() -> None:
    # The grammar is the runtime's (tests/runtime/test_filters.py); here, the fields billing's lists offer.
    from haulmesh.billing.v1 import invoice_pb2
    from services.billing import convert
    from services.runtime import parse_filter

    selected = parse_filter('state = DISPUTED AND issue_time >= "2026-01-01T00:00:00Z"', convert.INVOICE_FILTER)
    invoice = invoice_pb2.Invoice(state=invoice_pb2.Invoice.STATE_DISPUTED)
    invoice.issue_time.FromDatetime(T0)
    assert selected.matches(convert.invoice_filter_values(invoice))
    invoice.issue_time.FromDatetime(T0 - timedelta(seconds=1))
    assert not selected.matches(convert.invoice_filter_values(invoice))
    invoice.issue_time.FromDatetime(T0)
    invoice.state = invoice_pb2.Invoice.STATE_MATCHED
    assert not selected.matches(convert.invoice_filter_values(invoice))
    for text in ['color = "red"', "state > DISPUTED", 'issue_time >= "yesterday"', "tms_load_id = bare",
                 "state = = X", "state = PARKED"]:
        with pytest.raises(InvalidArgument) as caught:
            parse_filter(text, convert.INVOICE_FILTER)
        assert caught.value.reason == "INVALID_FILTER", text


# --- properties --------------------------------------------------------------------------------------

minor = st.integers(min_value=0, max_value=10_000_000)
positive_rate = st.integers(min_value=1, max_value=1_000_000)
miles_floats = st.floats(min_value=0.01, max_value=domain.MAX_ROUTE_MILES, allow_nan=False)


@st.composite
def rate_cards(draw) -> RateCard:
    return card(default_rate_per_mile=usd(draw(positive_rate)),
                fuel_surcharge_bps=draw(st.integers(0, 10_000)),
                minimum_charge=draw(st.none() | minor.map(usd)),
                hazmat_surcharge=draw(st.none() | minor.map(usd)),
                lane_rates=tuple(draw(st.lists(st.builds(
                    LaneRate, st.just(HOU_ATL), positive_rate.map(usd),
                    st.frozensets(st.integers(1, 8), max_size=3), st.none() | minor.map(usd)), max_size=3))))


@settings(max_examples=300)
@given(rate_cards(), miles_floats, st.integers(1, 8), st.booleans())
def test_quote_total_is_sum_of_nonnegative_lines_and_respects_minimum(rate_card: RateCard, miles: float,
                                                                      equipment: int, hazmat: bool) -> None:
    domain.validate_rate_card(rate_card)
    exact = domain.validate_move(HOU_ATL, miles, equipment)
    lines = domain.price_quote(rate_card, HOU_ATL, exact, equipment, hazmat)
    total = domain.sum_lines(USD, lines)
    assert total.minor == sum(line.amount.minor for line in lines)
    assert all(line.amount.minor >= 0 and line.amount.currency == USD for line in lines)
    codes = [line.code for line in lines]
    assert codes[:2] == ["LINEHAUL", "FUEL"] and len(set(codes)) == len(codes)
    # Each line is within half a minor unit of its exact value.
    linehaul = lines[0]
    assert abs(Fraction(linehaul.amount.minor) - Fraction(exact) * linehaul.unit_price.minor) <= Fraction(1, 2)
    fuel_exact = Fraction(linehaul.amount.minor * rate_card.fuel_surcharge_bps, 10_000)
    assert abs(lines[1].amount.minor - fuel_exact) <= Fraction(1, 2)
    rate = next((r for r in rate_card.lane_rates if r.applies(HOU_ATL, equipment)), None)
    minimum = rate.minimum_charge if rate and rate.minimum_charge else rate_card.minimum_charge
    hazmat_minor = rate_card.hazmat_surcharge.minor if hazmat and rate_card.hazmat_surcharge else 0
    if minimum is not None:
        assert total.minor - hazmat_minor >= minimum.minor
    assert ("MINIMUM" in codes) == (minimum is not None and minimum.minor > lines[0].amount.minor
                                    + lines[1].amount.minor)


@given(st.integers(0, 1440), minor, st.integers(0, 120),
       st.lists(st.integers(0, 3000), max_size=6))
def test_detention_bills_only_beyond_free_time_never_negative(free: int, rate: int, step: int,
                                                              dwell_minutes: list[int]) -> None:
    terms = DetentionTerms(free, usd(rate), step)
    dwells = [StopDwell(i, m) for i, m in enumerate(dwell_minutes)]
    lines = domain.detention_lines(terms, dwells, USD)
    assert [line.code for line in lines] == [f"DETENTION-STOP-{i + 1}" for i, m in enumerate(dwell_minutes)
                                             if m > free]
    for line in lines:
        billed_minutes = line.quantity * 60
        assert line.amount.minor >= 0
        assert billed_minutes % max(step, 1) == 0
        dwell = dwell_minutes[int(line.code.rsplit("-", 1)[1]) - 1]
        assert dwell - free <= billed_minutes < dwell - free + max(step, 1)


codes = st.sampled_from(["LINEHAUL", "FUEL", "MINIMUM", "HAZMAT", "DETENTION-STOP-1", "DETENTION-STOP-2", "X"])
line_sets = st.dictionaries(codes, st.integers(-10**9, 10**9).map(usd), max_size=7).map(lambda d: list(d.items()))


@given(line_sets, line_sets)
def test_reconciliation_is_symmetric(ours: list, theirs: list) -> None:
    """Swapping the sides swaps the kinds and negates every difference; the outcome is the same."""
    our_total = domain.sum_money(USD, (m for _, m in ours))
    their_total = domain.sum_money(USD, (m for _, m in theirs))
    forward = domain.reconcile(ours, our_total, their_total, theirs)
    if not ours or not theirs:
        return  # no lines sent (or an empty invoice): only totals compare, checked below
    backward = domain.reconcile(theirs, their_total, our_total, ours)
    swap = {"AMOUNT_DIFFERS": "AMOUNT_DIFFERS", "MISSING_IN_TMS": "MISSING_IN_INVOICE",
            "MISSING_IN_INVOICE": "MISSING_IN_TMS"}
    assert forward.matched == backward.matched
    assert forward.total_difference == -backward.total_difference
    assert {(d.code, swap[d.kind], -d.difference.minor) for d in forward.line_differences} == {
        (d.code, d.kind, d.difference.minor) for d in backward.line_differences}
    # Matched iff the same lines; line differences add up to the total difference.
    assert forward.matched == (dict(ours) == dict(theirs))
    assert sum(d.difference.minor for d in forward.line_differences) == forward.total_difference.minor


@given(line_sets, st.integers(-10**9, 10**9))
def test_totals_only_reconciliation_matches_iff_equal(ours: list, tms_total: int) -> None:
    total = domain.sum_money(USD, (m for _, m in ours))
    result = domain.reconcile(ours, total, usd(tms_total), [])
    assert result.matched == (tms_total == total.minor)
    assert result.total_difference.minor == tms_total - total.minor and result.line_differences == ()


@given(st.text(max_size=3).filter(lambda c: c != USD), st.integers())
def test_any_other_currency_is_refused(currency: str, amount: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        usd(0) + Money(currency, amount)
    assert caught.value.reason == "CURRENCY_MISMATCH"
    with pytest.raises(InvalidArgument):
        domain.validate_tms_figures(USD, Money(currency, amount % 10**9), [], "")


money_fields = st.sampled_from(["default_rate_per_mile", "minimum_charge", "hazmat_surcharge"])


@given(money_fields, st.integers(max_value=-1))
def test_negative_amounts_on_a_rate_card_are_refused(name: str, amount: int) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_rate_card(card(**{name: usd(amount)}))
    assert [v.field for v in caught.value.violations] == [f"rate_card.{name}.amount_minor"]


@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda m: not 0 < m <= domain.MAX_ROUTE_MILES))
def test_route_miles_out_of_range_are_refused(miles: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_move(HOU_ATL, miles, DRY_VAN)
    assert [v.field for v in caught.value.violations] == ["quote.route_miles"]


# --- measured usage: line-haul on measured miles, estimate vs measured ---------------------------------

PROVENANCE = domain.Provenance(first_sequence=12, last_sequence=3141, frames=3129, gaps=1, bridged_miles=41.2,
                               source="POSITIONS", telemetry_log_sha256="ab" * 32)


def test_measured_lines_bill_the_measured_miles_at_the_quotes_rate_and_cite_the_frames() -> None:
    measured = Usage(HOU_ATL, 778.4, 13.9, provenance=PROVENANCE)
    lines = domain.measured_lines(card(), HOU_ATL, measured, DRY_VAN, hazmat=False)
    assert amounts(lines) == {"LINEHAUL": 221_844, "FUEL": 63_226}
    assert lines[0].description == ("Line-haul 778.4 mi measured (frames #12..#3141, 1 gap bridged 41.2 mi) "
                                    "@ USD 2.85/mi")
    odometer = Usage(HOU_ATL, 20.0, 1.0, provenance=domain.Provenance(1, 9, 9, 0, 0.0, "ODOMETER", "ab" * 32))
    lines = domain.measured_lines(card(), HOU_ATL, odometer, DRY_VAN, hazmat=True)
    # A short measured run falls under the minimum: the top-up follows, as on a quote.
    assert amounts(lines) == {"LINEHAUL": 5_700, "FUEL": 1_624, "MINIMUM": 37_676, "HAZMAT": 15_000}
    assert lines[0].description == "Line-haul 20.0 mi measured (odometer, frames #1..#9, no gaps) @ USD 2.85/mi"


def test_estimate_differences_cover_every_code_on_either_side() -> None:
    quote = [domain.LineFigure("LINEHAUL", "MILE", 789.4, usd(224_979)), domain.LineFigure("FUEL", "", 0, usd(64_119))]
    invoice = [domain.LineFigure("LINEHAUL", "MILE", 778.4, usd(221_844)),
               domain.LineFigure("DETENTION-STOP-1", "HOUR", 0.5, usd(3_750))]
    got = domain.estimate_differences(quote, invoice, USD)
    assert [(d.code, d.estimated_quantity, d.measured_quantity, d.difference.minor) for d in got] == [
        ("LINEHAUL", 789.4, 778.4, -3_135), ("DETENTION-STOP-1", 0.0, 0.5, 3_750), ("FUEL", 0, 0.0, -64_119)]


def test_provenance_is_validated() -> None:
    bad = domain.Provenance(first_sequence=9, last_sequence=1, frames=3, gaps=0, bridged_miles=-1.0,
                            source="GUESS", telemetry_log_sha256="AB" * 32)
    with pytest.raises(InvalidArgument) as caught:
        domain.validate_usage(Usage(HOU_ATL, 10.0, 1.0, provenance=bad))
    assert {v.field for v in caught.value.violations} == {
        "usage.provenance.first_sequence", "usage.provenance.gaps", "usage.provenance.source",
        "usage.provenance.telemetry_log_sha256"}


def test_detention_lines_say_what_the_dwell_was_measured_between() -> None:
    dwell = StopDwell(1, 200, basis="GEOFENCE_ENTRY_TO_DELIVERY")
    (line,) = domain.detention_lines(DetentionTerms(120, usd(7_500), 15), [dwell], USD)
    assert line.description.startswith("Detention stop 2: 200 min dwell (geofence entry to delivery), 120 min free")
