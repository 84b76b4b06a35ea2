"""A truck driven along the seed's Houston -> Atlanta lane (real interstate waypoints) at 100 km/h, one fix a
minute with GPS noise: it leaves the origin geofence, takes a 3 km detour off the route corridor, enters the
destination geofence and waits there past the dwell threshold."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from datetime import timedelta

import pytest

from services.telemetry.convert import to_event_payload
from services.telemetry.domain import (
    METERS_PER_MILE,
    Circle,
    DerivedSettings,
    EtaUpdated,
    GeofenceDwell,
    GeofenceEntered,
    GeofenceExited,
    LatLon,
    RouteDeviation,
    VehicleTracker,
)

from .helpers import HOUSTON_ATLANTA, T0, context, distance_m, frame, offset

SPEED_KPH = 100.0
STEP = timedelta(minutes=1)


def lane_fixes() -> list[LatLon]:
    """Points every ~1.67 km (one minute at 100 km/h) along the lane, straight in lat/lon per segment."""
    fixes = []
    step_m = SPEED_KPH / 3.6 * STEP.total_seconds()
    for a, b in itertools.pairwise(HOUSTON_ATLANTA):
        n = max(1, math.ceil(distance_m(a, b) / step_m))
        fixes += [LatLon(a.lat + (b.lat - a.lat) * k / n, a.lon + (b.lon - a.lon) * k / n) for k in range(n)]
    return [*fixes, HOUSTON_ATLANTA[-1]]


def test_houston_to_atlanta() -> None:
    rng = random.Random(4)
    origin, destination = HOUSTON_ATLANTA[0], HOUSTON_ATLANTA[-1]
    ctx = context([Circle(origin, 500), Circle(destination, 800)], route=HOUSTON_ATLANTA, corridor_width_m=1000)
    tracker = VehicleTracker(ctx, DerivedSettings(dwell_threshold=timedelta(hours=2), deviation_frames=3))

    path = lane_fixes()
    detour = range(len(path) * 2 // 5, len(path) * 2 // 5 + 15)  # 15 minutes, 3 km north of the lane
    path = [offset(p, 3000, 0) if i in detour else p for i, p in enumerate(path)]
    path += [destination] * 180  # three hours at the dock
    events: list[object] = []
    arrival_time = None
    for i, p in enumerate(path):
        noisy = offset(p, rng.gauss(0, 8), rng.gauss(0, 8))  # GPS noise, well under the 30 m hysteresis
        at = T0 + STEP * i
        if arrival_time is None and distance_m(p, destination) <= 800:
            arrival_time = at
        speed = 0.0 if i >= len(path) - 180 else SPEED_KPH + rng.gauss(0, 3)
        events += tracker.update(frame(i + 1, at, noisy, speed_kph=speed), now=at + timedelta(seconds=2))
    counts = Counter(type(e).__name__ for e in events)
    print(f"scenario: {len(path)} frames, events {dict(counts)}")

    fences = [(type(e).__name__, e.stop_index) for e in events  # type: ignore[attr-defined]
              if isinstance(e, GeofenceEntered | GeofenceExited | GeofenceDwell)]
    assert fences == [("GeofenceEntered", 0), ("GeofenceExited", 0), ("GeofenceEntered", 1), ("GeofenceDwell", 1)]
    entered = next(e for e in events if isinstance(e, GeofenceEntered) and e.stop_index == 1)
    assert entered.device_time == arrival_time

    deviations = [e for e in events if isinstance(e, RouteDeviation)]
    assert len(deviations) == 1
    assert deviations[0].frame_sequence == detour.start + 3 and deviations[0].distance_m == pytest.approx(3000, rel=0.1)
    kind, deviated = to_event_payload(deviations[0])
    assert kind == "haulmesh.telemetry.v1.route_deviated" and deviated.frame_sequence == detour.start + 3

    etas = [e for e in events if isinstance(e, EtaUpdated)]
    assert all(e.stop_index == 1 for e in etas) and all(e.frame_sequence < entered.frame_sequence for e in etas)
    first = etas[0]
    assert first.remaining_miles == pytest.approx(HOUSTON_ATLANTA_MILES, rel=0.02)
    # Back on the lane after the detour the estimates are accurate to within minutes.
    after = [e for e in etas if e.frame_sequence > detour.stop + 5 and e.along_route]
    assert after and all(abs(e.estimated_arrive_time - arrival_time) < timedelta(minutes=10) for e in after)
    assert all(0 < e.confidence <= 1 for e in etas) and all(e.remaining_m >= 0 for e in etas)
    assert all(to_event_payload(e)[0].startswith("haulmesh.telemetry.v1.") for e in events
               if not isinstance(e, RouteDeviation))


#: The lane by interstate through the waypoints, ~790 statute miles (the tender's estimate is 792).
HOUSTON_ATLANTA_MILES = sum(distance_m(a, b) for a, b in itertools.pairwise(HOUSTON_ATLANTA)) / METERS_PER_MILE
