"""Element values to and from Python: implied-decimal numbers (N2 money) as :class:`~decimal.Decimal`, DT, TM.

Money is Decimal only: an ``N2`` element holds implied cents (``123450`` is 1,234.50), and a float is refused, as
is an amount with more decimals than the element implies (it would be rounded silently).
"""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal, InvalidOperation

from ._errors import WriteRefused, X12Error

__all__ = ["format_date", "format_time", "from_implied", "parse_date", "parse_time", "to_implied"]


def to_implied(amount: Decimal, places: int = 2) -> str:
    """``Decimal("1234.50")`` → ``"123450"`` for an ``N2`` element (``places`` implied decimals)."""
    if not isinstance(amount, Decimal):
        raise WriteRefused(f"amounts are Decimal, not {type(amount).__name__}")
    if not amount.is_finite():
        raise WriteRefused(f"not an amount: {amount}")
    scaled = amount.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise WriteRefused(f"{amount} has more than {places} decimals")
    return str(int(scaled))


def from_implied(text: str, places: int = 2) -> Decimal:
    """``"123450"`` → ``Decimal("1234.50")`` for an ``N2`` element."""
    if not text.lstrip("-").isdigit():
        raise X12Error(f"not an N{places} value: {text!r}")
    try:
        return Decimal(int(text)).scaleb(-places)
    except InvalidOperation as error:  # pragma: no cover - an integer always scales
        raise X12Error(str(error)) from error


def parse_date(text: str) -> date:
    """A ``DT`` value: CCYYMMDD, or YYMMDD (the ISA's; 00-49 is 20xx)."""
    if len(text) == 6 and text.isdigit():
        text = ("20" if int(text[:2]) < 50 else "19") + text
    if len(text) != 8 or not text.isdigit():
        raise X12Error(f"not a date: {text!r}")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as error:
        raise X12Error(f"not a date: {text!r}") from error


def parse_time(text: str) -> time:
    """A ``TM`` value: HHMM, HHMMSS, HHMMSSD or HHMMSSDD."""
    if len(text) not in (4, 6, 7, 8) or not text.isdigit():
        raise X12Error(f"not a time: {text!r}")
    fraction = text[6:]
    try:
        return time(int(text[:2]), int(text[2:4]), int(text[4:6] or 0),
                    int(fraction.ljust(2, "0")) * 10_000 if fraction else 0)
    except ValueError as error:
        raise X12Error(f"not a time: {text!r}") from error


def format_date(value: date, width: int = 8) -> str:
    """CCYYMMDD (``width`` 8) or YYMMDD (6, the ISA's)."""
    return value.strftime("%Y%m%d" if width == 8 else "%y%m%d")


def format_time(value: time, seconds: bool = False) -> str:
    """HHMM, or HHMMSS."""
    return value.strftime("%H%M%S" if seconds else "%H%M")
