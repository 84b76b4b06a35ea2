"""AIP-122 resource names: ``<collection>/<id>``, parsed with a field-level error when malformed."""

from __future__ import annotations

import re

from ._errors import FieldViolation, InvalidArgument

__all__ = ["SERVER_ID", "VEHICLE_ID", "parse_name", "resource_id_pattern"]

#: Server-assigned ids: lowercase letters, digits and dashes, at most 63 characters (AIP-122).
SERVER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

#: Vehicle ids are the fleet's own unit numbers, e.g. AU-TRK-1001 (the same as in its certificate):
#: 3 to 63 characters from [A-Z0-9-], starting with a letter (vehicle.proto).
VEHICLE_ID = re.compile(r"^[A-Z][A-Z0-9-]{2,62}$")

#: The ids each collection accepts where they are not :data:`SERVER_ID`: the one place both the services'
#: checks (``parse_name``) and the gateway's OpenAPI document (path parameter patterns) read. Tender ids are
#: lowercase ULIDs, accepted in upper case too (normalised by the tender service).
_ID_PATTERNS: dict[str, re.Pattern[str]] = {
    "vehicles": VEHICLE_ID,
    "tenders": re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"),
}


def resource_id_pattern(collection: str) -> re.Pattern[str]:
    """The pattern an id of ``collection`` (``tenders``, ``vehicles``, ...) must match."""
    return _ID_PATTERNS.get(collection, SERVER_ID)


def parse_name(name: str, collection: str, *, field: str = "name", id_pattern: re.Pattern[str] | None = None) -> str:
    """The id in ``<collection>/<id>`` (matching ``id_pattern``, default the collection's own), or
    INVALID_ARGUMENT naming ``field``."""
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not (id_pattern or resource_id_pattern(collection)).fullmatch(resource_id):
        raise InvalidArgument(f"{field} must be {collection}/{{id}}, got {name[:80]!r}",
                              reason="INVALID_RESOURCE_NAME",
                              violations=[FieldViolation(field, f"must be {collection}/{{id}}")])
    return resource_id
