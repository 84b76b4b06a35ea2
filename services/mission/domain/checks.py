"""Field checks every request shares: names, ids, locations, texts, windows."""

from __future__ import annotations

import math
import re
from datetime import datetime

from services.runtime import (
    VEHICLE_ID,
    FieldViolation,
    InvalidArgument,
    parse_name,
)

#: Upper bound of a vehicle's cargo capacity (US federal gross-weight limit, vehicle.proto).
MAX_CARGO_WEIGHT_LB = 80_000

def parse_vehicle_name(name: str, *, field: str = "name") -> str:
    """The id in ``vehicles/{id}``, or INVALID_ARGUMENT naming ``field``."""
    return parse_name(name, "vehicles", field=field)


def parse_mission_name(name: str, *, field: str = "name") -> str:
    """The id in ``missions/{id}``, or INVALID_ARGUMENT naming ``field``."""
    return parse_name(name, "missions", field=field)


def validate_vehicle_id(vehicle_id: str, *, field: str = "vehicle_id") -> None:
    """INVALID_ARGUMENT unless ``vehicle_id`` is a valid fleet unit number."""
    if not VEHICLE_ID.fullmatch(vehicle_id):
        raise InvalidArgument(f"{field} must be 3-63 characters of A-Z 0-9 -, starting with a letter",
                              violations=[FieldViolation(field, "3-63 of [A-Z0-9-], starting with a letter")])


# --- Geography ---------------------------------------------------------------------------------------
# Markets, distances, planning speed, night hours and known routes are the lane facts every service shares
# (services.runtime.lanes): the mission's plan and the tender's offer are one computation.

Point = tuple[float, float]

# --- Input checks shared by the RPCs -----------------------------------------------------------------

REGION = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}-[A-Z]{3}$")
VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
MAX_STOPS = 10


def location_violations(lat: float, lon: float, path: str) -> list[FieldViolation]:
    """A WGS 84 position, not the (0, 0) that an unset message decodes to."""
    problems = []
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        problems.append(FieldViolation(f"{path}.lat", "must be -90 to 90"))
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        problems.append(FieldViolation(f"{path}.lon", "must be -180 to 180"))
    if lat == 0 and lon == 0:
        problems.append(FieldViolation(path, "is required"))
    return problems


def text_violations(value: str, limit: int, path: str, *, required: bool = False) -> list[FieldViolation]:
    if required and not value.strip():
        return [FieldViolation(path, "is required")]
    if len(value) > limit:
        return [FieldViolation(path, f"at most {limit} characters")]
    return []


def window_violations(start: datetime | None, end: datetime | None, path: str, *, required: bool
                      ) -> list[FieldViolation]:
    if start is None and end is None:
        return [FieldViolation(path, "is required")] if required else []
    if start is None or end is None:
        return [FieldViolation(path, "start_time and end_time are both required")]
    if end <= start:
        return [FieldViolation(f"{path}.end_time", "must be after start_time")]
    return []


def raise_if(problems: list[FieldViolation], what: str = "the request has invalid fields") -> None:
    """INVALID_ARGUMENT with every violation, if there are any."""
    if problems:
        raise InvalidArgument(f"{what}: " + "; ".join(f"{p.field} {p.description}" for p in problems[:5]),
                              violations=problems)
