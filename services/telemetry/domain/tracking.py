"""Derived telemetry events: geofence enter / exit / dwell, ETA with confidence, route deviation,
sensor faults, and liveness. Pure domain: no gRPC, no Redis (generated protobuf messages are used only by
the adapters at the bottom, to read a FramePayload / Mission and to build the event payloads).

Interface (everything the wiring code needs)
--------------------------------------------

Per vehicle on a mission, one :class:`VehicleTracker`::

    context = mission_context_from_pb(mission_pb, route=waypoints, corridor_width_m=1000)  # or MissionContext(...)
    tracker = VehicleTracker(context, DerivedSettings())          # plain state, one per (vehicle, mission)
    events = tracker.update(frame_from_payload(payload_pb), now=server_now)   # -> list of events, in order

``update`` takes one *verified, stored* frame at a time, in sequence order (frames whose sequence is not
above the last one seen are ignored, so a replayed backlog or a duplicate is harmless) and returns the
derived events as frozen dataclasses: :class:`GeofenceEntered`, :class:`GeofenceExited`,
:class:`GeofenceDwell`, :class:`EtaUpdated`, :class:`RouteDeviation`, :class:`SensorFault`. ``now`` (the
server clock) is optional and only lowers the ETA confidence for stale frames. All times are timezone-aware
UTC datetimes, and every decision uses the frame's device time, so replaying a backlog after an outage
derives the same events as live streaming would have.

Liveness is separate, one :class:`Liveness` for all vehicles of a process::

    liveness = Liveness(timeout=timedelta(seconds=3 * heartbeat_interval_s))
    restored = liveness.heard(vehicle_id, at=now, sequence=..., location=..., mission_id=...)  # frame or heartbeat
    lost = liveness.sweep(now)                                     # call periodically -> [ConnectivityLost]

Exactly one ConnectivityLost per outage and exactly one ConnectivityRestored when the vehicle is heard again.

To publish: :func:`to_event_payload` builds the ``haulmesh.events.v1`` telemetry payload and returns
``(event_type, message)`` for the six events that have one; the telemetry service's ``telemetry-actions``
consumer (``actions.py``) turns the published events into mission transitions and exceptions.
docs/derived-events.md has the field-by-field mapping.

Geometry
--------

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
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np
import shapely
from google.protobuf import duration_pb2, timestamp_pb2

from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import location_pb2

__all__ = [
    "METERS_PER_MILE",
    "Alarm",
    "Circle",
    "ConnectivityLost",
    "ConnectivityRestored",
    "DerivedSettings",
    "EtaUpdated",
    "Fence",
    "Frame",
    "GeofenceDwell",
    "GeofenceEntered",
    "GeofenceExited",
    "LatLon",
    "Liveness",
    "MissionContext",
    "Polygon",
    "Position",
    "Route",
    "RouteDeviation",
    "SensorFault",
    "Stop",
    "StopType",
    "VehicleTracker",
    "fault_kind",
    "frame_from_payload",
    "haversine_m",
    "mission_context_from_pb",
    "to_event_payload",
]

#: Mean Earth radius (IUGG), meters.
EARTH_RADIUS_M = 6_371_008.8
METERS_PER_MILE = 1609.344
_SENSORS = ("lidar", "camera", "radar")


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class LatLon:
    """A WGS 84 point in decimal degrees."""

    lat: float
    lon: float


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


@dataclass(frozen=True, slots=True)
class DerivedSettings:
    """Tunables of the derived events (defaults follow the protos and DESIGN.md)."""

    #: A vehicle inside a fence is only considered out once farther than this beyond its edge: GPS jitter
    #: smaller than this at a fence edge cannot flap enter/exit.
    hysteresis_m: float = 30.0
    #: Time inside a fence after which GeofenceDwell is reported once (the rate card's detention free time).
    dwell_threshold: timedelta = timedelta(hours=2)
    #: An ETA is reported when it moved by more than this since the last report (telemetry_events.proto).
    eta_threshold: timedelta = timedelta(minutes=2)
    #: Consecutive position frames off the corridor before a RouteDeviation.
    deviation_frames: int = 3
    #: Time constant of the exponentially weighted speed mean / variance: time-based rather than per frame,
    #: so a 1 Hz stream and a once-a-minute backlog smooth alike, and a long-haul ETA does not swing with
    #: every overtaking manoeuvre.
    speed_time_constant: timedelta = timedelta(minutes=15)
    #: Below this smoothed speed the vehicle is considered stopped and ``cruise_speed_kph`` is assumed.
    min_speed_kph: float = 5.0
    cruise_speed_kph: float = 88.0
    #: Great-circle distance is multiplied by this when the route cannot be used (roads are not straight).
    circuity_factor: float = 1.2
    #: Confidence halves for every this much frame age (server now - device time).
    stale_half_life: timedelta = timedelta(minutes=5)
    #: A silence between consecutive frames longer than this is a connectivity gap ...
    gap_threshold: timedelta = timedelta(seconds=30)
    #: ... which halves the confidence per this much gap ...
    gap_half_life: timedelta = timedelta(minutes=5)
    #: ... and is remembered for this long (device time).
    gap_memory: timedelta = timedelta(minutes=15)


# --------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class GeofenceEntered:
    """The vehicle entered stop ``stop_index``'s geofence (arrival)."""

    mission_id: str
    vehicle_id: str
    stop_index: int
    stop_type: StopType
    location: LatLon
    device_time: datetime
    frame_sequence: int


@dataclass(frozen=True, slots=True)
class GeofenceExited:
    """The vehicle left stop ``stop_index``'s geofence (departure) after ``dwell`` inside."""

    mission_id: str
    vehicle_id: str
    stop_index: int
    stop_type: StopType
    location: LatLon
    device_time: datetime
    frame_sequence: int
    dwell: timedelta


@dataclass(frozen=True, slots=True)
class GeofenceDwell:
    """The vehicle has been inside the geofence longer than ``threshold`` (reported once per visit)."""

    mission_id: str
    vehicle_id: str
    stop_index: int
    stop_type: StopType
    location: LatLon
    device_time: datetime
    frame_sequence: int
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


# ------------------------------------------------------------------------------------------------- geometry


def _wrap_deg(delta: float | np.ndarray) -> float | np.ndarray:
    """A longitude difference brought into [-180, 180), so fences across the antimeridian work."""
    return (delta + 180.0) % 360.0 - 180.0


def haversine_m(a: LatLon, b: LatLon) -> float:
    """Great-circle distance in meters (spherical Earth)."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(_wrap_deg(b.lon - a.lon))
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _aeqd(center: LatLon, p: LatLon) -> tuple[float, float]:
    """Azimuthal-equidistant projection of ``p`` around ``center`` (distance from the centre is exact)."""
    c = haversine_m(center, p) / EARTH_RADIUS_M
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


# -------------------------------------------------------------------------------------------------- tracker


@dataclass(slots=True)
class _FenceState:
    stop: Stop
    shape: _FenceShape
    inside: bool = False
    reached: bool = False
    entered_at: datetime | None = None
    dwell_reported: bool = False


@dataclass(slots=True)
class _EtaState:
    speed_mean: float | None = None
    speed_var: float = 0.0
    speed_time: datetime | None = None
    gaps: deque[tuple[datetime, float]] = field(default_factory=deque)
    last_stop: int | None = None
    last_eta: datetime | None = None


class VehicleTracker:
    """Derives the events of one vehicle on one mission from its frames (see the module docstring)."""

    def __init__(self, context: MissionContext, settings: DerivedSettings | None = None) -> None:
        self.context = context
        self.settings = settings or DerivedSettings()
        self._fences = [self._initial_fence(stop) for stop in context.stops]
        self._route = Route(context.route) if len(context.route) >= 2 else None
        # Where each stop lies along the route; None if the stop is not within the corridor of the route.
        self._stop_along: list[float | None] = []
        for stop in context.stops:
            if self._route is None:
                self._stop_along.append(None)
                continue
            off, along = self._route.locate(stop.location)
            self._stop_along.append(along if off <= max(context.corridor_width_m / 2, 1.0) else None)
        self._last_sequence = 0
        self._last_time: datetime | None = None
        self._off_frames = 0
        self._deviating = False
        self._sensors: dict[str, str] = {}
        self._eta = _EtaState()

    @staticmethod
    def _initial_fence(stop: Stop) -> _FenceState:
        state = _FenceState(stop=stop, shape=_FenceShape(stop.fence))
        if stop.arrive_time is not None:
            state.reached = True
            state.inside = stop.depart_time is None
            state.entered_at = stop.arrive_time if state.inside else None
        return state

    @property
    def next_stop(self) -> int | None:
        """Index of the first stop not reached yet; None once all are."""
        return next((f.stop.index for f in self._fences if not f.reached), None)

    def update(self, frame: Frame, now: datetime | None = None) -> list[object]:
        """Feed one verified frame (in sequence order); return the events it derives, oldest first."""
        if frame.sequence <= self._last_sequence:
            return []  # a duplicate or a replay of something already derived
        self._last_sequence = frame.sequence
        gap = None
        if self._last_time is not None:
            gap = (frame.device_time - self._last_time).total_seconds()
        self._last_time = frame.device_time if self._last_time is None else max(self._last_time, frame.device_time)
        events: list[object] = []
        events.extend(self._sensor_events(frame))
        if frame.position is None:
            return events
        if gap is not None and gap > self.settings.gap_threshold.total_seconds():
            self._eta.gaps.append((frame.device_time, gap))
        events.extend(self._fence_events(frame))
        off_route = None
        if self._route is not None and self.next_stop is not None:
            off_route, along = self._route.locate(frame.position.point)
            events.extend(self._deviation_events(frame, off_route))
        else:
            along = None
        events.extend(self._eta_events(frame, off_route, along, now))
        return events

    # ----------------------------------------------------------------------------------------- geofences

    def _fence_events(self, frame: Frame) -> list[object]:
        assert frame.position is not None
        where, t, seq = frame.position.point, frame.device_time, frame.sequence
        ctx, s = self.context, self.settings
        events: list[object] = []
        for f in self._fences:
            d = f.shape.signed_distance_m(where)
            common = dict(mission_id=ctx.mission_id, vehicle_id=ctx.vehicle_id, stop_index=f.stop.index,
                          stop_type=f.stop.type, location=where, device_time=t, frame_sequence=seq)
            if not f.inside and d <= 0.0:
                f.inside, f.reached, f.entered_at, f.dwell_reported = True, True, t, False
                events.append(GeofenceEntered(**common))
            elif f.inside and d > s.hysteresis_m:
                assert f.entered_at is not None
                f.inside = False
                events.append(GeofenceExited(**common, dwell=max(timedelta(0), t - f.entered_at)))
            elif f.inside and not f.dwell_reported and f.entered_at is not None:
                dwell = t - f.entered_at
                if dwell >= s.dwell_threshold:
                    f.dwell_reported = True
                    events.append(GeofenceDwell(**common, dwell=dwell, threshold=s.dwell_threshold))
        return events

    # ----------------------------------------------------------------------------------- route corridor

    def _deviation_events(self, frame: Frame, off_route: float) -> list[object]:
        assert frame.position is not None
        if off_route <= self.context.corridor_width_m / 2:
            self._off_frames, self._deviating = 0, False
            return []
        self._off_frames += 1
        if self._deviating or self._off_frames < self.settings.deviation_frames:
            return []
        self._deviating = True  # one event per excursion; re-armed when back inside the corridor
        return [RouteDeviation(mission_id=self.context.mission_id, vehicle_id=self.context.vehicle_id,
                               distance_m=off_route, corridor_width_m=self.context.corridor_width_m,
                               frames=self._off_frames, location=frame.position.point,
                               device_time=frame.device_time, frame_sequence=frame.sequence)]

    # ------------------------------------------------------------------------------------------------ ETA

    def _eta_events(self, frame: Frame, off_route: float | None, along: float | None,
                    now: datetime | None) -> list[object]:
        assert frame.position is not None
        s, e = self.settings, self._eta
        speed = max(0.0, frame.position.speed_kph)
        if e.speed_mean is None or e.speed_time is None:
            e.speed_mean = speed
        else:  # exponentially weighted mean and variance (West 1979), O(1) state per vehicle
            dt = max(0.0, (frame.device_time - e.speed_time).total_seconds())
            alpha = 1.0 - math.exp(-dt / s.speed_time_constant.total_seconds())
            diff = speed - e.speed_mean
            e.speed_mean += alpha * diff
            e.speed_var = (1 - alpha) * (e.speed_var + alpha * diff * diff)
        e.speed_time = frame.device_time if e.speed_time is None else max(e.speed_time, frame.device_time)
        target = self.next_stop
        if target is None:
            return []
        stop = self.context.stops[target]
        stop_along = self._stop_along[target]
        on_corridor = off_route is not None and off_route <= self.context.corridor_width_m / 2
        if on_corridor and stop_along is not None and along is not None and stop_along >= along:
            remaining, along_route = stop_along - along, True
        else:
            remaining = haversine_m(frame.position.point, stop.location) * s.circuity_factor
            along_route = False
        confidence = 1.0 if along_route else 0.8
        mean = e.speed_mean
        if mean < s.min_speed_kph:
            mean, confidence = s.cruise_speed_kph, confidence * 0.5
        cv = math.sqrt(e.speed_var) / max(mean, 10.0)
        confidence *= 1.0 / (1.0 + 2.0 * cv)
        if now is not None:
            age = max(0.0, (now - frame.device_time).total_seconds())
            confidence *= 0.5 ** (age / s.stale_half_life.total_seconds())
        while e.gaps and frame.device_time - e.gaps[0][0] > s.gap_memory:
            e.gaps.popleft()
        if e.gaps:
            confidence *= 0.5 ** (max(g for _, g in e.gaps) / s.gap_half_life.total_seconds())
        eta = frame.device_time + timedelta(seconds=remaining / (mean / 3.6))
        if (e.last_stop == target and e.last_eta is not None
                and abs((eta - e.last_eta).total_seconds()) <= s.eta_threshold.total_seconds()):
            return []
        previous = e.last_eta if e.last_stop == target else None
        e.last_stop, e.last_eta = target, eta
        return [EtaUpdated(mission_id=self.context.mission_id, vehicle_id=self.context.vehicle_id,
                           stop_index=target, estimated_arrive_time=eta, previous_estimated_arrive_time=previous,
                           remaining_m=remaining, speed_kph=mean, confidence=round(min(1.0, confidence), 3),
                           late=stop.window_end is not None and eta > stop.window_end, along_route=along_route,
                           device_time=frame.device_time, frame_sequence=frame.sequence)]

    # ---------------------------------------------------------------------------------------- sensors

    def _sensor_events(self, frame: Frame) -> list[object]:
        events: list[object] = []
        where = frame.position.point if frame.position else None
        common = dict(mission_id=self.context.mission_id, vehicle_id=self.context.vehicle_id, location=where,
                      device_time=frame.device_time, frame_sequence=frame.sequence)
        for sensor in _SENSORS:
            status = frame.sensors.get(sensor, "")
            if not status:
                continue  # not reported: keep the last known status
            previous = self._sensors.get(sensor, "ok")
            self._sensors[sensor] = status
            if status == previous:
                continue  # only transitions, so a sensor degraded for an hour raises one exception
            cleared = status == "ok"
            events.append(SensorFault(
                **common, source=sensor, component=sensor, status=status, code=f"{sensor.upper()}_{status.upper()}",
                severity="warning" if status == "degraded" or cleared else "critical",
                suggested_kind="SENSOR_FAULT", cleared=cleared,
                description=f"{sensor} status {previous} -> {status}"))
        if frame.kind == "fault" and frame.alarm is not None:
            a = frame.alarm
            kind = fault_kind(a.code, a.component)
            events.append(SensorFault(
                **common, source="fault_frame", component=a.component, status="cleared" if a.cleared else "raised",
                code=a.code,
                severity=a.severity if a.severity in ("warning", "critical") else "warning",
                suggested_kind=kind, cleared=a.cleared, description=a.description or a.code))
        return events


def fault_kind(code: str, component: str) -> str:
    """The MissionException kind name for a fault: SENSOR_FAULT when the code or component names a perception
    sensor, else VEHICLE_FAULT (a brake or power fault is not a sensor fault)."""
    text = f"{code} {component}".lower()
    return "SENSOR_FAULT" if any(k in text for k in (*_SENSORS, "sensor", "perception")) else "VEHICLE_FAULT"


# ------------------------------------------------------------------------------------------------- liveness


@dataclass(slots=True)
class _Seen:
    last_seen: datetime
    last_sequence: int
    last_location: LatLon | None
    mission_id: str
    lost: bool = False


class Liveness:
    """Connectivity of many vehicles from the times they were last heard from (frames or heartbeats).

    ``sweep(now)`` reports each vehicle silent for longer than ``timeout`` once; ``heard`` reports the
    vehicle restored once when it comes back. No duplicates, whatever the call pattern.
    """

    def __init__(self, timeout: timedelta) -> None:
        if timeout <= timedelta(0):
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._seen: dict[str, _Seen] = {}

    def heard(self, vehicle_id: str, at: datetime, *, sequence: int = 0, location: LatLon | None = None,
              mission_id: str = "", vehicle_last_sequence: int | None = None) -> ConnectivityRestored | None:
        """Something arrived from the vehicle at ``at`` (server time); the restoration if it was lost."""
        seen = self._seen.get(vehicle_id)
        if seen is None:
            self._seen[vehicle_id] = _Seen(at, sequence, location, mission_id)
            return None
        restored = None
        if seen.lost:
            high_water = max(seen.last_sequence, sequence)
            restored = ConnectivityRestored(
                vehicle_id=vehicle_id, mission_id=mission_id or seen.mission_id,
                outage=max(timedelta(0), at - seen.last_seen), restored_time=at,
                high_water_sequence=high_water,
                vehicle_last_sequence=vehicle_last_sequence if vehicle_last_sequence is not None else high_water)
        seen.last_seen = max(seen.last_seen, at)
        seen.last_sequence = max(seen.last_sequence, sequence)
        seen.last_location = location or seen.last_location
        seen.mission_id = mission_id or seen.mission_id
        seen.lost = False
        return restored

    def sweep(self, now: datetime) -> list[ConnectivityLost]:
        """Vehicles newly silent for longer than the timeout (each reported once per outage)."""
        lost = []
        for vehicle_id, seen in self._seen.items():
            if not seen.lost and now - seen.last_seen > self.timeout:
                seen.lost = True
                lost.append(ConnectivityLost(vehicle_id=vehicle_id, mission_id=seen.mission_id,
                                             last_seen_time=seen.last_seen, last_sequence=seen.last_sequence,
                                             last_location=seen.last_location, detected_time=now))
        return lost

    def forget(self, vehicle_id: str) -> None:
        """Stop watching a vehicle (deregistered, or its mission ended and it is parked)."""
        self._seen.pop(vehicle_id, None)

    def report_again(self, vehicle_id: str) -> None:
        """The loss reported by ``sweep`` could not be announced: report it again at the next sweep."""
        seen = self._seen.get(vehicle_id)
        if seen is not None:
            seen.lost = False

    def watches(self, vehicle_id: str) -> bool:
        """Whether the vehicle was heard here and not forgotten since."""
        return vehicle_id in self._seen


# ------------------------------------------------------------------------------- protobuf adapters (edges)

_KINDS = {frame_pb2.FramePayload.KIND_POSITION: "position", frame_pb2.FramePayload.KIND_HEALTH: "health",
          frame_pb2.FramePayload.KIND_ALARM: "alarm", frame_pb2.FramePayload.KIND_FAULT: "fault",
          frame_pb2.FramePayload.KIND_EVENT: "event"}
_SEVERITIES = {frame_pb2.Alarm.SEVERITY_INFO: "info", frame_pb2.Alarm.SEVERITY_CRITICAL: "critical"}
_STOP_TYPES = {mission_pb2.Stop.TYPE_PICKUP: StopType.PICKUP, mission_pb2.Stop.TYPE_DELIVERY: StopType.DELIVERY}
_STOP_TYPES_PB = {v: k for k, v in _STOP_TYPES.items()}


def _dt(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def frame_from_payload(payload: frame_pb2.FramePayload) -> Frame:
    """The tracker's view of a decoded (already verified) FramePayload."""
    position = None
    if payload.HasField("position"):
        p = payload.position
        position = Position(p.lat, p.lon, p.speed_kph, p.heading_deg, p.accuracy_meters)
    sensors = {k: v for k, v in (("lidar", payload.sensors.lidar_status), ("camera", payload.sensors.camera_health),
                                 ("radar", payload.sensors.radar_status)) if v}
    alarm = None
    if payload.HasField("alarm"):
        a = payload.alarm
        alarm = Alarm(a.code, _SEVERITIES.get(a.severity, "warning"), a.component, a.description, a.cleared)
    return Frame(vehicle_id=payload.vehicle_id, sequence=payload.sequence, device_time=_dt(payload.device_time),
                 kind=_KINDS.get(payload.kind, "position"), position=position, sensors=sensors, alarm=alarm,
                 mission_id=payload.mission_id)


def _fence_from_pb(stop: mission_pb2.Stop) -> Fence:
    shape = stop.geofence.WhichOneof("shape")
    if shape == "polygon":
        return Polygon(tuple(LatLon(v.lat, v.lon) for v in stop.geofence.polygon.vertices))
    if shape == "circle":
        c = stop.geofence.circle
        return Circle(LatLon(c.center.lat, c.center.lon), c.radius_meters)
    return Circle(LatLon(stop.location.lat, stop.location.lon), 500.0)  # the mission service's default


def mission_context_from_pb(mission: mission_pb2.Mission, *, route: list[LatLon] | tuple[LatLon, ...] = (),
                            corridor_width_m: float = 1000.0) -> MissionContext:
    """The tracker's view of a Mission (stops, fences, windows, recorded arrivals/departures)."""
    stops = []
    for i, s in enumerate(mission.stops):
        stops.append(Stop(
            index=i, type=_STOP_TYPES.get(s.type, StopType.DELIVERY), location=LatLon(s.location.lat, s.location.lon),
            fence=_fence_from_pb(s),
            window_end=_dt(s.planned_window.end_time) if s.planned_window.HasField("end_time") else None,
            arrive_time=_dt(s.arrive_time) if s.HasField("arrive_time") else None,
            depart_time=_dt(s.depart_time) if s.HasField("depart_time") else None))
    return MissionContext(mission_id=mission.name.removeprefix("missions/"),
                          vehicle_id=mission.vehicle.removeprefix("vehicles/"), stops=tuple(stops),
                          route=tuple(route), corridor_width_m=corridor_width_m)


def _ts(t: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def _dur(d: timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(d)
    return out


def _loc(p: LatLon | None) -> location_pb2.Location | None:
    return None if p is None else location_pb2.Location(lat=p.lat, lon=p.lon)


def _names(event: object) -> tuple[str, str]:
    mission, vehicle = getattr(event, "mission_id", ""), getattr(event, "vehicle_id", "")
    return (f"missions/{mission}" if mission else ""), f"vehicles/{vehicle}"


def to_event_payload(event: object) -> tuple[str, object]:
    """``(event_type, haulmesh.events.v1 payload)`` of a derived event.

    A SensorFault becomes ``fault_reported`` (its component is the sensor, or the FAULT frame's own
    component), a RouteDeviation ``route_deviated``; the mission exceptions they call for are raised by the
    consumer of those events (``actions.py``).
    """
    mission, vehicle = _names(event)
    prefix = "haulmesh.telemetry.v1."
    if isinstance(event, GeofenceEntered | GeofenceExited | GeofenceDwell):
        ctx = tev.GeofenceContext(mission=mission, vehicle=vehicle, stop_index=event.stop_index,
                                  stop_type=_STOP_TYPES_PB[event.stop_type], location=_loc(event.location),
                                  device_time=_ts(event.device_time), frame_sequence=event.frame_sequence)
        if isinstance(event, GeofenceEntered):
            return prefix + "geofence_entered", tev.GeofenceEntered(context=ctx)
        if isinstance(event, GeofenceExited):
            return prefix + "geofence_exited", tev.GeofenceExited(context=ctx, dwell=_dur(event.dwell))
        return prefix + "geofence_dwell", tev.GeofenceDwell(context=ctx, dwell=_dur(event.dwell),
                                                            threshold=_dur(event.threshold))
    if isinstance(event, EtaUpdated):
        msg = tev.EtaUpdated(mission=mission, vehicle=vehicle, stop_index=event.stop_index,
                             estimated_arrive_time=_ts(event.estimated_arrive_time),
                             remaining_miles=event.remaining_miles, late=event.late,
                             frame_sequence=event.frame_sequence, confidence=event.confidence)
        if event.previous_estimated_arrive_time is not None:
            msg.previous_estimated_arrive_time.CopyFrom(_ts(event.previous_estimated_arrive_time))
        return prefix + "eta_updated", msg
    if isinstance(event, ConnectivityLost):
        return prefix + "connectivity_lost", tev.ConnectivityLost(
            vehicle=vehicle, mission=mission, last_seen_time=_ts(event.last_seen_time),
            last_sequence=event.last_sequence, last_location=_loc(event.last_location))
    if isinstance(event, ConnectivityRestored):
        return prefix + "connectivity_restored", tev.ConnectivityRestored(
            vehicle=vehicle, mission=mission, outage=_dur(event.outage),
            high_water_sequence=event.high_water_sequence, vehicle_last_sequence=event.vehicle_last_sequence)
    if isinstance(event, RouteDeviation):
        return prefix + "route_deviated", tev.RouteDeviated(
            vehicle=vehicle, mission=mission, distance_meters=event.distance_m,
            corridor_width_meters=event.corridor_width_m, frames=event.frames, location=_loc(event.location),
            device_time=_ts(event.device_time), frame_sequence=event.frame_sequence)
    if isinstance(event, SensorFault):
        # A sensor's status change is announced like a FAULT frame, with the sensor as the component, so one
        # event type carries every fault the mission service may turn into an exception.
        critical = event.severity == "critical"
        severity = frame_pb2.Alarm.SEVERITY_CRITICAL if critical else frame_pb2.Alarm.SEVERITY_WARNING
        return prefix + "fault_reported", tev.FaultReported(
            vehicle=vehicle, mission=mission, frame_sequence=event.frame_sequence, device_time=_ts(event.device_time),
            kind=frame_pb2.FramePayload.KIND_FAULT, location=_loc(event.location),
            alarm=frame_pb2.Alarm(code=event.code, severity=severity, description=event.description[:1000],
                                  component=event.component,
                                  cleared=event.cleared))
    raise TypeError(f"{type(event).__name__} has no telemetry event payload")
