"""Billing rules. Plain Python: no gRPC, no Redis.

Rate cards, quotes, usage metering, invoices and reconciliation, all in integer minor units, grow here
(issue 3).
"""

from __future__ import annotations

from services.runtime import parse_name

__all__ = ["parse_invoice_name"]


def parse_invoice_name(name: str, *, field: str = "name") -> str:
    return parse_name(name, "invoices", field=field)
