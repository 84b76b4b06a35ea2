"""Amounts of money for people to read: ISO 4217 minor units and ``USD 1234.56``.

Amounts travel as integer minor units (haulmesh.type.v1.Money); how many decimals a currency's minor unit
has is a fact every reader of an amount needs (billing's line descriptions, the ``haulmesh report`` table),
so it lives here once.
"""

from __future__ import annotations

__all__ = ["format_minor", "minor_unit_exponent"]

#: ISO 4217 currencies whose minor unit is not the cent (the rest have two decimals).
_EXPONENTS = {"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
              "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
              "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4, "UYW": 4}


def minor_unit_exponent(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (2 for USD, 0 for JPY, 3 for KWD)."""
    return _EXPONENTS.get(currency, 2)


def format_minor(currency: str, minor: int) -> str:
    """``USD 1234.56`` for ``("USD", 123456)`` (for people; amounts on the wire stay integer minor units)."""
    exponent = minor_unit_exponent(currency)
    sign = "-" if minor < 0 else ""
    units, rest = divmod(abs(minor), 10 ** exponent)
    return f"{currency} {sign}{units}" + (f".{rest:0{exponent}d}" if exponent else "")
