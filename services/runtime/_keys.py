"""Ids and key layout shared by every service.

Every key of a carrier's data carries the carrier as its Redis Cluster hash tag (``tender:{acme}:...``), so
a state change, its index entries and its outbox event land in one slot and commit together. Fleet-wide
data (vehicles) uses the tag ``{fleet}``.
"""

from __future__ import annotations

from ulid import ULID

from ._tenant import CARRIER_METADATA_KEY

__all__ = ["FLEET", "carrier_metadata", "new_id", "tenant_key"]

#: Hash tag of fleet-wide data that belongs to no carrier.
FLEET = "fleet"


def new_id() -> str:
    """A new resource or event id: a ULID (time-ordered, 26 characters), lowercase as AIP-122 asks."""
    return str(ULID()).lower()


def tenant_key(kind: str, tag: str, *parts: str) -> str:
    """``kind:{tag}:part:part`` — ``tag`` is a carrier id or :data:`FLEET`."""
    return ":".join([kind, f"{{{tag}}}", *parts])


def carrier_metadata(carrier_id: str) -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing call made on behalf of ``carrier_id``."""
    return ((CARRIER_METADATA_KEY, f"carriers/{carrier_id}"),)
