"""Mission rules without gRPC or Redis: roster eligibility, dispatch order, capacity windows, the state
machine (property-tested), contingencies, check-ins, proof-of-delivery signatures and usage metering."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.billing.v1 import invoice_pb2
from haulmesh.mission.v1 import mission_pb2, vehicle_pb2
from haulmesh.telemetry.v1 import frame_pb2
from haulmesh.type.v1 import lane_pb2, location_pb2
from services.mission import domain
from services.mission.config import MissionSettings
from services.mission.domain import (
    Action,
    Availability,
    Capabilities,
    CheckInPoint,
    CheckInPolicy,
    Contingency,
    ExceptionKind,
    Load,
    Severity,
    State,
    Status,
    VehicleView,
)
from services.runtime import ConfigError, FailedPrecondition, InvalidArgument, great_circle_miles, pki, to_timestamp
from services.runtime.lanes import KnownRoute, LaneFacts, load_lane_facts
from services.runtime.metering import telemetry_log_sha256

DRY_VAN, REEFER = 1, 3
HOUSTON, DALLAS, ATLANTA = (29.76, -95.37), (32.78, -96.80), (33.75, -84.39)
T0 = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
FACTS = load_lane_facts({})


def caps(equipment=(DRY_VAN,), hazmat=False, max_lb=45_000, night=True) -> Capabilities:
    return Capabilities(frozenset(equipment), hazmat, max_lb, night)


def vehicle(vid: str, *, availability=Availability.AVAILABLE, region="US-TX-HOU", position=None, **kw) -> VehicleView:
    return VehicleView(vid, caps(**kw), availability, region, position)


# --- roster ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("load", "lacking"), [
    (Load(DRY_VAN, 40_000, False, False), []),
    (Load(REEFER, 40_000, False, False), ["EQUIPMENT"]),
    (Load(DRY_VAN, 45_001, False, False), ["MAX_CARGO_WEIGHT"]),
    (Load(DRY_VAN, 1_000, True, False), ["HAZMAT_CERTIFICATION"]),
    (Load(REEFER, 50_000, True, True), ["EQUIPMENT", "HAZMAT_CERTIFICATION", "MAX_CARGO_WEIGHT",
                                        "NIGHT_OPERATIONS"]),
])
def test_ineligibility_names_every_missing_capability(load: Load, lacking: list[str]) -> None:
    assert domain.ineligibility(caps(night=False), load) == lacking


def test_capabilities_validation() -> None:
    assert domain.validate_capabilities(caps()) == []
    fields = {v.field for v in domain.validate_capabilities(Capabilities(frozenset(), False, 0, False))}
    assert fields == {"vehicle.capabilities.equipment", "vehicle.capabilities.max_cargo_weight_lb"}
    assert domain.validate_capabilities(caps(max_lb=80_001))


@pytest.mark.parametrize("vid", ["AU-TRK-1001", "ABC", "X" * 63])
def test_vehicle_ids_accepted(vid: str) -> None:
    domain.validate_vehicle_id(vid)


@pytest.mark.parametrize("vid", ["", "AB", "1TRK", "au-trk-1", "X" * 64, "AU_TRK"])
def test_vehicle_ids_refused(vid: str) -> None:
    with pytest.raises(InvalidArgument):
        domain.validate_vehicle_id(vid)


def test_availability_changes() -> None:
    domain.validate_availability_change(Availability.AVAILABLE, Availability.MAINTENANCE, on_mission=False)
    domain.validate_availability_change(Availability.ASSIGNED, Availability.OUT_OF_SERVICE, on_mission=True)
    with pytest.raises(InvalidArgument):
        domain.validate_availability_change(Availability.AVAILABLE, Availability.ASSIGNED, on_mission=False)
    with pytest.raises(FailedPrecondition) as caught:
        domain.validate_availability_change(Availability.ASSIGNED, Availability.MAINTENANCE, on_mission=True)
    assert caught.value.reason == "VEHICLE_ASSIGNED"


def test_choose_vehicle_nearest_eligible_available_first() -> None:
    roster = [
        vehicle("AT-1", region="US-GA-ATL"),
        vehicle("HOU-BUSY", availability=Availability.ASSIGNED),
        vehicle("HOU-REEFER", equipment=(REEFER,)),
        vehicle("DAL-1", region="US-TX-DAL"),
        vehicle("HOU-2"),
        vehicle("HOU-1"),
        vehicle("NEAR", region="US-GA-ATL", position=(29.8, -95.4)),
    ]
    order = [v.vehicle_id for v in domain.choose_vehicle(roster, Load(DRY_VAN, 1000, False, False), HOUSTON,
                                                               FACTS)]
    assert order == ["HOU-1", "HOU-2", "NEAR", "DAL-1", "AT-1"]


def test_lanes_and_the_planned_route_come_from_the_lane_facts() -> None:
    assert domain.lane_between(HOUSTON, ATLANTA, FACTS) == lane_pb2.Lane(origin_region="US-TX-HOU",
                                                                         destination_region="US-GA-ATL")
    kansas = (38.5, -98.0)  # outside every service area: an operator's mission still gets a lane
    assert domain.lane_between(kansas, DALLAS, FACTS).origin_region == "US-OK-OKC"
    plan = domain.plan_dispatch(_mission_between(HOUSTON, ATLANTA), T0, FACTS)
    assert plan.route_miles == FACTS.plan([HOUSTON, ATLANTA]).miles  # the tender's offer quotes the same miles
    assert 780 < plan.route_miles < 800 and plan.route_points[0] == HOUSTON and len(plan.route_points) == 14


def test_night_operation_in_the_origin_markets_local_time() -> None:
    # 14:00 UTC at Houston is 08:00 CST: day until 22:00 CST (04:00 UTC); night runs 22:00-05:00 local.
    def night(start: datetime, end: datetime) -> bool:
        mission = _mission_between(HOUSTON, DALLAS, window=(start, end))
        return domain.plan_dispatch(mission, T0, FACTS).load.night

    assert not night(T0, T0 + timedelta(hours=8))
    assert night(T0, T0 + timedelta(hours=14))
    assert night(T0.replace(hour=4), T0.replace(hour=4, minute=30))
    assert not night(T0.replace(hour=3), T0.replace(hour=3, minute=30))  # 21:00 CST


def _mission_between(origin, destination, window=None) -> mission_pb2.Mission:
    mission = mission_pb2.Mission()
    for kind, (lat, lon) in ((mission_pb2.Stop.TYPE_PICKUP, origin), (mission_pb2.Stop.TYPE_DELIVERY, destination)):
        mission.stops.add(type=kind).location.CopyFrom(location_pb2.Location(lat=lat, lon=lon))
    if window is not None:
        mission.stops[0].planned_window.start_time.FromDatetime(window[0])
        mission.stops[-1].planned_window.end_time.FromDatetime(window[1])
    mission.load.weight_lb, mission.load.equipment = 1000, DRY_VAN
    return mission


# --- capacity ----------------------------------------------------------------------------------------

def test_capacity_windows_steps() -> None:
    roster = [vehicle("HOU-1"), vehicle("HOU-2"), vehicle("DAL-1", region="US-TX-DAL"),
              vehicle("MAINT", availability=Availability.MAINTENANCE), vehicle("REEF", equipment=(REEFER,))]
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=12)
    windows, eligible = domain.capacity_windows(roster, Load(DRY_VAN, 1000, False, False), HOUSTON, start, end, T0,
                                                FACTS)
    assert eligible == 4  # MAINT fits (counted), REEF does not
    assert [(w.vehicle_count, w.end) for w in windows][-1] == (3, end)
    assert windows[0].start == start and windows[0].vehicle_count == 2  # both Houston trucks at once
    assert windows[1].start > start  # Dallas truck after ~5 h deadhead


@settings(max_examples=200, deadline=None)
@given(positions=st.lists(st.tuples(st.floats(25, 36), st.floats(-110, -80)), max_size=12),
       start_offset=st.integers(-600, 600), length=st.integers(1, 2000))
def test_capacity_windows_are_ordered_disjoint_and_inside(positions, start_offset, length) -> None:
    roster = [vehicle(f"V-{i:03d}", position=p) for i, p in enumerate(positions)]
    start = T0 + timedelta(minutes=start_offset)
    end = start + timedelta(minutes=length)
    windows, eligible = domain.capacity_windows(roster, Load(DRY_VAN, 1, False, False), HOUSTON, start, end, T0,
                                                FACTS)
    assert eligible == len(roster)
    for w in windows:
        assert start <= w.start < w.end <= end
    for a, b in itertools.pairwise(windows):
        assert a.end == b.start and a.vehicle_count < b.vehicle_count
    assert not windows or windows[-1].vehicle_count <= len(roster)


# --- state machine -----------------------------------------------------------------------------------

def test_happy_path() -> None:
    status = Status(State.DISPATCHED)
    for action, expected in [(Action.ACKNOWLEDGE, State.PRE_TRIP), (Action.START, State.ENROUTE),
                             (Action.ARRIVE, State.ARRIVED), (Action.DELIVER, State.DELIVERED),
                             (Action.COMPLETE, State.COMPLETED)]:
        status = domain.transition(status, action)
        assert status == Status(expected)
        assert domain.transition(status, action) is None  # a retry changes nothing


@pytest.mark.parametrize(("state", "action"), [
    (State.DISPATCHED, Action.START), (State.DISPATCHED, Action.ARRIVE), (State.PRE_TRIP, Action.DELIVER),
    (State.ENROUTE, Action.CANCEL), (State.PRE_TRIP, Action.ABORT), (State.DELIVERED, Action.RAISE),
    (State.COMPLETED, Action.CANCEL), (State.CANCELLED, Action.ACKNOWLEDGE), (State.ABORTED, Action.RAISE),
    (State.ENROUTE, Action.RESOLVE_LAST), (State.ARRIVED, Action.COMPLETE),
])
def test_illegal_transitions(state: State, action: Action) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        domain.transition(Status(state), action)
    assert caught.value.reason == "INVALID_MISSION_STATE"
    assert caught.value.metadata == {"state": f"STATE_{state.name}"}


def test_exception_rules() -> None:
    enroute_exc = domain.transition(Status(State.ENROUTE), Action.RAISE)
    assert enroute_exc == Status(State.EXCEPTION, State.ENROUTE)
    # Arrival while in EXCEPTION moves the resume state; abort is allowed, cancel is not.
    arrived = domain.transition(Status(State.EXCEPTION, State.ENROUTE, (ExceptionKind.SENSOR_FAULT,)), Action.ARRIVE)
    assert arrived == Status(State.EXCEPTION, State.ARRIVED, (ExceptionKind.SENSOR_FAULT,))
    assert domain.transition(arrived, Action.ABORT) == Status(State.ABORTED)
    with pytest.raises(FailedPrecondition):
        domain.transition(arrived, Action.CANCEL)
    # Before departure: cancel yes, abort no; a start resolves the pre-trip failures and is recorded in the
    # resume state unless an open exception stops the vehicle (HOLD, MINIMAL_RISK_STOP).
    pre = Status(State.EXCEPTION, State.PRE_TRIP, (ExceptionKind.PRE_TRIP_FAILURE,), (ExceptionKind.PRE_TRIP_FAILURE,))
    assert domain.transition(pre, Action.START) == Status(State.ENROUTE)
    assert domain.transition(pre, Action.CANCEL) == Status(State.CANCELLED)
    with pytest.raises(FailedPrecondition):
        domain.transition(pre, Action.ABORT)
    cargo = Status(State.EXCEPTION, State.PRE_TRIP, (ExceptionKind.PRE_TRIP_FAILURE, ExceptionKind.CARGO))
    assert domain.transition(cargo, Action.START) == Status(State.EXCEPTION, State.ENROUTE, (ExceptionKind.CARGO,))
    fault = Status(State.EXCEPTION, State.DISPATCHED, (ExceptionKind.SENSOR_FAULT,))
    assert domain.transition(fault, Action.START) == Status(State.EXCEPTION, State.ENROUTE,
                                                            (ExceptionKind.SENSOR_FAULT,))
    held = Status(State.EXCEPTION, State.PRE_TRIP, (ExceptionKind.SENSOR_FAULT, ExceptionKind.CHECK_IN_HOLD),
                  (ExceptionKind.CHECK_IN_HOLD,))
    with pytest.raises(FailedPrecondition) as caught:
        domain.transition(held, Action.START)
    assert caught.value.reason == "MISSION_HELD"
    assert caught.value.metadata == {"state": "STATE_EXCEPTION", "exceptions": "CHECK_IN_HOLD"}
    assert "CHECK_IN_HOLD" in caught.value.message
    # The acknowledgement moves the resume state too; repeated, it changes nothing.
    failure = (ExceptionKind.PRE_TRIP_FAILURE,)
    early = Status(State.EXCEPTION, State.DISPATCHED, failure, failure)
    acked = domain.transition(early, Action.ACKNOWLEDGE)
    assert acked == Status(State.EXCEPTION, State.PRE_TRIP, early.open_exceptions, early.stopping)
    assert domain.transition(acked, Action.ACKNOWLEDGE) is None
    assert domain.transition(Status(State.EXCEPTION, State.ARRIVED, (ExceptionKind.OTHER,)),
                             Action.RESOLVE_LAST) == Status(State.ARRIVED)


_ORDER = {State.DISPATCHED: 0, State.PRE_TRIP: 1, State.ENROUTE: 2, State.ARRIVED: 3, State.DELIVERED: 4,
          State.COMPLETED: 5, State.CANCELLED: 5, State.ABORTED: 5}
_TERMINAL = {State.COMPLETED, State.CANCELLED, State.ABORTED}
_STEPS = st.lists(st.one_of(st.sampled_from([a for a in Action if a != Action.RAISE]),
                            st.sampled_from(list(ExceptionKind))), max_size=40)


@settings(max_examples=500, deadline=None)
@given(steps=_STEPS)
def test_state_machine_invariants(steps) -> None:
    """Any sequence of calls: progress never goes back, EXCEPTION iff exceptions are open, terminal absorbs,
    cancel only before departure, abort only after, refused calls change nothing."""
    status = Status(State.DISPATCHED)
    for step in steps:
        action = Action.RAISE if isinstance(step, ExceptionKind) else step
        if action == Action.RAISE and isinstance(step, ExceptionKind):
            kinds = (*status.open_exceptions, step)
        else:
            kinds = status.open_exceptions
        if action == Action.RESOLVE_LAST and len(status.open_exceptions) > 1:
            status = Status(status.state, status.resume, status.open_exceptions[1:])  # not the last one
            continue
        before = status
        try:
            after = domain.transition(status, action)
        except FailedPrecondition as exc:
            assert exc.reason == "INVALID_MISSION_STATE"
            continue
        if after is None:
            continue
        if action == Action.RAISE:
            after = Status(after.state, after.resume, kinds)
        elif after.state == State.EXCEPTION and action != Action.START:  # a start resolves the pre-trip failures
            after = Status(after.state, after.resume, kinds)
        status = after
        # EXCEPTION iff a resume state and open exceptions
        assert (status.state == State.EXCEPTION) == (status.resume is not None)
        assert (status.state == State.EXCEPTION) == bool(status.open_exceptions)
        assert status.resume not in _TERMINAL | {State.EXCEPTION}
        assert before.state not in _TERMINAL
        assert _ORDER[status.effective] >= _ORDER[before.effective]
        if status.state == State.CANCELLED:
            assert not before.departed
        if status.state == State.ABORTED:
            assert before.departed
        if status.state == State.DELIVERED:
            assert before.state == State.ARRIVED


@pytest.mark.parametrize(("kind", "severity", "departed", "expected"), [
    (ExceptionKind.SENSOR_FAULT, Severity.CRITICAL, True, Contingency.MINIMAL_RISK_STOP),
    (ExceptionKind.SENSOR_FAULT, Severity.WARNING, True, Contingency.CONTINUE),
    (ExceptionKind.VEHICLE_FAULT, Severity.CRITICAL, True, Contingency.MINIMAL_RISK_STOP),
    (ExceptionKind.ADVERSE_WEATHER, Severity.INFO, True, Contingency.CONTINUE),
    (ExceptionKind.ROAD_CLOSURE, Severity.CRITICAL, True, Contingency.REROUTE),
    (ExceptionKind.TRAFFIC_INCIDENT, Severity.WARNING, True, Contingency.REROUTE),
    (ExceptionKind.CONNECTIVITY_LOSS, Severity.CRITICAL, True, Contingency.CONTINUE),
    (ExceptionKind.LAW_ENFORCEMENT_STOP, Severity.WARNING, True, Contingency.HUMAN_TAKEOVER),
    (ExceptionKind.CARGO, Severity.WARNING, False, Contingency.HUMAN_TAKEOVER),
    (ExceptionKind.PRE_TRIP_FAILURE, Severity.WARNING, False, Contingency.HOLD),
    (ExceptionKind.CHECK_IN_HOLD, Severity.WARNING, True, Contingency.MINIMAL_RISK_STOP),
    (ExceptionKind.DISPATCH_TIMEOUT, Severity.WARNING, False, Contingency.HOLD),
    (ExceptionKind.OTHER, Severity.CRITICAL, True, Contingency.CONTINUE),
])
def test_contingency_rules(kind, severity, departed, expected) -> None:
    assert domain.choose_contingency(kind, severity, departed=departed) == expected


# --- check-ins ---------------------------------------------------------------------------------------

def test_check_in_policy_and_points() -> None:
    policy = CheckInPolicy(threshold=30)
    assert policy.required(1) and policy.required(30) and not policy.required(31)
    assert not CheckInPolicy(threshold=0).required(1)
    domain.check_in_point_allowed(Status(State.PRE_TRIP), CheckInPoint.DEPARTURE)
    domain.check_in_point_allowed(Status(State.EXCEPTION, State.PRE_TRIP, (ExceptionKind.CHECK_IN_HOLD,)),
                                  CheckInPoint.DEPARTURE)
    domain.check_in_point_allowed(Status(State.ARRIVED), CheckInPoint.ARRIVAL)
    for status, point in [(Status(State.ENROUTE), CheckInPoint.DEPARTURE), (Status(State.PRE_TRIP),
                          CheckInPoint.ARRIVAL), (Status(State.COMPLETED), CheckInPoint.ENROUTE)]:
        with pytest.raises(FailedPrecondition):
            domain.check_in_point_allowed(status, point)


def test_departure_cleared_by_latest_departure_check_in() -> None:
    dep, enr = CheckInPoint.DEPARTURE, CheckInPoint.ENROUTE
    assert not domain.departure_cleared([])
    assert domain.departure_cleared([(dep, domain.PROCEED)])
    assert not domain.departure_cleared([(dep, domain.PROCEED), (dep, domain.HOLD)])
    assert domain.departure_cleared([(dep, domain.HOLD), (dep, domain.PROCEED), (enr, domain.HOLD)])


def test_next_check_in_due() -> None:
    policy = CheckInPolicy(enroute_interval=timedelta(minutes=45))
    pickup = T0 + timedelta(hours=2)
    due = domain.next_check_in_due
    assert due(policy, Status(State.DISPATCHED), planned_pickup=pickup, start_time=None, arrive_time=None,
               check_ins=[]) == pickup
    assert due(policy, Status(State.PRE_TRIP), planned_pickup=pickup, start_time=None, arrive_time=None,
               check_ins=[(CheckInPoint.DEPARTURE, domain.PROCEED, T0)]) is None
    enroute = [(CheckInPoint.DEPARTURE, domain.PROCEED, T0),
               (CheckInPoint.ENROUTE, domain.PROCEED, T0 + timedelta(hours=3))]
    assert due(policy, Status(State.ENROUTE), planned_pickup=pickup, start_time=T0 + timedelta(hours=2),
               arrive_time=None, check_ins=enroute) == T0 + timedelta(hours=3, minutes=45)
    assert due(policy, Status(State.ARRIVED), planned_pickup=pickup, start_time=T0, arrive_time=T0 + timedelta(hours=9),
               check_ins=enroute) == T0 + timedelta(hours=9)
    assert due(policy, Status(State.COMPLETED), planned_pickup=pickup, start_time=T0, arrive_time=None,
               check_ins=[]) is None


# --- proof of delivery -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truck() -> pki.IssuedCertificate:
    return pki.issue(pki.create_ca(), [pki.identity_for("vehicle", "AU-TRK-1001")], valid_days=1)


def test_manifest_signature_accepted_and_rejected(truck) -> None:
    pem = truck.certificate_pem
    manifest = b"\x0a\x03abc-signed-bytes"
    signature = truck.private_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    key_id = domain.key_id_of(pem)
    domain.verify_manifest_signature(pem, manifest, signature, key_id)
    for args, field in [((manifest + b"x", signature, key_id), "proof_of_delivery.manifest_signature"),
                        ((manifest, signature, "0" * 64), "proof_of_delivery.key_id")]:
        with pytest.raises(InvalidArgument) as caught:
            domain.verify_manifest_signature(pem, *args)
        assert caught.value.reason == "POD_SIGNATURE_INVALID"
        assert [v.field for v in caught.value.violations] == [field]
    other = ec.generate_private_key(ec.SECP256R1()).sign(manifest, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidArgument):
        domain.verify_manifest_signature(pem, manifest, other, key_id)


def test_manifest_must_name_mission_vehicle_load_and_photos() -> None:
    facts = domain.ManifestFacts("m1", "AU-TRK-1001", "LOAD-1", ("a" * 64,), T0, "c" * 64, 1, 10)
    domain.check_manifest(facts, mission_id="m1", vehicle_id="AU-TRK-1001", tms_load_id="LOAD-1",
                          photo_sha256=["a" * 64])
    with pytest.raises(InvalidArgument) as caught:
        domain.check_manifest(facts, mission_id="m2", vehicle_id="AU-TRK-9", tms_load_id="LOAD-1", photo_sha256=[])
    assert caught.value.reason == "POD_SIGNATURE_INVALID" and len(caught.value.violations) == 3


@pytest.mark.parametrize("digest,first,last", [("C" * 64, 1, 10), ("c" * 64, 0, 10), ("c" * 64, 11, 10),
                                               ("c" * 64, 1, 1 + domain.MAX_POD_FRAMES)])
def test_the_manifest_telemetry_range_must_be_well_formed(digest: str, first: int, last: int) -> None:
    facts = domain.ManifestFacts("m1", "AU-TRK-1001", "LOAD-1", (), T0, digest, first, last)
    with pytest.raises(InvalidArgument) as caught:
        domain.check_manifest(facts, mission_id="m1", vehicle_id="AU-TRK-1001", tms_load_id="LOAD-1",
                              photo_sha256=[])
    assert len(caught.value.violations) == 1


# --- usage and config --------------------------------------------------------------------------------

@given(seconds=st.integers(-10_000, 10**7))
def test_whole_minutes_round_down_never_negative(seconds: int) -> None:
    minutes = domain.whole_minutes(T0, T0 + timedelta(seconds=seconds))
    assert minutes == max(0, seconds // 60)


def test_settings_from_env() -> None:
    assert MissionSettings.from_env({}).check_in.threshold == 30
    custom = MissionSettings.from_env({"HAULMESH_CHECK_IN_FIRST_MISSIONS": "2",
                                       "HAULMESH_CHECK_IN_ENROUTE_INTERVAL_MINUTES": "15",
                                       "HAULMESH_GEOFENCE_RADIUS_METERS": "800"})
    assert custom.check_in.threshold == 2 and custom.check_in.enroute_interval == timedelta(minutes=15)
    assert custom.geofence_radius_meters == 800
    for bad in ({"HAULMESH_CHECK_IN_FIRST_MISSIONS": "2.5"}, {"HAULMESH_CHECK_IN_FIRST_MISSIONS": "x"},
                {"HAULMESH_GEOFENCE_RADIUS_METERS": "1"}):
        with pytest.raises(ConfigError):
            MissionSettings.from_env(bad)


# --- filters -----------------------------------------------------------------------------------------
# The grammar is the runtime's (tests/runtime/test_filters.py); here, the fields the mission lists offer.


def test_mission_and_vehicle_filters_select_by_their_fields() -> None:
    from services.mission import convert
    from services.runtime import parse_filter

    mission = mission_pb2.Mission(state=mission_pb2.Mission.STATE_ENROUTE, tender="tenders/t1",
                                  vehicle="vehicles/AU-TRK-1", load=mission_pb2.LoadDetails(tms_load_id="L-1"))
    mission.create_time.FromDatetime(T0)
    selected = parse_filter('state = ENROUTE AND tender = "tenders/t1" AND create_time >= "2026-11-25T00:00:00Z"',
                            convert.MISSION_FILTER)
    assert selected.matches(convert.mission_filter_values(mission))
    assert not parse_filter("state = ARRIVED", convert.MISSION_FILTER).matches(convert.mission_filter_values(mission))
    vehicle = vehicle_pb2.Vehicle(availability=vehicle_pb2.Vehicle.AVAILABILITY_ASSIGNED, home_region="US-TX-HOU")
    vehicle.capabilities.equipment.extend([DRY_VAN, REEFER])
    values = convert.vehicle_filter_values(vehicle)
    assert parse_filter("availability = ASSIGNED AND capabilities.equipment = REEFER_53FT",
                        convert.VEHICLE_FILTER).matches(values)
    assert not parse_filter("capabilities.hazmat_certified = true", convert.VEHICLE_FILTER).matches(values)
    for bad in ("state = PARKED", "colour = RED", "tender = tenders/x"):
        with pytest.raises(InvalidArgument) as caught:
            parse_filter(bad, convert.MISSION_FILTER)
        assert caught.value.reason == "INVALID_FILTER"


@given(lat=st.floats(allow_nan=True, allow_infinity=True), lon=st.floats(allow_nan=True, allow_infinity=True))
def test_location_validation_total(lat: float, lon: float) -> None:
    problems = {v.field for v in domain.location_violations(lat, lon, "origin")}
    valid = -90 <= lat <= 90 and -180 <= lon <= 180 and not (lat == 0 and lon == 0)
    assert (not problems) == valid


HOUSTON_ATLANTA_ROUTE = [(29.7604, -95.3698), (30.2266, -93.2174), (33.5186, -86.8104), (33.7490, -84.3880)]


def test_a_known_lane_gives_the_mission_its_route_from_stop_to_stop() -> None:
    pickup, delivery = (29.7499, -95.3584), (33.749, -84.388)
    facts = LaneFacts(markets=FACTS.markets, routes=(
        KnownRoute("Boston", ((40.71, -74.0), (42.36, -71.06)), 190.0),
        KnownRoute("Houston-Atlanta", tuple(HOUSTON_ATLANTA_ROUTE), 789.0)))

    def planned(*stops):
        return list(domain.plan_dispatch(_mission_between(*stops), T0, facts).route_points)

    assert planned(pickup, delivery) == [pickup, *HOUSTON_ATLANTA_ROUTE[1:-1], delivery]
    assert planned(pickup, (32.78, -96.8)) == []  # Dallas: no known route
    assert planned(delivery, pickup) == []  # a route has a direction


# --- rules on the generated messages -----------------------------------------------------------------

Exc = mission_pb2.MissionException


def test_domain_enums_take_the_generated_values() -> None:
    for enum, generated, prefix in [
            (State, mission_pb2.Mission.State, "STATE_"), (ExceptionKind, Exc.Kind, "KIND_"),
            (Severity, Exc.Severity, "SEVERITY_"), (Contingency, Exc.Contingency, "CONTINGENCY_"),
            (Availability, vehicle_pb2.Vehicle.Availability, "AVAILABILITY_"),
            (CheckInPoint, mission_pb2.CheckIn.Point, "POINT_")]:
        assert all(member == generated.Value(prefix + member.name) for member in enum)
    assert (domain.PROCEED, domain.HOLD) == (mission_pb2.CheckIn.OUTCOME_PROCEED, mission_pb2.CheckIn.OUTCOME_HOLD)


def _enroute_mission():
    mission = mission_pb2.Mission(name="missions/m1", state=State.ENROUTE, vehicle="vehicles/AU-TRK-1001")
    for lat, lon in (HOUSTON, ATLANTA):
        mission.stops.add(location={"lat": lat, "lon": lon})
    mission.planned_route.add(lat=HOUSTON[0], lon=HOUSTON[1])
    return mission


def test_raising_an_exception_picks_the_contingency_and_a_reroute_replaces_the_plan() -> None:
    mission = _enroute_mission()
    exc, moved = domain.raise_exception(mission, Exc(kind=Exc.KIND_SENSOR_FAULT, severity=Exc.SEVERITY_CRITICAL),
                                        "operator/ops", T0)
    assert moved and (exc.exception_id, exc.contingency) == ("exc-1", Contingency.MINIMAL_RISK_STOP)
    assert domain.mission_status(mission) == Status(State.EXCEPTION, State.ENROUTE, (ExceptionKind.SENSOR_FAULT,),
                                                    (ExceptionKind.SENSOR_FAULT,))  # a minimal-risk stop stops it
    detour = Exc(kind=Exc.KIND_ROAD_CLOSURE, reroute_waypoints=[{"lat": 31.0, "lon": -90.0}])
    exc, moved = domain.raise_exception(mission, detour, "operator/ops", T0)
    assert not moved and exc.contingency == Contingency.REROUTE and exc.severity == Severity.WARNING
    assert [(p.lat, p.lon) for p in mission.planned_route] == [(31.0, -90.0), ATLANTA]
    assert domain.resolve_exception(mission, "exc-1", "sensor cleaned", "operator/ops", T0) == (mission.exceptions[0],
                                                                                                 False)
    assert domain.resolve_exception(mission, "exc-1", "again", "operator/ops", T0) is None
    assert domain.resolve_exception(mission, "exc-2", "detoured", "operator/ops", T0)[1]
    assert domain.mission_status(mission) == Status(State.ENROUTE)


def test_a_closure_reported_without_waypoints_takes_the_lane_facts_detour_or_stops() -> None:
    lanes = load_lane_facts({})
    mission = _enroute_mission()
    on_i59 = Exc(kind=Exc.KIND_ROAD_CLOSURE, description="road_closure_ahead: I-59 closed",
                 location={"lat": 30.8, "lon": -89.55})  # between Slidell and Hattiesburg
    exc, _ = domain.raise_exception(mission, on_i59, "vehicle/AU-TRK-1001", T0, lanes)
    assert exc.contingency == Contingency.REROUTE
    waypoints = [(p.lat, p.lon) for p in exc.reroute_waypoints]
    assert waypoints[0] == lanes.roads.places["Slidell, LA"] and waypoints[-1] == ATLANTA
    assert lanes.roads.places["Hattiesburg, MS"] not in waypoints
    assert exc.description.startswith("road_closure_ahead: I-59 closed; detour via I-10, I-65, I-85 (")
    assert "avoiding I-59 Slidell, LA - Hattiesburg, MS" in exc.description
    assert [(p.lat, p.lon) for p in mission.planned_route] == [*waypoints, ATLANTA]
    # Nowhere near a mapped road (or no location at all): no route is guessed; the truck stops.
    offshore = Exc(kind=Exc.KIND_ROAD_CLOSURE, location={"lat": 27.0, "lon": -90.0})
    exc, _ = domain.raise_exception(mission, offshore, "vehicle/AU-TRK-1001", T0, lanes)
    assert exc.contingency == Contingency.MINIMAL_RISK_STOP and not exc.reroute_waypoints
    assert exc.description.startswith("no known road around it: the vehicle stops")
    before_departure = mission_pb2.Mission(name="missions/m2", state=State.PRE_TRIP)
    before_departure.stops.add(location={"lat": HOUSTON[0], "lon": HOUSTON[1]})
    exc, _ = domain.raise_exception(before_departure, Exc(kind=Exc.KIND_ROAD_CLOSURE), "operator/ops", T0, lanes)
    assert exc.contingency == Contingency.HOLD


def test_an_overdue_check_in_is_escalated_once_per_due_time() -> None:
    grace = timedelta(minutes=10)
    mission = _enroute_mission()
    mission.start_time.CopyFrom(to_timestamp(T0))
    assert domain.escalate_overdue(mission, T0 + timedelta(days=1), grace) is None  # no check-ins required
    mission.check_in_requirement.required = True
    domain.refresh_check_in_due(mission, domain.CheckInPolicy(), T0)
    due = mission.check_in_requirement.next_due_time.ToDatetime(tzinfo=UTC)
    assert due == T0 + timedelta(hours=1)  # en route: an hour after departure
    assert domain.escalate_overdue(mission, due + grace - timedelta(seconds=1), grace) is None  # within the grace
    late = domain.escalate_overdue(mission, due + grace, grace)
    assert late == domain.OverdueCheckIn(CheckInPoint.ENROUTE, due, grace)
    assert mission.check_in_requirement.escalate_time.ToDatetime(tzinfo=UTC) == due + grace
    assert domain.escalate_overdue(mission, due + 2 * grace, grace) is None  # once per due time
    domain.refresh_check_in_due(mission, domain.CheckInPolicy(), due + grace)  # same due: still escalated
    assert mission.check_in_requirement.HasField("escalate_time")
    mission.check_ins.add(point=CheckInPoint.ENROUTE, outcome=domain.PROCEED, record_time=to_timestamp(due + grace))
    domain.refresh_check_in_due(mission, domain.CheckInPolicy(), due + grace)  # recorded: the next one is due
    assert not mission.check_in_requirement.HasField("escalate_time")
    assert mission.check_in_requirement.next_due_time.ToDatetime(tzinfo=UTC) == due + grace + timedelta(hours=1)


def test_a_hold_check_in_comes_with_a_check_in_hold_exception() -> None:
    mission = _enroute_mission()
    given = mission_pb2.CheckIn(point=CheckInPoint.ENROUTE, outcome=domain.HOLD, notes="smoke")
    check_in, hold = domain.record_check_in(mission, given, "operator/ops", T0)
    assert check_in.check_in_id == "chk-1" and hold is not None
    assert (hold.kind, hold.severity, hold.description) == (ExceptionKind.CHECK_IN_HOLD, Severity.WARNING,
                                                            "check-in chk-1 HOLD: smoke")
    assert domain.record_check_in(mission, mission_pb2.CheckIn(point=CheckInPoint.ENROUTE, outcome=domain.PROCEED),
                                  "operator/ops", T0)[1] is None


def _ts(when: datetime):
    return to_timestamp(when)


def test_usage_without_telemetry_meters_hours_and_dwell_from_the_geofence_times() -> None:
    mission = _enroute_mission()
    mission.route_miles = 841.0
    mission.start_time.FromDatetime(T0)
    mission.stops[0].arrive_time.FromDatetime(T0 - timedelta(hours=2))  # dispatch ack: not a dwell
    assert domain.record_geofence(mission, 0, entered=True, device_time=_ts(T0 - timedelta(minutes=30, seconds=59)))
    assert domain.record_geofence(mission, 0, entered=False, device_time=_ts(T0))
    mission.stops[0].depart_time.FromDatetime(T0)
    mission.stops[1].arrive_time.FromDatetime(T0 + timedelta(hours=14))
    assert domain.record_geofence(mission, 1, entered=True, device_time=_ts(T0 + timedelta(hours=14)))
    mission.stops[1].depart_time.FromDatetime(T0 + timedelta(hours=14, minutes=45))
    mission.proof_of_delivery.manifest_details.deliver_time.FromDatetime(T0 + timedelta(hours=14, minutes=45))
    usage = domain.usage(mission)
    assert (usage.miles, usage.hours) == (841.0, 14.75)
    basis = invoice_pb2.StopDwell.Basis
    assert [(d.stop_index, d.dwell_minutes, d.basis) for d in usage.stop_dwells] == [
        (0, 30, basis.BASIS_GEOFENCE), (1, 45, basis.BASIS_GEOFENCE_ENTRY_TO_DELIVERY)]
    # The truck leaves the delivery fence after delivery: detention still ends at hand-over.
    assert domain.record_geofence(mission, 1, entered=False, device_time=_ts(T0 + timedelta(hours=15)))
    assert [d.dwell_minutes for d in domain.stop_dwells(mission)] == [30, 45]


def test_geofence_crossings_keep_the_first_visit() -> None:
    mission = _enroute_mission()
    assert not domain.record_geofence(mission, 5, entered=True, device_time=_ts(T0))  # no such stop
    assert not domain.record_geofence(mission, 0, entered=True, device_time=mission_pb2.Stop().arrive_time)
    assert domain.record_geofence(mission, 0, entered=True, device_time=_ts(T0 + timedelta(minutes=5)))
    assert domain.record_geofence(mission, 0, entered=True, device_time=_ts(T0))  # an earlier report wins
    assert not domain.record_geofence(mission, 0, entered=True, device_time=_ts(T0 + timedelta(minutes=9)))
    assert not domain.record_geofence(mission, 0, entered=False, device_time=_ts(T0 - timedelta(minutes=1)))
    assert domain.record_geofence(mission, 0, entered=False, device_time=_ts(T0 + timedelta(minutes=50)))
    assert not domain.record_geofence(mission, 0, entered=False, device_time=_ts(T0 + timedelta(hours=3)))
    assert domain.stop_dwells(mission)[0].dwell_minutes == 50
    # Inside a stop still (no exit) or never entered: nothing measured, nothing billed.
    mission.stops[0].ClearField("geofence_exit_time")
    assert domain.stop_dwells(mission) == []


def _frame(seq: int, minutes: float, lat: float, lon: float, *, mission_id: str = "m1",
           received_after_seconds: float = 1.0) -> domain.MissionFrame:
    when = T0 + timedelta(minutes=minutes)
    payload = frame_pb2.FramePayload(vehicle_id="AU-TRK-1001", sequence=seq, boot_id="b", device_time=_ts(when),
                                     kind=frame_pb2.FramePayload.KIND_POSITION, mission_id=mission_id,
                                     position=frame_pb2.Position(lat=lat, lon=lon))
    return domain.MissionFrame(payload.SerializeToString(deterministic=True),
                               when + timedelta(seconds=received_after_seconds))


def test_usage_is_measured_from_the_frames_with_provenance() -> None:
    mission = _enroute_mission()
    route = [HOUSTON, (34.5, -90.0), ATLANTA]
    del mission.planned_route[:]
    for lat, lon in route:
        mission.planned_route.add(lat=lat, lon=lon)
    frames = [_frame(10, 0, *route[0]), _frame(11, 0.25, *route[0]),
              _frame(13, 600, *route[2], received_after_seconds=3600.0),  # after a 10-hour gap, replayed
              _frame(14, 600.25, *route[2])]
    usage = domain.measured_usage(mission, frames, gap_seconds=120, circuity_factor=1.13)
    # Bridged along the planned road through its bend, not the straight line.
    along = great_circle_miles(*route[0], *route[1]) + great_circle_miles(*route[1], *route[2])
    assert along > great_circle_miles(*HOUSTON, *ATLANTA) + 5
    assert usage.miles == round(along, 1) and usage.hours == round(600.25 / 60, 3)
    p = usage.provenance
    assert (p.mission, p.vehicle, p.first_sequence, p.last_sequence, p.frame_count) == (
        "missions/m1", "vehicles/AU-TRK-1001", 10, 14, 4)
    assert p.frames_missing == 1 and p.source == invoice_pb2.UsageProvenance.SOURCE_POSITIONS
    assert [(g.after_sequence, g.before_sequence, g.seconds) for g in p.gaps] == [(11, 13, 35985.0)]
    assert p.gaps[0].bridged_miles == round(along, 1)
    assert p.telemetry_log_sha256 == telemetry_log_sha256(f.payload for f in frames)
    assert (p.freshness_p50_seconds, p.freshness_p95_seconds) == (1.0, 3600.0)
    assert (p.gap_threshold_seconds, p.circuity_factor) == (120, 1.13)


def test_a_mission_with_too_many_frames_is_refused_clearly() -> None:
    domain.check_frame_budget(10, 10, "missions/m1")
    with pytest.raises(FailedPrecondition) as caught:
        domain.check_frame_budget(11, 10, "missions/m1")
    assert caught.value.reason == "MISSION_FRAMES_EXCEEDED"


def test_the_proofs_telemetry_log_is_verified_refused_or_disputed() -> None:
    frames = [_frame(s, s / 4, 30.0, -95.0) for s in range(5, 9)]
    payloads = [f.payload for f in frames]
    manifest = mission_pb2.DeliveryManifest(telemetry_log_sha256=telemetry_log_sha256(payloads),
                                            telemetry_first_sequence=5, telemetry_last_sequence=8)
    verified = domain.verify_telemetry_log(manifest, payloads, T0)
    assert (verified.result, verified.reason, verified.frames_stored, verified.frames_missing) == (
        mission_pb2.TelemetryVerification.RESULT_VERIFIED, "TELEMETRY_LOG_MATCHES", 4, 0)
    # One frame not stored: accepted, but DISPUTED with the count; never silently trusted.
    disputed = domain.verify_telemetry_log(manifest, payloads[:2] + payloads[3:], T0)
    assert (disputed.result, disputed.frames_missing) == (mission_pb2.TelemetryVerification.RESULT_DISPUTED, 1)
    # Every frame stored but a different digest: refused, naming the range.
    manifest.telemetry_log_sha256 = "0" * 64
    with pytest.raises(InvalidArgument) as caught:
        domain.verify_telemetry_log(manifest, payloads, T0)
    assert caught.value.reason == "POD_TELEMETRY_HASH_MISMATCH" and "#5..#8" in caught.value.message
    assert caught.value.metadata["first_sequence"] == "5"
    # Frames of the mission stored before the range: the digest matches, but the log leaves part of the mission out.
    manifest.telemetry_log_sha256 = telemetry_log_sha256(payloads)
    partial = domain.verify_telemetry_log(manifest, payloads, T0, earlier_frames=True)
    assert (partial.result, partial.reason) == (mission_pb2.TelemetryVerification.RESULT_DISPUTED, "LOG_INCOMPLETE")


def test_a_disputed_proof_waits_then_escalates_and_lasting_disputes_escalate_at_once() -> None:
    disputed = mission_pb2.TelemetryVerification(result=mission_pb2.TelemetryVerification.RESULT_DISPUTED,
                                                 reason="FRAMES_MISSING")
    submitted = T0
    assert domain.billing_gate(disputed, submitted, T0 + timedelta(seconds=59), 60) == domain.WAIT
    assert domain.billing_gate(disputed, submitted, T0 + timedelta(seconds=60), 60) == domain.ESCALATE
    for lasting in ("TELEMETRY_HASH_MISMATCH", "LOG_INCOMPLETE"):
        disputed.reason = lasting
        assert domain.billing_gate(disputed, submitted, T0, 3600) == domain.ESCALATE
    for result in (mission_pb2.TelemetryVerification.RESULT_VERIFIED,
                   mission_pb2.TelemetryVerification.RESULT_UNSPECIFIED):
        assert domain.billing_gate(mission_pb2.TelemetryVerification(result=result), submitted, T0, 0) == domain.BILL


def test_billing_retries_back_off_to_the_limit() -> None:
    assert [domain.billing_retry_delay(n, 5, 3600) for n in (1, 2, 3, 10, 60)] == [10, 20, 40, 3600, 3600]


def test_nothing_measured_without_two_fixes_bills_the_plan() -> None:
    mission = _enroute_mission()
    mission.route_miles = 841.0
    usage = domain.measured_usage(mission, [_frame(1, 0, *HOUSTON)], gap_seconds=120, circuity_factor=1.13)
    assert usage.miles == 841.0 and not usage.HasField("provenance")
