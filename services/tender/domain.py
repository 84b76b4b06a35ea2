"""Tender rules. Plain Python: no gRPC, no Redis.

The tender lifecycle, validation, eligibility and offers grow here (issue 3).
"""

from __future__ import annotations

from services.runtime import parse_name

__all__ = ["parse_tender_name", "tender_name"]


def tender_name(tender_id: str) -> str:
    return f"tenders/{tender_id}"


def parse_tender_name(name: str, *, field: str = "name") -> str:
    """The tender id in ``tenders/{tender}``, or INVALID_ARGUMENT naming ``field``."""
    return parse_name(name, "tenders", field=field)
