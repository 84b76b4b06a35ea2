"""Mission and vehicle rules. Plain Python: no gRPC, no Redis.

Dispatch, the mission state machine, exceptions, check-ins and proof of delivery grow here (issue 3).
"""

from __future__ import annotations

import re

from services.runtime import parse_name

__all__ = ["VEHICLE_ID", "parse_mission_name", "parse_vehicle_name"]

#: Vehicle ids are the fleet's own unit numbers, e.g. AU-TRK-1001 (the same as in its certificate).
VEHICLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def parse_vehicle_name(name: str, *, field: str = "name") -> str:
    return parse_name(name, "vehicles", field=field, id_pattern=VEHICLE_ID)


def parse_mission_name(name: str, *, field: str = "name") -> str:
    return parse_name(name, "missions", field=field)
