"""Unit tests of the derived events: geometry, geofence transitions, dwell, ETA, corridor, sensors, and the
protobuf mappings."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from haulmesh.events.v1 import telemetry_events_pb2 as tev
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import geofence_pb2, location_pb2
from services.telemetry.convert import frame_from_payload, mission_context_from_pb, to_event_payload
from services.telemetry.domain import (
    Alarm,
    Circle,
    DerivedSettings,
    EtaUpdated,
    GeofenceDwell,
    GeofenceEntered,
    GeofenceExited,
    LatLon,
    Liveness,
    Polygon,
    Route,
    RouteDeviation,
    SensorFault,
    VehicleTracker,
    fault_kind,
)
from services.telemetry.domain.geofence import _FenceShape

from .helpers import HOUSTON_ATLANTA, MISSION, T0, VEHICLE, context, distance_m, every, frame, offset

ATL = LatLon(33.749, -84.388)


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_circle_distance_is_the_great_circle_distance() -> None:
    shape = _FenceShape(Circle(ATL, 500))
    for north, east in [(0, 0), (300, 0), (0, 499), (-2000, 1500), (40_000, -30_000)]:
        p = offset(ATL, north, east)
        assert shape.signed_distance_m(p) == pytest.approx(distance_m(ATL, p) - 500, abs=1e-6)
    assert shape.signed_distance_m(offset(ATL, 0, 499)) < 0 < shape.signed_distance_m(offset(ATL, 0, 501))


def test_polygon_containment_and_edge_distance() -> None:
    # A 1 km square yard; edges straight in lat/lon.
    sw = ATL
    square = Polygon((sw, offset(sw, 0, 1000), offset(sw, 1000, 1000), offset(sw, 1000, 0)))
    shape = _FenceShape(square)
    assert shape.signed_distance_m(offset(sw, 500, 500)) == pytest.approx(-500, rel=1e-3)
    assert shape.signed_distance_m(offset(sw, 500, 1100)) == pytest.approx(100, rel=1e-3)
    assert shape.signed_distance_m(offset(sw, 10, 10)) == pytest.approx(-10, rel=1e-2)
    with pytest.raises(ValueError):
        _FenceShape(Polygon((sw, offset(sw, 1000, 1000), offset(sw, 0, 1000), offset(sw, 1000, 0))))  # bow tie


def test_polygon_across_the_antimeridian() -> None:
    shape = _FenceShape(Polygon((LatLon(-17.0, 179.99), LatLon(-17.0, -179.99), LatLon(-17.01, -179.99),
                                 LatLon(-17.01, 179.99))))
    assert shape.signed_distance_m(LatLon(-17.005, 180.0)) < 0
    assert shape.signed_distance_m(LatLon(-17.005, 179.9)) > 0


def test_route_locates_points_along_the_lane() -> None:
    route = Route(HOUSTON_ATLANTA)
    great_circle = sum(distance_m(a, b) for a, b in itertools.pairwise(HOUSTON_ATLANTA))
    assert route.length_m == pytest.approx(great_circle, rel=2e-3)  # ~1,270 km by interstate
    off, along = route.locate(HOUSTON_ATLANTA[4])  # Baton Rouge, a waypoint
    expected = sum(distance_m(a, b) for a, b in itertools.pairwise(HOUSTON_ATLANTA[:5]))
    assert off == pytest.approx(0, abs=1) and along == pytest.approx(expected, rel=2e-3)
    off, _ = route.locate(offset(HOUSTON_ATLANTA[4], 5000, 0))
    assert off == pytest.approx(5000, rel=0.05)


def test_enter_dwell_exit_with_hysteresis() -> None:
    settings = DerivedSettings(hysteresis_m=30, dwell_threshold=timedelta(minutes=10))
    tracker = VehicleTracker(context([Circle(ATL, 500)]), settings)
    path = [offset(ATL, 0, d) for d in (2000, 1000, 490, 505, 495, 0, 0, 520, 529, 531, 2000)]
    times = every(300, len(path))
    events = [e for i, (p, t) in enumerate(zip(path, times, strict=True), 1)
              for e in tracker.update(frame(i, t, p)) if not isinstance(e, EtaUpdated)]
    # Entered at 490 m; 505 / 520 / 529 m are within the 30 m hysteresis; 531 m is out.
    assert kinds(events) == ["GeofenceEntered", "GeofenceDwell", "GeofenceExited"]
    entered, dwell, exited = events
    assert isinstance(entered, GeofenceEntered) and entered.frame_sequence == 3 and entered.stop_index == 0
    assert isinstance(dwell, GeofenceDwell) and dwell.frame_sequence == 5 and dwell.dwell == timedelta(minutes=10)
    assert isinstance(exited, GeofenceExited) and exited.frame_sequence == 10
    assert exited.dwell == times[9] - times[2]


def test_duplicates_and_replays_are_ignored() -> None:
    tracker = VehicleTracker(context([Circle(ATL, 500)]))
    assert "GeofenceEntered" in kinds(tracker.update(frame(5, T0, ATL)))
    assert tracker.update(frame(5, T0, ATL)) == []
    assert tracker.update(frame(4, T0, offset(ATL, 5000, 0))) == []


def test_recorded_arrival_is_not_announced_again() -> None:
    ctx = context([Circle(ATL, 500)])
    stop = ctx.stops[0]
    from dataclasses import replace
    rebuilt = replace(ctx, stops=(replace(stop, arrive_time=T0),))
    tracker = VehicleTracker(rebuilt, DerivedSettings(dwell_threshold=timedelta(minutes=30)))
    events = tracker.update(frame(1, T0 + timedelta(minutes=31), ATL))
    assert kinds(events) == ["GeofenceDwell"]
    assert kinds(tracker.update(frame(2, T0 + timedelta(minutes=40), offset(ATL, 2000, 0)))) == ["GeofenceExited"]


def test_eta_along_route_threshold_and_late() -> None:
    route = HOUSTON_ATLANTA[-3:]  # Birmingham -> Anniston -> Atlanta
    ctx = context([Circle(ATL, 500)], route=route, window_end=T0 + timedelta(hours=1))
    tracker = VehicleTracker(ctx, DerivedSettings(eta_threshold=timedelta(minutes=2)))
    first = tracker.update(frame(1, T0, route[0], speed_kph=100))
    assert kinds(first) == ["EtaUpdated"]
    eta = first[0]
    assert isinstance(eta, EtaUpdated) and eta.along_route and eta.previous_estimated_arrive_time is None
    length = Route(route).length_m
    assert eta.remaining_m == pytest.approx(length, rel=1e-3)
    assert eta.estimated_arrive_time - T0 == pytest.approx(timedelta(seconds=length / (100 / 3.6)),
                                                           abs=timedelta(seconds=1))
    assert eta.late and eta.confidence == 1.0
    # One minute later at the same speed and position progress: the ETA does not move, nothing reported.
    assert tracker.update(frame(2, T0 + timedelta(seconds=60), offset(route[0], 0, 1666), speed_kph=100)) == []
    # Stuck in traffic for 30 minutes: the ETA moves, the previous one is carried, confidence drops.
    moved = [e for e in tracker.update(frame(3, T0 + timedelta(minutes=31), offset(route[0], 0, 1700),
                                             speed_kph=20)) if isinstance(e, EtaUpdated)]
    assert len(moved) == 1 and moved[0].previous_estimated_arrive_time == eta.estimated_arrive_time
    assert moved[0].confidence < eta.confidence


def test_a_steady_eta_is_still_reported_every_refresh_interval_of_device_time() -> None:
    """On pace for 50 minutes on the first leg, one fix a minute: the first ETA, then one per 15 minutes."""
    route = HOUSTON_ATLANTA[-3:]
    tracker = VehicleTracker(context([Circle(ATL, 500)], route=route), DerivedSettings())
    step_m = 100 / 3.6 * 60
    start, bearing_to = route[0], route[1]
    etas = []
    for i in range(51):
        frac = i * step_m / distance_m(start, bearing_to)
        where = LatLon(start.lat + (bearing_to.lat - start.lat) * frac, start.lon + (bearing_to.lon - start.lon) * frac)
        etas += [e for e in tracker.update(frame(i + 1, T0 + timedelta(minutes=i), where, speed_kph=100))
                 if isinstance(e, EtaUpdated)]
    assert [e.device_time - T0 for e in etas] == [timedelta(minutes=m) for m in range(0, 51, 15)]


def test_eta_confidence_drops_with_staleness_and_gaps() -> None:
    ctx = context([Circle(ATL, 500)])
    settings = DerivedSettings(eta_threshold=timedelta(0))
    fresh = VehicleTracker(ctx, settings).update(frame(1, T0, offset(ATL, 50_000, 0)), now=T0)[0]
    stale = VehicleTracker(ctx, settings).update(frame(1, T0, offset(ATL, 50_000, 0)),
                                                 now=T0 + timedelta(minutes=5))[0]
    assert isinstance(fresh, EtaUpdated) and isinstance(stale, EtaUpdated)
    assert not fresh.along_route and fresh.confidence == pytest.approx(0.8)
    assert stale.confidence == pytest.approx(fresh.confidence / 2, abs=1e-3)
    gapped = VehicleTracker(ctx, settings)
    gapped.update(frame(1, T0, offset(ATL, 50_000, 0)))
    after_gap = gapped.update(frame(2, T0 + timedelta(minutes=5), offset(ATL, 43_000, 0)))[0]
    assert isinstance(after_gap, EtaUpdated) and after_gap.confidence == pytest.approx(0.4, abs=1e-3)


def test_route_deviation_after_n_frames_once_per_excursion() -> None:
    route = HOUSTON_ATLANTA[-3:]
    tracker = VehicleTracker(context([Circle(ATL, 500)], route=route, corridor_width_m=1000),
                             DerivedSettings(deviation_frames=3))
    base = route[0]
    offsets = [0, 400, 600, 700, 800, 900, 100, 700, 700, 700]
    events = [e for i, (north, t) in enumerate(zip(offsets, every(10, len(offsets)), strict=True), 1)
              for e in tracker.update(frame(i, t, offset(base, north, 0)))]
    deviations = [e for e in events if isinstance(e, RouteDeviation)]
    assert [d.frame_sequence for d in deviations] == [5, 10]
    assert deviations[0].distance_m == pytest.approx(800, rel=0.05) and deviations[0].frames == 3


def test_sensor_transitions_and_fault_frames() -> None:
    tracker = VehicleTracker(context([Circle(ATL, 500)]))
    far = offset(ATL, 90_000, 0)
    seq = iter(range(1, 100))
    got = []
    for sensors in [{"lidar": "ok"}, {"lidar": "degraded"}, {"lidar": "degraded"}, {}, {"lidar": "fault"},
                    {"lidar": "ok", "camera": "offline"}]:
        got += [e for e in tracker.update(frame(next(seq), T0, far, sensors=sensors))
                if isinstance(e, SensorFault)]
    assert [(e.source, e.status, e.severity, e.cleared) for e in got] == [
        ("lidar", "degraded", "warning", False), ("lidar", "fault", "critical", False),
        ("lidar", "ok", "warning", True), ("camera", "offline", "critical", False)]
    brake = tracker.update(frame(next(seq), T0, None, kind="fault",
                                 alarm=Alarm("BRAKE_PRESSURE_LOW", "critical", "brakes")))
    lidar = tracker.update(frame(next(seq), T0, None, kind="fault",
                                 alarm=Alarm("LIDAR_FAILURE", "critical", "lidar_front_left")))
    alarm = tracker.update(frame(next(seq), T0, None, kind="alarm", alarm=Alarm("MRC_ENGAGED", "critical")))
    assert [e.suggested_kind for e in brake + lidar] == ["VEHICLE_FAULT", "SENSOR_FAULT"]  # type: ignore[attr-defined]
    assert alarm == []
    kind, reported = to_event_payload(lidar[0])  # what the actions consumer raises SENSOR_FAULT from
    assert kind == "haulmesh.telemetry.v1.fault_reported"
    assert reported.alarm.severity == frame_pb2.Alarm.SEVERITY_CRITICAL
    assert reported.alarm.component == "lidar_front_left"
    assert reported.frame_sequence == lidar[0].frame_sequence  # type: ignore[attr-defined]


def test_payload_mapping_round_trip() -> None:
    payload = frame_pb2.FramePayload(vehicle_id=VEHICLE, sequence=7, kind=frame_pb2.FramePayload.KIND_POSITION,
                                     position=frame_pb2.Position(lat=ATL.lat, lon=ATL.lon, speed_kph=12.5),
                                     sensors=frame_pb2.SensorStatus(lidar_status="ok", radar_status="degraded"),
                                     mission_id=MISSION)
    payload.device_time.FromDatetime(T0)
    f = frame_from_payload(payload)
    assert f.device_time == T0 and f.position is not None and f.position.speed_kph == 12.5
    assert f.sensors == {"lidar": "ok", "radar": "degraded"} and f.kind == "position"

    mission = mission_pb2.Mission(name=f"missions/{MISSION}", vehicle=f"vehicles/{VEHICLE}")
    mission.stops.add(type=mission_pb2.Stop.TYPE_PICKUP, location=location_pb2.Location(lat=29.75, lon=-95.36))
    mission.stops.add(type=mission_pb2.Stop.TYPE_DELIVERY, location=location_pb2.Location(lat=ATL.lat, lon=ATL.lon),
                      geofence=geofence_pb2.Geofence(circle=geofence_pb2.Geofence.Circle(
                          center=location_pb2.Location(lat=ATL.lat, lon=ATL.lon), radius_meters=800)))
    ctx = mission_context_from_pb(mission)
    assert ctx.mission_id == MISSION and ctx.vehicle_id == VEHICLE
    assert ctx.stops[0].fence == Circle(LatLon(29.75, -95.36), 500.0) and ctx.stops[1].fence == Circle(ATL, 800)

    tracker = VehicleTracker(ctx, DerivedSettings(dwell_threshold=timedelta(minutes=1)))
    events = tracker.update(frame(1, T0, offset(ATL, 0, 700)))
    events += tracker.update(frame(2, T0 + timedelta(minutes=2), ATL))
    events += tracker.update(frame(3, T0 + timedelta(minutes=3), offset(ATL, 0, 5000)))
    built = dict(to_event_payload(e) for e in events)
    entered = built["haulmesh.telemetry.v1.geofence_entered"]
    assert isinstance(entered, tev.GeofenceEntered)
    assert entered.context.mission == f"missions/{MISSION}" and entered.context.vehicle == f"vehicles/{VEHICLE}"
    assert entered.context.stop_index == 1 and entered.context.stop_type == mission_pb2.Stop.TYPE_DELIVERY
    assert entered.context.frame_sequence == 1 and entered.context.device_time.ToDatetime() == T0.replace(tzinfo=None)
    dwell = built["haulmesh.telemetry.v1.geofence_dwell"]
    assert isinstance(dwell, tev.GeofenceDwell) and dwell.threshold.ToTimedelta() == timedelta(minutes=1)
    exited = built["haulmesh.telemetry.v1.geofence_exited"]
    assert isinstance(exited, tev.GeofenceExited) and exited.dwell.ToTimedelta() == timedelta(minutes=3)
    eta = built["haulmesh.telemetry.v1.eta_updated"]
    assert isinstance(eta, tev.EtaUpdated) and eta.stop_index == 0 and eta.remaining_miles > 400
    fault_type, fault = to_event_payload(SensorFault(MISSION, VEHICLE, "lidar", "lidar", "fault", "LIDAR_FAULT",
                                                     "critical", "SENSOR_FAULT", False, "lidar ok -> fault", ATL,
                                                     T0, 9))
    assert fault_type == "haulmesh.telemetry.v1.fault_reported" and isinstance(fault, tev.FaultReported)
    assert (fault.kind, fault.alarm.code, fault.alarm.component) == (
        frame_pb2.FramePayload.KIND_FAULT, "LIDAR_FAULT", "lidar")
    assert fault.alarm.severity == frame_pb2.Alarm.SEVERITY_CRITICAL and fault.frame_sequence == 9
    assert fault_kind(fault.alarm.code, fault.alarm.component) == "SENSOR_FAULT"
    assert fault_kind("BRAKE_PRESSURE_LOW", "air_brakes") == "VEHICLE_FAULT"
    route_type, route = to_event_payload(RouteDeviation(MISSION, VEHICLE, 1500.0, 1000.0, 3, ATL, T0, 11))
    assert route_type == "haulmesh.telemetry.v1.route_deviated" and isinstance(route, tev.RouteDeviated)
    assert (route.distance_meters, route.corridor_width_meters, route.frames) == (1500.0, 1000.0, 3)
    with pytest.raises(TypeError):
        to_event_payload(object())


def test_liveness_lost_restored_and_payloads() -> None:
    liveness = Liveness(timedelta(seconds=15))
    assert liveness.heard(VEHICLE, T0, sequence=10, location=ATL, mission_id=MISSION) is None
    assert liveness.sweep(T0 + timedelta(seconds=15)) == []  # exactly the timeout: not yet
    lost = liveness.sweep(T0 + timedelta(seconds=16))
    assert liveness.sweep(T0 + timedelta(seconds=60)) == []  # once per outage
    liveness.report_again(VEHICLE)  # its announcement failed (store unreachable): the next sweep retries
    assert [again.vehicle_id for again in liveness.sweep(T0 + timedelta(seconds=61))] == [VEHICLE]
    assert liveness.sweep(T0 + timedelta(seconds=62)) == []
    assert len(lost) == 1 and lost[0].last_sequence == 10 and lost[0].last_location == ATL
    back = liveness.heard(VEHICLE, T0 + timedelta(minutes=30), sequence=11, vehicle_last_sequence=1800)
    assert back is not None and back.outage == timedelta(minutes=30) and back.mission_id == MISSION
    assert liveness.heard(VEHICLE, T0 + timedelta(minutes=30, seconds=1), sequence=12) is None
    print(f"liveness: lost {len(lost)}, restored 1, outage {back.outage}")

    kind, msg = to_event_payload(lost[0])
    assert kind == "haulmesh.telemetry.v1.connectivity_lost" and isinstance(msg, tev.ConnectivityLost)
    assert msg.vehicle == f"vehicles/{VEHICLE}" and msg.mission == f"missions/{MISSION}" and msg.last_sequence == 10
    kind, msg = to_event_payload(back)
    assert kind == "haulmesh.telemetry.v1.connectivity_restored" and isinstance(msg, tev.ConnectivityRestored)
    assert msg.outage.ToTimedelta() == timedelta(minutes=30) and msg.vehicle_last_sequence == 1800
    assert msg.high_water_sequence == 11
