"""Builders shared by the derived-event tests: frames, fences, the seed lane."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from services.runtime import great_circle_m
from services.telemetry.domain import Circle, Fence, Frame, LatLon, MissionContext, Position, Stop, StopType

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
VEHICLE = "AU-TRK-1001"
MISSION = "m-derived-1"

#: The seed lane Houston -> Atlanta as real interstate waypoints (I-10, I-12, I-59, I-20).
HOUSTON_ATLANTA = (
    LatLon(29.749907, -95.358421),  # Houston, TX (the seed origin)
    LatLon(30.080200, -94.126600),  # Beaumont, TX (I-10)
    LatLon(30.226600, -93.217400),  # Lake Charles, LA
    LatLon(30.224100, -92.019800),  # Lafayette, LA
    LatLon(30.451500, -91.187100),  # Baton Rouge, LA (I-10 / I-12)
    LatLon(30.504400, -90.461200),  # Hammond, LA (I-12 / I-55)
    LatLon(30.275200, -89.781200),  # Slidell, LA (I-12 / I-59)
    LatLon(31.327100, -89.290300),  # Hattiesburg, MS (I-59)
    LatLon(32.364300, -88.703700),  # Meridian, MS (I-59 / I-20)
    LatLon(33.518600, -86.810400),  # Birmingham, AL (I-20 / I-59)
    LatLon(33.659800, -85.831600),  # Anniston, AL (I-20)
    LatLon(33.749000, -84.388000),  # Atlanta, GA (the seed destination)
)


def offset(p: LatLon, north_m: float, east_m: float) -> LatLon:
    """A point ``north_m`` / ``east_m`` meters from ``p`` (small offsets, spherical Earth)."""
    dlat = math.degrees(north_m / 6_371_008.8)
    dlon = math.degrees(east_m / (6_371_008.8 * math.cos(math.radians(p.lat))))
    return LatLon(p.lat + dlat, p.lon + dlon)


def frame(seq: int, at: datetime, where: LatLon | None, speed_kph: float = 80.0, **kw: object) -> Frame:
    """A frame of the test vehicle."""
    position = None if where is None else Position(where.lat, where.lon, speed_kph)
    return Frame(vehicle_id=VEHICLE, sequence=seq, device_time=at, position=position, mission_id=MISSION,
                 **kw)  # type: ignore[arg-type]


def context(fences: list[Fence], route: tuple[LatLon, ...] = (), corridor_width_m: float = 1000.0,
            window_end: datetime | None = None) -> MissionContext:
    """A mission whose stops are the given fences (first a pickup, the rest deliveries)."""
    stops = []
    for i, fence in enumerate(fences):
        center = fence.center if isinstance(fence, Circle) else fence.vertices[0]
        stops.append(Stop(index=i, type=StopType.PICKUP if i == 0 else StopType.DELIVERY, location=center,
                          fence=fence, window_end=window_end))
    return MissionContext(mission_id=MISSION, vehicle_id=VEHICLE, stops=tuple(stops), route=route,
                          corridor_width_m=corridor_width_m)


def every(seconds: float, n: int, start: datetime = T0) -> list[datetime]:
    """``n`` device times ``seconds`` apart."""
    return [start + timedelta(seconds=seconds * i) for i in range(n)]


def distance_m(a: LatLon, b: LatLon) -> float:
    """Great-circle meters between two points (the runtime's one distance)."""
    return great_circle_m(a.lat, a.lon, b.lat, b.lon)
