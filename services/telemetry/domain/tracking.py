"""Derived telemetry events of one vehicle on one mission: geofence enter / exit / dwell, ETA with confidence,
route deviation and sensor faults. Plain Python: no gRPC, no Redis, no I/O.

Per vehicle on a mission, one :class:`VehicleTracker`::

    context = mission_context_from_pb(mission_pb, route=waypoints, corridor_width_m=1000)  # or MissionContext(...)
    tracker = VehicleTracker(context, DerivedSettings())          # plain state, one per (vehicle, mission)
    events = tracker.update(frame_from_payload(payload_pb), now=server_now)   # -> list of events, in order

(``mission_context_from_pb`` and ``frame_from_payload`` are in convert.py.) ``update`` takes one *verified,
stored* frame at a time, in sequence order (frames whose sequence is not above the last one seen are ignored,
so a replayed backlog or a duplicate is harmless) and returns the derived events as frozen dataclasses
(events.py): :class:`GeofenceEntered`, :class:`GeofenceExited`, :class:`GeofenceDwell`, :class:`EtaUpdated`,
:class:`RouteDeviation`, :class:`SensorFault`. ``now`` (the server clock) is optional and only lowers the ETA
confidence for stale frames. All times are timezone-aware UTC datetimes, and every decision uses the frame's
device time, so replaying a backlog after an outage derives the same events as live streaming would have.

Liveness is separate (liveness.py). To publish: convert.to_event_payload builds the ``haulmesh.events.v1``
telemetry payload; the ``telemetry-actions`` consumer (usecases/missions.py, started in workers.py) turns the
published events into mission transitions and exceptions. docs/derived-events.md has the field-by-field
mapping.

Lane facts used here (planning speed and road circuity for the great-circle ETA fallback) are
``DerivedSettings.cruise_speed_kph`` and ``DerivedSettings.circuity_factor``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.runtime import METERS_PER_MILE, great_circle_m
from services.runtime.lanes import LaneFacts

from .events import EtaUpdated, GeofenceDwell, GeofenceEntered, GeofenceExited, RouteDeviation, SensorFault
from .geofence import _FenceShape
from .geometry import Route
from .inputs import Frame, MissionContext, Stop

__all__ = ["DerivedSettings", "VehicleTracker", "fault_kind"]

_SENSORS = ("lidar", "camera", "radar")


@dataclass(frozen=True, slots=True)
class DerivedSettings:
    """Tunables of the derived events (defaults follow the protos and the design brief)."""

    #: A vehicle inside a fence is only considered out once farther than this beyond its edge: GPS jitter
    #: smaller than this at a fence edge cannot flap enter/exit.
    hysteresis_m: float = 30.0
    #: Time inside a fence after which GeofenceDwell is reported once (the rate card's detention free time).
    dwell_threshold: timedelta = timedelta(hours=2)
    #: An ETA is reported when it moved by more than this since the last report (telemetry_events.proto).
    eta_threshold: timedelta = timedelta(minutes=2)
    #: ... or when this much device time passed since the last report, however little it moved: a steady ETA
    #: is news too (a TMS's ETA cadence policy needs updates to choose from; webhooks/domain.py's EtaPolicy).
    eta_refresh: timedelta = timedelta(minutes=15)
    #: Consecutive position frames off the corridor before a RouteDeviation.
    deviation_frames: int = 3
    #: Time constant of the exponentially weighted speed mean / variance: time-based rather than per frame,
    #: so a 1 Hz stream and a once-a-minute backlog smooth alike, and a long-haul ETA does not swing with
    #: every overtaking manoeuvre.
    speed_time_constant: timedelta = timedelta(minutes=15)
    #: Below this smoothed speed the vehicle is considered stopped and ``cruise_speed_kph`` is assumed.
    min_speed_kph: float = 5.0
    #: The lane facts' planning speed (the running service passes its HAULMESH_LANES_FILE's: for_lanes).
    cruise_speed_kph: float = LaneFacts.planning_speed_mph * METERS_PER_MILE / 1000
    #: Great-circle distance is multiplied by this when the route cannot be used (roads are not straight): the
    #: lane facts' circuity, as quotes and plans use it.
    circuity_factor: float = LaneFacts.circuity_factor
    #: Confidence halves for every this much frame age (server now - device time).
    stale_half_life: timedelta = timedelta(minutes=5)
    #: A silence between consecutive frames longer than this is a connectivity gap ...
    gap_threshold: timedelta = timedelta(seconds=30)
    #: ... which halves the confidence per this much gap ...
    gap_half_life: timedelta = timedelta(minutes=5)
    #: ... and is remembered for this long (device time).
    gap_memory: timedelta = timedelta(minutes=15)

    @classmethod
    def for_lanes(cls, lanes: LaneFacts) -> DerivedSettings:
        """The settings for the fleet's lane facts (planning speed, circuity)."""
        return cls(cruise_speed_kph=lanes.planning_speed_kph, circuity_factor=lanes.circuity_factor)


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
    last_time: datetime | None = None


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
            position, to = frame.position, stop.location
            remaining = great_circle_m(position.lat, position.lon, to.lat, to.lon) * s.circuity_factor
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
                and abs((eta - e.last_eta).total_seconds()) <= s.eta_threshold.total_seconds()
                and (e.last_time is None or frame.device_time - e.last_time < s.eta_refresh)):
            return []
        previous = e.last_eta if e.last_stop == target else None
        e.last_stop, e.last_eta, e.last_time = target, eta, frame.device_time
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
