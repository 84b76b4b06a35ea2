"""The fleet-state rules (services/mission/domain/fleet.py): report checks, newest wins, material ETA changes,
the position dispatch measures from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.mission.v1 import mission_pb2, mission_service_pb2, vehicle_pb2
from haulmesh.type.v1 import location_pb2
from services.mission import domain
from services.mission.domain.fleet import MAX_FLEET_REPORT_VEHICLES
from services.runtime import InvalidArgument, to_timestamp

V = vehicle_pb2.Vehicle
T0 = datetime(2026, 12, 2, 12, tzinfo=UTC)
HOUSTON = location_pb2.Location(lat=29.75, lon=-95.36)
DALLAS = location_pb2.Location(lat=32.78, lon=-96.80)


def _entry(vehicle: str = "vehicles/AU-TRK-1001", connectivity: int = V.CONNECTIVITY_ONLINE, seen: datetime = T0,
           **fields: object) -> mission_service_pb2.VehicleObservation:
    return mission_service_pb2.VehicleObservation(vehicle=vehicle, connectivity=connectivity,  # type: ignore[arg-type]
                                                  last_seen_time=to_timestamp(seen), **fields)


def _obs(connectivity: int, seen: datetime, location: location_pb2.Location | None = None) -> domain.Observation:
    return domain.Observation("AU-TRK-1001", connectivity, seen, location, "", ())


def test_a_report_is_checked_entry_by_entry_and_the_valid_entries_still_apply() -> None:
    bad = mission_service_pb2.ReportFleetStateRequest(vehicles=[
        _entry("trucks/x"), _entry(connectivity=V.CONNECTIVITY_UNSPECIFIED),
        mission_service_pb2.VehicleObservation(vehicle="vehicles/AU-TRK-1002", connectivity=V.CONNECTIVITY_ONLINE),
        _entry("vehicles/AU-TRK-1003", last_location=location_pb2.Location(lat=91, lon=0)),
        _entry("vehicles/AU-TRK-1004", stop_estimates=[mission_service_pb2.StopEstimate(stop_index=-1)]),
        _entry("vehicles/AU-TRK-1004", mission="missions/m1"),
        _entry("vehicles/AU-TRK-1005", last_location=location_pb2.Location(lat=0, lon=0)),  # no fix
        _entry("vehicles/AU-TRK-1006", last_location=location_pb2.Location(lat=float("nan"), lon=1)),
        _entry("vehicles/AU-TRK-1007", last_location=DALLAS)])
    observations, rejected = domain.fleet_report(bad)
    fields = [v.field for r in rejected for v in r.violations]
    assert fields == ["vehicles[0].vehicle", "vehicles[1].connectivity", "vehicles[2].last_seen_time",
                      "vehicles[3].last_location.lat", "vehicles[4].mission",
                      "vehicles[4].stop_estimates[0].stop_index", "vehicles[4].stop_estimates[0].estimated_arrive_time",
                      "vehicles[5].vehicle", "vehicles[6].last_location", "vehicles[7].last_location.lat"], fields
    assert [r.index for r in rejected] == [0, 1, 2, 3, 4, 5, 6, 7] and rejected[6].vehicle == "vehicles/AU-TRK-1005"
    assert [o.vehicle_id for o in observations] == ["AU-TRK-1007"]  # the valid entry is not held hostage
    with pytest.raises(InvalidArgument):
        domain.fleet_report(mission_service_pb2.ReportFleetStateRequest())
    too_many = [_entry(f"vehicles/AU-TRK-{i:05d}") for i in range(MAX_FLEET_REPORT_VEHICLES + 1)]
    with pytest.raises(InvalidArgument):
        domain.fleet_report(mission_service_pb2.ReportFleetStateRequest(vehicles=too_many))


def test_a_valid_report_becomes_observations() -> None:
    eta = to_timestamp(T0 + timedelta(hours=9))
    estimate = mission_service_pb2.StopEstimate(stop_index=1, estimated_arrive_time=eta,
                                                device_time=to_timestamp(T0 - timedelta(seconds=3)))
    undated = mission_service_pb2.StopEstimate(stop_index=2, estimated_arrive_time=eta)
    request = mission_service_pb2.ReportFleetStateRequest(vehicles=[_entry(
        last_location=HOUSTON, location_time=to_timestamp(T0 - timedelta(seconds=2)), mission="missions/m1",
        stop_estimates=[estimate, undated])])
    [seen], rejected = domain.fleet_report(request)
    assert rejected == []
    assert (seen.vehicle_id, seen.mission_id, seen.last_seen) == ("AU-TRK-1001", "m1", T0)
    assert seen.estimates == ((1, T0 + timedelta(hours=9), T0 - timedelta(seconds=3)),
                              (2, T0 + timedelta(hours=9), T0))  # undated: as old as the report
    assert seen.location == HOUSTON and seen.location_time == T0 - timedelta(seconds=2)


def test_first_report_online_then_offline_is_a_change_each_time() -> None:
    vehicle = V(name="vehicles/AU-TRK-1001")
    changed, change = domain.apply_observation(vehicle, _obs(V.CONNECTIVITY_ONLINE, T0, HOUSTON))
    assert changed and change is not None and change.previous == V.CONNECTIVITY_UNSPECIFIED
    assert vehicle.last_location == HOUSTON and vehicle.connectivity == V.CONNECTIVITY_ONLINE
    changed, change = domain.apply_observation(vehicle, _obs(V.CONNECTIVITY_ONLINE, T0 + timedelta(seconds=10)))
    assert changed and change is None and vehicle.last_location == HOUSTON  # no new fix: the old one stays
    changed, change = domain.apply_observation(vehicle, _obs(V.CONNECTIVITY_OFFLINE, T0 + timedelta(seconds=10)))
    assert changed and change is not None and change.current == V.CONNECTIVITY_OFFLINE
    # A retried ONLINE report of the same time cannot undo the OFFLINE that followed it.
    assert domain.apply_observation(vehicle, _obs(V.CONNECTIVITY_ONLINE, T0 + timedelta(seconds=10))) == (False, None)


observations = st.lists(st.tuples(st.integers(0, 50), st.sampled_from([V.CONNECTIVITY_ONLINE, V.CONNECTIVITY_OFFLINE]),
                                  st.sampled_from([None, HOUSTON, DALLAS])), min_size=1, max_size=30)


@given(observations, st.randoms())
@settings(max_examples=200, deadline=None)
def test_newest_wins_whatever_the_order(reports, rng) -> None:
    """Any order of delivery (retries, replicas) ends in the state of the newest report (OFFLINE at a tie)."""
    seen = [_obs(c, T0 + timedelta(seconds=s), loc) for s, c, loc in reports]
    shuffled = list(seen)
    rng.shuffle(shuffled)
    vehicle = V(name="vehicles/AU-TRK-1001")
    for o in shuffled:
        domain.apply_observation(vehicle, o)
    newest = max(seen, key=lambda o: (o.last_seen, o.connectivity == V.CONNECTIVITY_OFFLINE))
    assert vehicle.connectivity == newest.connectivity
    assert vehicle.last_seen_time.ToDatetime(tzinfo=UTC) == newest.last_seen


def _mission(state: int = mission_pb2.Mission.STATE_ENROUTE) -> mission_pb2.Mission:
    mission = mission_pb2.Mission(name="missions/m1", vehicle="vehicles/AU-TRK-1001", state=state)  # type: ignore[arg-type]
    mission.stops.add(type=mission_pb2.Stop.TYPE_PICKUP, location=HOUSTON)
    mission.stops.add(type=mission_pb2.Stop.TYPE_DELIVERY, location=DALLAS)
    return mission


def test_etas_are_recorded_when_first_or_material() -> None:
    mission, five = _mission(), timedelta(minutes=5)
    eta = T0 + timedelta(hours=4)
    assert domain.apply_estimates(mission, ((1, eta, T0),), five)
    assert mission.estimated_arrive_time == to_timestamp(eta) == mission.stops[1].estimated_arrive_time
    assert not domain.apply_estimates(mission, ((1, eta + timedelta(minutes=4), T0),), five)
    assert domain.apply_estimates(mission, ((1, eta - timedelta(minutes=5), T0),), five)
    assert mission.estimated_arrive_time == to_timestamp(eta - timedelta(minutes=5))
    assert not domain.apply_estimates(mission, ((7, eta, T0),), five)  # no such stop
    heading = _mission()
    assert domain.apply_estimates(heading, ((0, T0 + timedelta(minutes=30), T0),), five)
    assert domain.apply_estimates(heading, ((1, eta, T0),), five)  # past the pickup: its estimate is over
    assert not heading.stops[0].HasField("estimated_arrive_time") and heading.stops[1].HasField("estimated_arrive_time")
    both = _mission()  # the pickup reached between two reports: only the later stop's estimate counts
    assert domain.apply_estimates(both, ((0, T0, T0), (1, eta, T0)), five)
    assert not both.stops[0].HasField("estimated_arrive_time") and both.estimated_arrive_time == to_timestamp(eta)
    mission.stops[0].arrive_time.CopyFrom(to_timestamp(T0))
    assert not domain.apply_estimates(mission, ((0, eta, T0),), five)  # reached: no estimate
    arrived = _mission(mission_pb2.Mission.STATE_ARRIVED)
    assert not domain.apply_estimates(arrived, ((1, eta, T0),), five)


def test_an_older_estimate_neither_overwrites_a_newer_eta_nor_revives_a_passed_stop() -> None:
    mission, five = _mission(), timedelta(minutes=5)
    at = lambda s: T0 + timedelta(seconds=s)  # noqa: E731 - device times
    assert domain.apply_estimates(mission, ((1, at(7200), at(20)),), five)
    # A retried report from an older frame, moved by much more than the material change: ignored.
    assert not domain.apply_estimates(mission, ((1, at(9000), at(10)),), five)
    assert mission.stops[1].estimated_arrive_time == to_timestamp(at(7200))
    assert mission.stops[1].estimate_device_time == to_timestamp(at(20))
    assert domain.apply_estimates(mission, ((1, at(9000), at(30)),), five)  # newer: recorded
    # The pickup passed (stop 1 estimated at device time 30): an older report of the pickup does not revive it.
    picked = _mission()
    assert domain.apply_estimates(picked, ((0, at(600), at(10)),), five)
    assert domain.apply_estimates(picked, ((1, at(7200), at(30)),), five)
    assert not picked.stops[0].HasField("estimated_arrive_time")
    assert not domain.apply_estimates(picked, ((0, at(600), at(20)),), five)
    assert not picked.stops[0].HasField("estimated_arrive_time")
    assert picked.estimated_arrive_time == to_timestamp(at(7200))


def test_an_older_fix_does_not_replace_a_newer_one_and_keeps_its_own_time() -> None:
    vehicle = V(name="vehicles/AU-TRK-1001")
    fix = lambda loc, seen, fixed: domain.Observation(  # noqa: E731
        "AU-TRK-1001", V.CONNECTIVITY_ONLINE, T0 + timedelta(seconds=seen), loc, "", (),
        T0 + timedelta(seconds=fixed))
    domain.apply_observation(vehicle, fix(DALLAS, 10, 10))
    domain.apply_observation(vehicle, fix(HOUSTON, 20, 5))  # heard later, a backlog frame from before
    assert vehicle.last_location == DALLAS and vehicle.last_location_time == to_timestamp(T0 + timedelta(seconds=10))
    assert vehicle.last_seen_time == to_timestamp(T0 + timedelta(seconds=20))


def test_dispatch_measures_from_a_fresh_fix_only() -> None:
    vehicle = V(last_location=DALLAS, last_location_time=to_timestamp(T0), last_seen_time=to_timestamp(T0))
    assert domain.dispatch_position(vehicle, T0 + timedelta(hours=1), timedelta(hours=6)) == (DALLAS.lat, DALLAS.lon)
    assert domain.dispatch_position(vehicle, T0 + timedelta(hours=7), timedelta(hours=6)) is None
    assert domain.dispatch_position(V(), T0, timedelta(hours=6)) is None
    # Heartbeats kept the vehicle heard a minute ago, but its fix is 7 hours old: not where it is.
    vehicle.last_seen_time.CopyFrom(to_timestamp(T0 + timedelta(hours=7) - timedelta(minutes=1)))
    assert domain.dispatch_position(vehicle, T0 + timedelta(hours=7), timedelta(hours=6)) is None
    # A fix of unknown time (a record from before last_location_time) is not trusted either.
    assert domain.dispatch_position(V(last_location=DALLAS, last_seen_time=to_timestamp(T0)), T0,
                                    timedelta(hours=6)) is None
