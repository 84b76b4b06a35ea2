"""Element values: implied-decimal money as Decimal, dates and times."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edi.domain import (
    WriteRefused,
    X12Error,
    format_date,
    format_time,
    from_implied,
    parse_date,
    parse_time,
    to_implied,
)


@pytest.mark.parametrize(("amount", "text"), [
    (Decimal("1234.50"), "123450"), (Decimal("1234.5"), "123450"), (Decimal("0"), "0"),
    (Decimal("-12.34"), "-1234"), (Decimal("1234"), "123400"), (Decimal("1E+3"), "100000"),
])
def test_n2_is_implied_cents(amount: Decimal, text: str) -> None:
    assert to_implied(amount) == text
    assert from_implied(text) == amount


@settings(max_examples=100, deadline=None)
@given(st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_n2_round_trips_any_amount_in_cents(amount: Decimal) -> None:
    assert from_implied(to_implied(amount)) == amount


def test_other_implied_places_and_what_is_refused() -> None:
    assert to_implied(Decimal("1.5"), 1) == "15" and from_implied("15", 1) == Decimal("1.5")
    for bad in (Decimal("0.001"), Decimal("NaN"), Decimal("Infinity"), 1.5, "1.50"):
        with pytest.raises(WriteRefused):
            to_implied(bad)  # type: ignore[arg-type]
    with pytest.raises(X12Error):
        from_implied("12.50")


def test_dates_and_times() -> None:
    assert parse_date("20260316") == date(2026, 3, 16)
    assert parse_date("260316") == date(2026, 3, 16) and parse_date("990101") == date(1999, 1, 1)
    assert format_date(date(2026, 3, 16)) == "20260316" and format_date(date(2026, 3, 16), 6) == "260316"
    assert parse_time("0800") == time(8, 0) and parse_time("08001525") == time(8, 0, 15, 250_000)
    assert format_time(time(8, 5, 9)) == "0805" and format_time(time(8, 5, 9), seconds=True) == "080509"
    for bad in ("20260230", "2026031", "abcdefgh"):
        with pytest.raises(X12Error):
            parse_date(bad)
    for bad in ("2460", "08", "08x0"):
        with pytest.raises(X12Error):
            parse_time(bad)
