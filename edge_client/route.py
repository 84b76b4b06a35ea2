"""The seed's lane, Houston → Atlanta, as a polyline, and the spherical geometry to drive along any route.

Plain Python (no geometry library on the truck for a dozen great-circle segments): distances by haversine,
headings by initial bearing, positions by linear interpolation in latitude/longitude within a segment
(segments are tens of miles long; the error is far below a GNSS fix's at this scale). A route with longer
segments (a plan straight between two stops) is densified along the great circle first (``Route.densified``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

__all__ = ["HOUSTON_TO_ATLANTA", "Route", "bearing_deg", "haversine_m"]

EARTH_RADIUS_M = 6_371_008.8

#: I-10 east to Baton Rouge, I-12 to Slidell, I-59 north-east to Birmingham, I-20 east to Atlanta.
HOUSTON_TO_ATLANTA: tuple[tuple[str, float, float], ...] = (
    ("Houston, TX", 29.7604, -95.3698),
    ("Baytown, TX", 29.7883, -94.9774),
    ("Beaumont, TX", 30.0802, -94.1266),
    ("Lake Charles, LA", 30.2266, -93.2174),
    ("Lafayette, LA", 30.2241, -92.0198),
    ("Baton Rouge, LA", 30.4515, -91.1871),
    ("Hammond, LA", 30.5044, -90.4612),
    ("Slidell, LA", 30.2752, -89.7812),
    ("Hattiesburg, MS", 31.3271, -89.2903),
    ("Meridian, MS", 32.3643, -88.7037),
    ("Tuscaloosa, AL", 33.2098, -87.5692),
    ("Birmingham, AL", 33.5186, -86.8104),
    ("Anniston, AL", 33.6598, -85.8316),
    ("Atlanta, GA", 33.7490, -84.3880),
)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in meters."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial course from point 1 to point 2, degrees clockwise from true north, in [0, 360)."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    heading = math.degrees(math.atan2(x, y)) % 360.0
    return 0.0 if heading >= 360.0 else heading  # -1e-15 % 360.0 rounds to 360.0, which the server refuses


@dataclass(frozen=True)
class Point:
    """A position on the route and the course there."""

    lat: float
    lon: float
    heading_deg: float


class Route:
    """A polyline of (lat, lon) waypoints, addressable by distance from its start."""

    def __init__(self, waypoints: list[tuple[float, float]]) -> None:
        if len(waypoints) < 2:
            raise ValueError("a route needs at least two waypoints")
        self.waypoints = list(waypoints)
        self._cumulative = [0.0]
        for (a_lat, a_lon), (b_lat, b_lon) in zip(self.waypoints, self.waypoints[1:], strict=False):
            self._cumulative.append(self._cumulative[-1] + haversine_m(a_lat, a_lon, b_lat, b_lon))

    @classmethod
    def houston_to_atlanta(cls) -> Route:
        """The seed's lane."""
        return cls([(lat, lon) for _, lat, lon in HOUSTON_TO_ATLANTA])

    @property
    def length_m(self) -> float:
        """Total length in meters."""
        return self._cumulative[-1]

    def at(self, distance_m: float) -> Point:
        """The point ``distance_m`` along the route (clamped to its ends)."""
        distance_m = max(0.0, min(distance_m, self.length_m))
        i = min(bisect.bisect_right(self._cumulative, distance_m) - 1, len(self.waypoints) - 2)
        (a_lat, a_lon), (b_lat, b_lon) = self.waypoints[i], self.waypoints[i + 1]
        span = self._cumulative[i + 1] - self._cumulative[i]
        t = 0.0 if span == 0 else (distance_m - self._cumulative[i]) / span
        return Point(a_lat + (b_lat - a_lat) * t, a_lon + (b_lon - a_lon) * t, bearing_deg(a_lat, a_lon, b_lat, b_lon))

    def densified(self, max_segment_m: float) -> Route:
        """The same route with points added along the great circle of every segment longer than ``max_segment_m``
        (a planned route straight between two stops hundreds of miles apart): positions between them then stay on
        the great circle and headings follow it, as on a route of short segments."""
        if max_segment_m <= 0:
            raise ValueError("max_segment_m must be positive")
        points = [self.waypoints[0]]
        for i, (a, b) in enumerate(zip(self.waypoints, self.waypoints[1:], strict=False)):
            pieces = math.ceil((self._cumulative[i + 1] - self._cumulative[i]) / max_segment_m)
            points += [_along_great_circle(a, b, k / pieces) for k in range(1, pieces)]
            points.append(b)
        return Route(points)

    def rest_from(self, distance_m: float, via: list[tuple[float, float]]) -> Route:
        """A new route from the point ``distance_m`` along this one through ``via`` (a reroute)."""
        here = self.at(distance_m)
        return Route([(here.lat, here.lon), *via])


def _along_great_circle(a: tuple[float, float], b: tuple[float, float], fraction: float) -> tuple[float, float]:
    """The point ``fraction`` of the way from ``a`` to ``b`` on their great circle (slerp of unit vectors)."""
    (lat1, lon1), (lat2, lon2) = (tuple(map(math.radians, p)) for p in (a, b))
    va = (math.cos(lat1) * math.cos(lon1), math.cos(lat1) * math.sin(lon1), math.sin(lat1))
    vb = (math.cos(lat2) * math.cos(lon2), math.cos(lat2) * math.sin(lon2), math.sin(lat2))
    angle = math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(va, vb, strict=True)))))
    if angle < 1e-12:
        return a
    wa, wb = math.sin((1 - fraction) * angle) / math.sin(angle), math.sin(fraction * angle) / math.sin(angle)
    x, y, z = (wa * p + wb * q for p, q in zip(va, vb, strict=True))
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))
