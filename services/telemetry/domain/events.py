"""The derived events, as frozen dataclasses (convert.py turns them into haulmesh.events.v1 payloads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .geometry import METERS_PER_MILE, LatLon
from .inputs import StopType

__all__ = [
    "ConnectivityLost",
    "ConnectivityRestored",
    "EtaUpdated",
    "GeofenceDwell",
    "GeofenceEntered",
    "GeofenceExited",
    "RouteDeviation",
    "SensorFault",
]


@dataclass(frozen=True, slots=True)
class _AtFence:
    """What every geofence event says: whose mission, which stop, where and when (by the frame)."""

    mission_id: str
    vehicle_id: str
    stop_index: int
    stop_type: StopType
    location: LatLon
    device_time: datetime
    frame_sequence: int


@dataclass(frozen=True, slots=True)
class GeofenceEntered(_AtFence):
    """The vehicle entered stop ``stop_index``'s geofence (arrival)."""


@dataclass(frozen=True, slots=True)
class GeofenceExited(_AtFence):
    """The vehicle left stop ``stop_index``'s geofence (departure) after ``dwell`` inside."""

    dwell: timedelta


@dataclass(frozen=True, slots=True)
class GeofenceDwell(_AtFence):
    """The vehicle has been inside the geofence longer than ``threshold`` (reported once per visit)."""

    dwell: timedelta
    threshold: timedelta


@dataclass(frozen=True, slots=True)
class EtaUpdated:
    """A new estimate of the arrival at the next stop not yet reached.

    ``along_route`` is False when the great-circle fallback was used (no route, off the corridor, or the stop
    is not on the route). ``confidence`` in [0, 1] drops with speed variance, frame age and recent gaps.
    """

    mission_id: str
    vehicle_id: str
    stop_index: int
    estimated_arrive_time: datetime
    previous_estimated_arrive_time: datetime | None
    remaining_m: float
    speed_kph: float
    confidence: float
    late: bool
    along_route: bool
    device_time: datetime
    frame_sequence: int

    @property
    def remaining_miles(self) -> float:
        """Remaining distance in statute miles (the proto's unit)."""
        return self.remaining_m / METERS_PER_MILE


@dataclass(frozen=True, slots=True)
class RouteDeviation:
    """The vehicle has been off the route corridor for ``frames`` consecutive position frames."""

    mission_id: str
    vehicle_id: str
    distance_m: float
    corridor_width_m: float
    frames: int
    location: LatLon
    device_time: datetime
    frame_sequence: int


@dataclass(frozen=True, slots=True)
class SensorFault:
    """A perception sensor left "ok" (or returned to it: ``cleared``), or a FAULT frame.

    ``source`` is the sensor ("lidar", "camera", "radar") or "fault_frame"; ``component`` what failed (the
    sensor, or the FAULT frame's own component, e.g. "lidar_front_left"); ``suggested_kind`` is the
    MissionException kind name to raise ("SENSOR_FAULT", or "VEHICLE_FAULT" for a FAULT frame about
    something that is not a perception sensor); ``severity`` is "warning" or "critical".
    """

    mission_id: str
    vehicle_id: str
    source: str
    component: str
    status: str
    code: str
    severity: str
    suggested_kind: str
    cleared: bool
    description: str
    location: LatLon | None
    device_time: datetime
    frame_sequence: int


@dataclass(frozen=True, slots=True)
class ConnectivityLost:
    """Nothing heard from the vehicle within the liveness timeout."""

    vehicle_id: str
    mission_id: str
    last_seen_time: datetime
    last_sequence: int
    last_location: LatLon | None
    detected_time: datetime


@dataclass(frozen=True, slots=True)
class ConnectivityRestored:
    """A vehicle reported lost was heard again; ``outage`` runs from last seen to now."""

    vehicle_id: str
    mission_id: str
    outage: timedelta
    restored_time: datetime
    high_water_sequence: int
    vehicle_last_sequence: int
