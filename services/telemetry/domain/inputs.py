"""What the tracker reads: a frame as it needs it, and the mission (stops, fences, route). Plain Python.

convert.py builds these from a FramePayload and a Mission.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from .geofence import Fence
from .geometry import LatLon

__all__ = ["Alarm", "Frame", "MissionContext", "Position", "Stop", "StopType"]


@dataclass(frozen=True, slots=True)
class Position:
    """A position fix of a frame (FramePayload.position)."""

    lat: float
    lon: float
    speed_kph: float = 0.0
    heading_deg: float = 0.0
    accuracy_m: float = 0.0

    @property
    def point(self) -> LatLon:
        """The fix as a plain point."""
        return LatLon(self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class Alarm:
    """The alarm/fault of a KIND_ALARM / KIND_FAULT frame. ``severity`` is "info", "warning" or "critical"."""

    code: str
    severity: str = "warning"
    component: str = ""
    description: str = ""
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class Frame:
    """One verified frame payload, as the tracker needs it.

    ``kind`` is "position", "health", "alarm", "fault" or "event"; ``sensors`` maps "lidar" / "camera" /
    "radar" to the reported status ("ok", "degraded", "fault", "offline"; missing = not reported).
    """

    vehicle_id: str
    sequence: int
    device_time: datetime
    kind: str = "position"
    position: Position | None = None
    sensors: dict[str, str] = field(default_factory=dict)
    alarm: Alarm | None = None
    mission_id: str = ""


class StopType(StrEnum):
    """What happens at a stop (mission.v1.Stop.Type)."""

    PICKUP = "pickup"
    DELIVERY = "delivery"


@dataclass(frozen=True, slots=True)
class Stop:
    """A mission stop as the tracker sees it.

    ``arrive_time`` / ``depart_time`` are what the mission already recorded, so a tracker rebuilt after a
    restart does not announce an arrival or departure again.
    """

    index: int
    type: StopType
    location: LatLon
    fence: Fence
    window_end: datetime | None = None
    arrive_time: datetime | None = None
    depart_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class MissionContext:
    """What the tracker needs to know about the mission.

    ``route`` is the planned polyline (origin to destination, at least two points) or empty; the vehicle is
    off the corridor when it is more than ``corridor_width_m / 2`` from the route.
    """

    mission_id: str
    vehicle_id: str
    stops: tuple[Stop, ...]
    route: tuple[LatLon, ...] = ()
    corridor_width_m: float = 1000.0
