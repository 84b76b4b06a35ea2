"""Great-circle distance, once: quotes, plans, tracking and the simulator measure the Earth the same way."""

from __future__ import annotations

import math

__all__ = ["EARTH_RADIUS_M", "METERS_PER_MILE", "great_circle_m", "great_circle_miles"]

#: Mean Earth radius (IUGG), meters: a spherical Earth is within 0.5 % of the ellipsoid, far below the
#: difference between a great circle and the road.
EARTH_RADIUS_M = 6_371_008.8
METERS_PER_MILE = 1609.344


def great_circle_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in meters between two points in degrees (antimeridian-safe)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians((lon2 - lon1 + 180.0) % 360.0 - 180.0)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def great_circle_miles(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in statute miles."""
    return great_circle_m(lat1, lon1, lat2, lon2) / METERS_PER_MILE
