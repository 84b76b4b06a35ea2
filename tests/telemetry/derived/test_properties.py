"""Property tests (hypothesis): no geofence flapping under jitter smaller than the hysteresis, enter always
before exit, ETA non-negative and steady when driving straight at the stop at constant speed, and exactly
one lost / one restored per liveness outage."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.telemetry.domain import (
    Circle,
    DerivedSettings,
    EtaUpdated,
    GeofenceDwell,
    GeofenceEntered,
    GeofenceExited,
    LatLon,
    Liveness,
    Polygon,
    VehicleTracker,
)

from .helpers import T0, context, frame, offset

centers = st.builds(LatLon, st.floats(-60, 60), st.floats(-179, 179))


def fence_events(events: list[object]) -> list[object]:
    return [e for e in events if isinstance(e, GeofenceEntered | GeofenceExited | GeofenceDwell)]


@settings(max_examples=150, deadline=None)
@given(center=centers, radius=st.floats(25, 5000), hysteresis=st.floats(10, 100), polygon=st.booleans(),
       true_distance=st.floats(-1.5, 1.5), bearing=st.floats(0, 2 * math.pi),
       jitter=st.lists(st.tuples(st.floats(0, 0.499), st.floats(0, 2 * math.pi)), min_size=2, max_size=60))
def test_jitter_smaller_than_hysteresis_never_flaps(center: LatLon, radius: float, hysteresis: float,
                                                    polygon: bool, true_distance: float, bearing: float,
                                                    jitter: list[tuple[float, float]]) -> None:
    """A truck parked anywhere near the edge, its fixes scattered less than hysteresis/2 around its true
    position: at most one transition."""
    if polygon:  # a square of side 2 * radius centred on ``center``
        h = radius
        fence = Polygon((offset(center, -h, -h), offset(center, -h, h), offset(center, h, h), offset(center, h, -h)))
    else:
        fence = Circle(center, radius)
    tracker = VehicleTracker(context([fence]), DerivedSettings(hysteresis_m=hysteresis))
    d = radius + true_distance * hysteresis
    truth = offset(center, d * math.cos(bearing), d * math.sin(bearing))
    events: list[object] = []
    for i, (r, a) in enumerate(jitter, 1):
        fix = offset(truth, r * hysteresis * math.cos(a), r * hysteresis * math.sin(a))
        events += fence_events(tracker.update(frame(i, T0 + timedelta(seconds=i), fix, speed_kph=0)))
    transitions = [e for e in events if isinstance(e, GeofenceEntered | GeofenceExited)]
    assert len(transitions) <= 1, transitions


@settings(max_examples=150, deadline=None)
@given(radius=st.floats(25, 2000), distances=st.lists(st.floats(0, 3), min_size=1, max_size=80),
       step=st.integers(1, 3600), dwell_s=st.integers(1, 7200), hysteresis=st.floats(0, 100))
def test_enter_before_exit_and_one_dwell_per_visit(radius: float, distances: list[float], step: int,
                                                   dwell_s: int, hysteresis: float) -> None:
    center = LatLon(33.749, -84.388)
    tracker = VehicleTracker(context([Circle(center, radius)]),
                             DerivedSettings(hysteresis_m=hysteresis, dwell_threshold=timedelta(seconds=dwell_s)))
    events: list[object] = []
    for i, k in enumerate(distances, 1):
        events += fence_events(tracker.update(frame(i, T0 + timedelta(seconds=step * i),
                                                    offset(center, k * radius, 0))))
    inside, dwelled = False, False
    for e in events:
        if isinstance(e, GeofenceEntered):
            assert not inside
            inside, dwelled = True, False
        elif isinstance(e, GeofenceDwell):
            assert inside and not dwelled and e.dwell >= e.threshold
            dwelled = True
        else:
            assert isinstance(e, GeofenceExited) and inside and e.dwell >= timedelta(0)
            inside = False


@settings(max_examples=100, deadline=None)
@given(target=st.builds(LatLon, st.floats(-60, 60), st.floats(-179, 179)), start_km=st.floats(5, 400),
       north=st.booleans(), speed=st.floats(20, 130), step_s=st.integers(1, 120), along_route=st.booleans())
def test_eta_non_negative_and_steady_straight_at_the_stop(target: LatLon, start_km: float, north: bool,
                                                          speed: float, step_s: int, along_route: bool) -> None:
    sign = 1 if north else -1
    start = offset(target, sign * start_km * 1000, 0)
    route = (start, target) if along_route else ()
    tracker = VehicleTracker(context([Circle(target, 500)], route=route),
                             DerivedSettings(eta_threshold=timedelta(0), circuity_factor=1.0))
    etas: list[EtaUpdated] = []
    step_m = speed / 3.6 * step_s
    for i in range(200):
        left = start_km * 1000 - i * step_m
        if left < 600:  # stop before the fence: the estimate then moves on to "no next stop"
            break
        where = offset(target, sign * left, 0)
        etas += [e for e in tracker.update(frame(i + 1, T0 + timedelta(seconds=i * step_s), where, speed_kph=speed))
                 if isinstance(e, EtaUpdated)]
    assert etas
    for prev, cur in itertools.pairwise(etas):
        assert cur.remaining_m < prev.remaining_m
        assert cur.estimated_arrive_time - cur.device_time <= prev.estimated_arrive_time - prev.device_time
    for e in etas:
        assert e.remaining_m >= 0 and e.estimated_arrive_time >= e.device_time
        assert abs((e.estimated_arrive_time - etas[0].estimated_arrive_time).total_seconds()) < 2.0
        assert e.along_route == along_route


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.integers(1, 600), min_size=1, max_size=40),
       sweeps=st.lists(st.lists(st.floats(0, 1), max_size=4), min_size=40, max_size=40),
       timeout_s=st.integers(10, 120))
def test_liveness_one_lost_and_one_restored_per_outage(gaps: list[int], sweeps: list[list[float]],
                                                       timeout_s: int) -> None:
    liveness = Liveness(timedelta(seconds=timeout_s))
    t = T0
    lost = restored = expected = 0
    assert liveness.heard("v", t, sequence=1) is None
    for i, gap in enumerate(gaps):
        # Sweep at some random instants inside the silence (twice at each, to catch duplicates).
        detected = False
        for frac in sorted(sweeps[i]):
            now = t + timedelta(seconds=gap * frac)
            for _ in range(2):
                got = liveness.sweep(now)
                lost += len(got)
                assert len(got) <= 1
            detected |= (now - t) > timedelta(seconds=timeout_s)
        expected += detected
        assert lost == expected  # the loss is reported once, as soon as a sweep sees it
        t += timedelta(seconds=gap)
        back = liveness.heard("v", t, sequence=i + 2)
        if back is not None:
            restored += 1
            assert back.outage == timedelta(seconds=gap) and back.high_water_sequence == i + 2
        assert restored == lost
    print(f"liveness: {len(gaps)} silences, {lost} lost, {restored} restored")
