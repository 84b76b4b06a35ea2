"""Tender rules: names and identifiers. Plain Python: no gRPC, no Redis.

The tender lifecycle, validation, eligibility and offers grow here (issue 3).
"""

from __future__ import annotations

import re

from services.runtime import FieldViolation, InvalidArgument

__all__ = ["TENDER_ID", "parse_tender_name", "tender_name"]

#: Server-assigned tender ids: lowercase letters, digits and dashes (AIP-122), at most 63 characters.
TENDER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def tender_name(tender_id: str) -> str:
    return f"tenders/{tender_id}"


def parse_tender_name(name: str, *, field: str = "name") -> str:
    """The tender id in ``tenders/{tender}``, or INVALID_ARGUMENT naming ``field``."""
    prefix, _, tender_id = name.partition("/")
    if prefix != "tenders" or not TENDER_ID.match(tender_id):
        raise InvalidArgument(f"{field} must be tenders/{{tender}}, got {name[:80]!r}",
                              reason="INVALID_RESOURCE_NAME",
                              violations=[FieldViolation(field, "must be tenders/{tender}")])
    return tender_id
