"""Geofences (circles and polygons) and the signed distance of a point to their edge. Plain Python.

See geometry.py for the projections and their accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import shapely

from .geometry import LatLon, _aeqd, _Equirect, _wrap_deg

__all__ = ["Circle", "Fence", "Polygon"]


@dataclass(frozen=True, slots=True)
class Circle:
    """A circle geofence: centre and radius in meters."""

    center: LatLon
    radius_m: float


@dataclass(frozen=True, slots=True)
class Polygon:
    """A simple polygon geofence; vertices in order, the first not repeated."""

    vertices: tuple[LatLon, ...]


Fence = Circle | Polygon


class _FenceShape:
    """A geofence ready for signed-distance queries (meters; negative inside)."""

    def __init__(self, fence: Fence) -> None:
        if isinstance(fence, Circle):
            if fence.radius_m <= 0:
                raise ValueError("circle radius must be positive")
            self._center = fence.center
            self._radius = fence.radius_m
            self._origin = shapely.Point(0.0, 0.0)
            self._poly = None
        else:
            if len(fence.vertices) < 3:
                raise ValueError("a polygon needs at least 3 vertices")
            centroid = LatLon(sum(v.lat for v in fence.vertices) / len(fence.vertices),
                              _centroid_lon(fence.vertices))
            self._proj = _Equirect(centroid)
            self._poly = shapely.Polygon([self._proj.xy(v) for v in fence.vertices])
            if not self._poly.is_valid:
                raise ValueError("polygon edges cross")
            self._boundary = self._poly.exterior
            shapely.prepare(self._poly)

    def signed_distance_m(self, p: LatLon) -> float:
        """Distance to the fence edge, negative inside (0 on the edge)."""
        if self._poly is None:
            return shapely.Point(*_aeqd(self._center, p)).distance(self._origin) - self._radius
        pt = shapely.Point(*self._proj.xy(p))
        if self._poly.covers(pt):
            return -self._boundary.distance(pt)
        return self._poly.distance(pt)


def _centroid_lon(vertices: tuple[LatLon, ...]) -> float:
    """Mean longitude, taken relative to the first vertex so a fence across the antimeridian averages right."""
    ref = vertices[0].lon
    return ref + sum(float(_wrap_deg(v.lon - ref)) for v in vertices) / len(vertices)
