"""AIP-158 pagination: bounded page sizes and opaque page tokens bound to the query they came from."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from ._errors import FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Page",
    "decode_page",
    "encode_page_token",
    "next_page_token",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    """Where a list call starts (``after``: the last key of the previous page, "" for the first) and how many."""

    after: str
    size: int


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def encode_page_token(after: str, query: str) -> str:
    """An opaque token for the page after ``after``, valid only for the same ``query`` (filter, parent)."""
    raw = json.dumps({"a": after, "q": _fingerprint(query)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page(page_size: int, page_token: str, query: str) -> Page:
    """Validate a list request's paging fields; ``query`` must be what the token was issued for."""
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE",
                              violations=[FieldViolation("page_size", "must be 0 (default) to 1000")])
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page("", size)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, fingerprint = str(data["a"]), str(data["q"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("page_token is not a token this API issued", reason="INVALID_PAGE_TOKEN",
                              violations=[FieldViolation("page_token", "malformed")]) from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument("page_token belongs to a different query (filter or parent changed)",
                              reason="INVALID_PAGE_TOKEN",
                              violations=[FieldViolation("page_token", "issued for another query")])
    return Page(after, size)


def next_page_token(cursor: str, query: str) -> str:
    """The ``next_page_token`` for a page that ended at ``cursor`` ("" for the last page)."""
    return encode_page_token(cursor, query) if cursor else ""
