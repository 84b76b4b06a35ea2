"""AIP-122 resource names: ``<collection>/<id>``, parsed with a field-level error when malformed."""

from __future__ import annotations

import re

from ._errors import FieldViolation, InvalidArgument

__all__ = ["SERVER_ID", "parse_name"]

#: Server-assigned ids: lowercase letters, digits and dashes, at most 63 characters (AIP-122).
SERVER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_name(name: str, collection: str, *, field: str = "name", id_pattern: re.Pattern[str] = SERVER_ID) -> str:
    """The id in ``<collection>/<id>``, or INVALID_ARGUMENT naming ``field``."""
    prefix, _, resource_id = name.partition("/")
    if prefix != collection or not id_pattern.fullmatch(resource_id):
        raise InvalidArgument(f"{field} must be {collection}/{{id}}, got {name[:80]!r}",
                              reason="INVALID_RESOURCE_NAME",
                              violations=[FieldViolation(field, f"must be {collection}/{{id}}")])
    return resource_id
