"""Geometry of the derived events: points, projections, great-circle distance, routes. Plain Python.

Circles are measured in an azimuthal-equidistant projection centred on the circle: the distance from the
centre is the exact great-circle distance (spherical Earth, mean radius), so ``radius_meters`` is honoured
exactly. Polygons are projected equirectangularly around their vertex centroid: that map is linear in
latitude/longitude, so "edges are straight lines in latitude/longitude" (geofence.proto) holds exactly and
containment is exact; distances to the edge err by about ``tan(lat) * half-extent-in-radians`` (0.005 % for
a 1 km yard at 34 N, 0.5 % for a 50 km area). Route segments are projected around their own midpoint the same
way (error below 0.1 % for the ~100 km segments of an interstate lane). Shapely does the containment,
distances and the location of a point along a line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from services.runtime import EARTH_RADIUS_M, METERS_PER_MILE, great_circle_m

__all__ = ["EARTH_RADIUS_M", "METERS_PER_MILE", "LatLon", "Route"]

#: Mean Earth radius (IUGG), meters: the radius of the runtime's great_circle_m, used by the projections here.


@dataclass(frozen=True, slots=True)
class LatLon:
    """A WGS 84 point in decimal degrees."""

    lat: float
    lon: float


def _wrap_deg(delta: float | np.ndarray) -> float | np.ndarray:
    """A longitude difference brought into [-180, 180), so fences across the antimeridian work."""
    return (delta + 180.0) % 360.0 - 180.0


def _aeqd(center: LatLon, p: LatLon) -> tuple[float, float]:
    """Azimuthal-equidistant projection of ``p`` around ``center`` (distance from the centre is exact)."""
    c = great_circle_m(center.lat, center.lon, p.lat, p.lon) / EARTH_RADIUS_M
    if c == 0.0:
        return 0.0, 0.0
    p0, p1 = math.radians(center.lat), math.radians(p.lat)
    dl = math.radians(_wrap_deg(p.lon - center.lon))
    azimuth = math.atan2(math.sin(dl) * math.cos(p1),
                         math.cos(p0) * math.sin(p1) - math.sin(p0) * math.cos(p1) * math.cos(dl))
    r = c * EARTH_RADIUS_M
    return r * math.sin(azimuth), r * math.cos(azimuth)


class _Equirect:
    """Equirectangular projection around an origin: linear in lat/lon, metric near the origin."""

    __slots__ = ("_kx", "_lat0", "_lon0")

    def __init__(self, origin: LatLon) -> None:
        self._lat0, self._lon0 = origin.lat, origin.lon
        self._kx = EARTH_RADIUS_M * math.radians(1.0) * math.cos(math.radians(origin.lat))

    def xy(self, p: LatLon) -> tuple[float, float]:
        """Meters east and north of the origin."""
        return (self._kx * _wrap_deg(p.lon - self._lon0),
                EARTH_RADIUS_M * math.radians(p.lat - self._lat0))


class Route:
    """A route polyline for corridor checks and distance along the route.

    Each segment is projected around its own midpoint (see the module docstring for the accuracy); the
    per-frame query is vectorised over all segments with shapely.
    """

    def __init__(self, points: tuple[LatLon, ...] | list[LatLon]) -> None:
        pts = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
        if len(pts) < 2:
            raise ValueError("a route needs at least two distinct points")
        a = np.array([(p.lat, p.lon) for p in pts[:-1]])
        b = np.array([(p.lat, p.lon) for p in pts[1:]])
        b[:, 1] = a[:, 1] + _wrap_deg(b[:, 1] - a[:, 1])
        self._lat0 = (a[:, 0] + b[:, 0]) / 2
        self._lon0 = (a[:, 1] + b[:, 1]) / 2
        self._kx = EARTH_RADIUS_M * math.radians(1.0) * np.cos(np.radians(self._lat0))
        self._ky = EARTH_RADIUS_M * math.radians(1.0)
        ax, ay = self._project(a[:, 0], a[:, 1])
        bx, by = self._project(b[:, 0], b[:, 1])
        self._lines = shapely.linestrings(np.stack([np.stack([ax, ay], -1), np.stack([bx, by], -1)], 1))
        lengths = shapely.length(self._lines)
        self._start = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
        self.length_m = float(lengths.sum())

    def _project(self, lat: np.ndarray | float, lon: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        return self._kx * _wrap_deg(lon - self._lon0), self._ky * (lat - self._lat0)

    def locate(self, p: LatLon) -> tuple[float, float]:
        """``(distance from the route, distance along the route from its start)``, meters."""
        x, y = self._project(p.lat, p.lon)
        pts = shapely.points(x, y)
        dist = shapely.distance(self._lines, pts)
        i = int(np.argmin(dist))
        along = float(shapely.line_locate_point(self._lines[i], pts[i]))
        return float(dist[i]), float(self._start[i]) + along
