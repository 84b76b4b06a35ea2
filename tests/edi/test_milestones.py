"""The mesh's events as 214 statuses: each event kind by hand, the partner's preferences, and under hypothesis that
any order of a trip's events with replays gives each milestone at most once, in order, and X6 no more often than
the cadence."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haulmesh.events.v1 import event_pb2, telemetry_events_pb2
from haulmesh.mission.v1 import mission_pb2
from haulmesh.telemetry.v1 import frame_pb2
from services.edi.domain import (
    SCHEMA_214,
    CityState,
    Coordinates,
    Delimiters,
    LoadTender,
    MilestoneState,
    PositionFormat,
    ShipmentReference,
    StatusError,
    StatusPreferences,
    StopPlan,
    equipment_for,
    milestones,
    read,
    read_load_tender,
    shipment_status,
    start_milestones,
    status_214,
    stop_plans,
    validate,
)

from .builders import sample

T0 = datetime(2026, 3, 16, 13, 0, tzinfo=UTC)  # 08:00 in Dallas (CDT)
MISSION = "missions/01J9Z4MISSION"
DALLAS, HOUSTON = CityState("Dallas", "TX"), CityState("Houston", "TX")
STOPS = (StopPlan(1, True, "America/Chicago", DALLAS), StopPlan(2, False, "America/Chicago", HOUSTON))
TRUCK = equipment_for("vehicles/AU-TRK-1001", "HMSH")
ALL = StatusPreferences(events=frozenset({"X3", "AF", "X6", "X1", "D1", "CD", "AG", "SD"}), position_minutes=30,
                        eta_threshold_minutes=15)
END = T0 + timedelta(days=2)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def start(stops: tuple[StopPlan, ...] = STOPS) -> MilestoneState:
    return start_milestones(MISSION, "PF-DAL-HOU-0315", stops, equipment=TRUCK)


def stamp(message, name: str, when: datetime) -> None:
    getattr(message, name).FromDatetime(when)


def geofence(entered: bool, stop: int, minutes: float, dwell: float = 0, lat: float = 32.78,
             lon: float = -96.80, mission: str = MISSION) -> event_pb2.Event:
    context = dict(mission=mission, vehicle="vehicles/AU-TRK-1001", stop_index=stop,
                   stop_type=mission_pb2.Stop.TYPE_PICKUP if stop == 0 else mission_pb2.Stop.TYPE_DELIVERY)
    event = event_pb2.Event(id=f"geo-{entered}-{stop}-{minutes}", type="haulmesh.telemetry.v1.geofence")
    payload = event.telemetry_geofence_entered if entered else event.telemetry_geofence_exited
    payload.context.CopyFrom(telemetry_events_pb2.GeofenceContext(**context))
    payload.context.location.lat, payload.context.location.lon = lat, lon
    stamp(payload.context, "device_time", at(minutes))
    if not entered and dwell:
        payload.dwell.FromTimedelta(timedelta(minutes=dwell))
    return event


def mission(state: int, *, arrived: float | None = None, departed: float | None = None,
            delivery_entered: float | None = None, delivered: float | None = None, stops: int = 2,
            drop: tuple[float, float] | None = None) -> mission_pb2.Mission:
    """The mission as a state change carries it, with the times its stops recorded (minutes after T0)."""
    out = mission_pb2.Mission(name=MISSION, state=state)
    for index in range(stops):
        stop = out.stops.add(type=mission_pb2.Stop.TYPE_PICKUP if index == 0 else mission_pb2.Stop.TYPE_DELIVERY)
        stop.location.lat, stop.location.lon = (32.78, -96.80) if index == 0 else (29.76, -95.36)
    pickup, delivery = out.stops[0], out.stops[-1]
    if arrived is not None:
        stamp(pickup, "arrive_time", at(arrived))
    if departed is not None:
        stamp(pickup, "depart_time", at(departed))
    if delivery_entered is not None:
        stamp(delivery, "geofence_enter_time", at(delivery_entered))
        stamp(delivery, "arrive_time", at(delivery_entered))
    if delivered is not None:
        stamp(delivery, "depart_time", at(delivered))
        stamp(out.proof_of_delivery.manifest_details, "deliver_time", at(delivered))
    if drop is not None:
        stamp(out.stops[1], "geofence_enter_time", at(drop[0]))
        stamp(out.stops[1], "geofence_exit_time", at(drop[1]))
    return out


def changed(state: int, **times) -> event_pb2.Event:
    event = event_pb2.Event(id=f"state-{state}-{sorted(times.items())}", type="haulmesh.mission.v1.state_changed")
    event.mission_state_changed.mission.CopyFrom(mission(state, **times))
    return event


def exception(exception_id: str, kind: int, minutes: float, *, severity: int = 2,
              description: str = "") -> event_pb2.Event:
    event = event_pb2.Event(id=f"exc-{exception_id}", type="haulmesh.mission.v1.exception_raised")
    raised = event.mission_exception_raised
    raised.mission, raised.tender = MISSION, "tenders/T1"
    raised.exception.CopyFrom(mission_pb2.MissionException(exception_id=exception_id, kind=kind, severity=severity,
                                                           description=description))
    raised.exception.location.lat, raised.exception.location.lon = 31.5, -96.3
    stamp(raised.exception, "raise_time", at(minutes))
    return event


def eta(stop: int, estimate: float, device: float) -> event_pb2.Event:
    event = event_pb2.Event(id=f"eta-{stop}-{estimate}-{device}", type="haulmesh.telemetry.v1.eta_updated")
    update = event.telemetry_eta_updated
    update.mission, update.stop_index = MISSION, stop
    stamp(update, "estimated_arrive_time", at(estimate))
    stamp(update, "device_time", at(device))
    return event


def frame(sequence: int, minutes: float, lat: float = 31.0, lon: float = -96.0,
          mission_id: str = "01J9Z4MISSION") -> frame_pb2.FramePayload:
    out = frame_pb2.FramePayload(vehicle_id="AU-TRK-1001", sequence=sequence, kind=frame_pb2.FramePayload.KIND_POSITION,
                                 mission_id=mission_id, position=frame_pb2.Position(lat=lat, lon=lon))
    stamp(out, "device_time", at(minutes))
    return out


def feed(state: MilestoneState, events, prefs: StatusPreferences = ALL, now: datetime | None = None, **options):
    """Every event in order, at ``now`` (by default: a frame's device time, anything else END); what is said."""
    said = []
    for event in events:
        when = now or (event.device_time.ToDatetime(tzinfo=UTC) if isinstance(event, frame_pb2.FramePayload)
                       else END)
        out, state = milestones(state, event, prefs, when, **options)
        said += out
    return said, state


def codes(said) -> list[str]:
    return [s.status for s in said]


def test_a_run_from_dispatch_to_completion() -> None:
    dispatched = event_pb2.Event(id="d", type="haulmesh.mission.v1.dispatched")
    dispatched.mission_dispatched.mission.CopyFrom(mission(mission_pb2.Mission.STATE_DISPATCHED))
    events = [
        dispatched,
        changed(mission_pb2.Mission.STATE_PRE_TRIP, arrived=0),
        changed(mission_pb2.Mission.STATE_ENROUTE, arrived=0, departed=20),
        frame(1, 21), frame(2, 40), frame(3, 51), frame(4, 52),
        eta(1, 300, 51), eta(1, 310, 60), eta(1, 330, 70),
        geofence(True, 1, 320, lat=29.76, lon=-95.36),
        eta(1, 400, 321), frame(5, 400),
        changed(mission_pb2.Mission.STATE_ARRIVED, arrived=0, departed=20, delivery_entered=320),
        changed(mission_pb2.Mission.STATE_DELIVERED, arrived=0, departed=20, delivery_entered=320, delivered=380),
        changed(mission_pb2.Mission.STATE_COMPLETED, arrived=0, departed=20, delivery_entered=320, delivered=380),
        geofence(False, 1, 390, dwell=70),
    ]
    said, state = feed(start(), events)
    assert [(s.status, s.time, s.stop_sequence) for s in said] == [
        ("X3", at(0), 1), ("AF", at(20), 1),
        ("X6", at(21), None), ("X6", at(51), None),  # 40 is within the 30-minute cadence of 21; 52 of 51
        ("AG", at(300), 2), ("AG", at(330), 2),  # 310 moved 10 minutes (< 15): not sent; 330 moved 30 from 300
        ("X1", at(320), 2), ("D1", at(380), 2), ("CD", at(390), 2)]
    assert said[0].location == Coordinates(32.78, -96.8) and said[0].equipment == TRUCK
    assert said[2].location == Coordinates(31.0, -96.0)
    written = status_214(shipment_status(state, said, scac="HMSH", references=(ShipmentReference("BM", "B-1"),)),
                         control="0001")
    assert validate(SCHEMA_214, written.segments, Delimiters()) == ()
    lines = [str(s) for s in written.segments]
    assert lines[:2] == ["B10*01J9Z4MISSION*PF-DAL-HOU-0315*HMSH", "L11*B-1*BM"]
    assert "AT7*X3*NS***20260316*0800*LT" in lines and "MS1****0964800*0324648*W*N" in lines
    assert "MS2*HMSH*AUTRK1001*TL" in lines and "L11*1*QN" in lines
    assert "AT7*X6*NS***20260316*0821*LT" in lines and "MS1****0960000*0310000*W*N" in lines


def test_geofences_give_the_pickup_and_a_missed_entry_is_filled_from_the_dwell() -> None:
    said, _ = feed(start(), [geofence(True, 0, 5), geofence(False, 0, 30, dwell=25),
                                 changed(mission_pb2.Mission.STATE_ENROUTE, arrived=0, departed=31)])
    assert [(s.status, s.time) for s in said] == [("X3", at(5)), ("AF", at(30))]
    said, _ = feed(start(), [geofence(False, 0, 30, dwell=25)])
    here = Coordinates(32.78, -96.8)
    assert [(s.status, s.time, s.location) for s in said] == [("X3", at(5), here), ("AF", at(30), here)]
    by_place = StatusPreferences(position=PositionFormat.CITYSTATE)
    said, _ = feed(start(), [geofence(False, 0, 30, dwell=25)], by_place)
    assert [s.location for s in said] == [DALLAS, DALLAS]  # the 204's place, not a lookup


def test_a_replay_says_nothing_and_a_late_milestone_never_follows_a_later_one() -> None:
    state = start()
    first, state = milestones(state, geofence(True, 0, 5), ALL, END)
    again, state = milestones(state, geofence(True, 0, 5), ALL, END)
    assert codes(first) == ["X3"] and again == ()
    arrived, state = milestones(state, geofence(True, 1, 300), ALL, END)  # the delivery's entry came first
    late, state = milestones(state, changed(mission_pb2.Mission.STATE_ENROUTE, arrived=5, departed=20), ALL, END)
    assert codes(arrived) == ["X1"] and late == ()


def test_unwanted_milestones_are_passed_silently_and_still_ordered() -> None:
    prefs = StatusPreferences(events=frozenset({"AF", "D1"}))
    said, _ = feed(start(), [geofence(True, 0, 5), geofence(False, 0, 30), geofence(True, 1, 300),
                             changed(mission_pb2.Mission.STATE_DELIVERED, arrived=5, departed=30,
                                     delivery_entered=300, delivered=330), geofence(False, 1, 340)], prefs)
    assert [(s.status, s.time) for s in said] == [("AF", at(30)), ("D1", at(330))]


def test_an_intermediate_drop_is_delivered_when_the_truck_leaves_it() -> None:
    stops = (STOPS[0], StopPlan(2, False, "America/Chicago", CityState("Waco", "TX")),
             StopPlan(3, False, "America/Chicago", HOUSTON))
    said, _ = feed(start(stops), [geofence(True, 0, 0), geofence(False, 0, 20), geofence(True, 1, 100),
                                  geofence(False, 1, 130), geofence(True, 2, 300)])
    assert [(s.status, s.stop_sequence, s.time) for s in said] == [
        ("X3", 1, at(0)), ("AF", 1, at(20)), ("X1", 2, at(100)), ("D1", 2, at(130)), ("CD", 2, at(130)),
        ("X1", 3, at(300))]
    said, _ = feed(start(stops), [changed(mission_pb2.Mission.STATE_DELIVERED, arrived=0, departed=20,
                                          delivery_entered=300, delivered=320, stops=3, drop=(100, 130))])
    assert [(s.status, s.stop_sequence) for s in said] == [("X3", 1), ("AF", 1), ("X1", 2), ("D1", 2), ("CD", 2),
                                                           ("X1", 3), ("D1", 3)]


def test_exceptions_become_sd_with_their_reason_once() -> None:
    sensor = mission_pb2.MissionException.KIND_SENSOR_FAULT
    said, state = feed(start(), [
        geofence(False, 0, 20, dwell=20),
        exception("exc-1", sensor, 60, description="front lidar degraded"),
        exception("exc-1", sensor, 60, description="front lidar degraded"),
        exception("exc-2", mission_pb2.MissionException.KIND_ADVERSE_WEATHER, 70, severity=1),  # INFO: no delay
        exception("exc-3", mission_pb2.MissionException.KIND_ROAD_CLOSURE, 80),
    ])
    sd = [s for s in said if s.status == "SD"]
    assert [(s.reason, s.time, s.remarks) for s in sd] == [
        ("AI", at(60), ("DRIVERLESS TRUCK SENSOR FAULT", "front lidar degraded")),
        ("BE", at(80), ("ROAD CLOSED ON ROUTE",))]
    assert sd[0].location == Coordinates(31.5, -96.3) and sd[0].zone == "America/Chicago"
    assert state.exceptions == ("exc-1", "exc-3")
    done, state = feed(state, [changed(mission_pb2.Mission.STATE_DELIVERED, arrived=0, departed=20,
                                       delivery_entered=300, delivered=330)])
    after, _ = feed(state, [exception("exc-4", sensor, 340)])
    assert codes(done) == ["X1", "D1"] and after == []
    quiet, _ = feed(start(), [exception("exc-1", sensor, 60)], StatusPreferences())
    assert quiet == []


def test_etas_only_for_a_delivery_not_yet_reached_and_newer_frames() -> None:
    state = start()
    said, state = feed(state, [eta(0, 10, 1), eta(1, 300, 50), eta(1, 340, 40), eta(1, 320, 50),
                               eta(1, 316, 60), eta(1, 290, 61)])
    # the pickup's estimate is no AG; an estimate from frame 40 or 50 again after 50 changes nothing;
    # 316 moved 16 from the 300 sent; 290 moved 26 from 316
    assert [(s.status, s.time) for s in said] == [("AG", at(300)), ("AG", at(316)), ("AG", at(290))]
    assert said[0].reason == "NS" and said[0].stop_sequence == 2
    late, _ = feed(state, [geofence(True, 1, 280), eta(1, 400, 281)])
    assert codes(late) == ["X1"]
    assert feed(start(), [eta(1, 300, 50)], StatusPreferences())[0] == []  # AG not wanted


def test_positions_only_en_route_fresh_and_at_the_cadence() -> None:
    state = start()
    before, state = feed(state, [frame(1, 1)], now=at(2))
    assert before == []  # not departed yet
    _, state = feed(state, [geofence(False, 0, 10)], now=at(10))
    said = []
    for sequence, minutes in enumerate((11, 20, 41, 42, 71, 200), 2):
        out, state = milestones(state, frame(sequence, minutes), ALL, at(minutes + 0.5))
        said += out
    assert [s.time for s in said] == [at(11), at(41), at(71), at(200)]
    backlog, state = feed(state, [frame(9, 240)], now=at(300))  # replayed after an outage: too old to report
    assert backlog == [] and state.position_time == at(200)
    other, _ = feed(state, [frame(10, 301, mission_id="01OTHER")], now=at(301))
    unplaced, _ = feed(state, [frame(11, 302, lat=0, lon=0)], now=at(302))
    assert other == [] and unplaced == []
    _, state = feed(state, [geofence(True, 1, 310)], now=at(310))
    assert feed(state, [frame(12, 400)], now=at(400))[0] == []  # arrived: no longer en route


def test_city_and_state_from_the_callers_lookup_else_coordinates() -> None:
    prefs = StatusPreferences(events=frozenset({"AF", "X6"}), position_minutes=30, position=PositionFormat.CITYSTATE)
    _, state = feed(start(), [geofence(False, 0, 10)], prefs)
    found, _ = feed(state, [frame(1, 20)], prefs, now=at(20), locate=lambda lat, lon: CityState("Corsicana", "TX"),
                    zone_at=lambda lat, lon: "America/Denver")
    assert [(s.location, s.zone) for s in found] == [(CityState("Corsicana", "TX"), "America/Denver")]
    fallback, _ = feed(state, [frame(1, 20)], prefs, now=at(20), locate=lambda lat, lon: None)
    assert fallback[0].location == Coordinates(31.0, -96.0) and fallback[0].zone == "America/Chicago"


def test_a_time_after_now_is_sent_as_now_but_an_estimate_is_not() -> None:
    said, _ = feed(start(), [geofence(True, 0, 30), eta(1, 500, 31)], now=at(10))
    assert [(s.status, s.time) for s in said] == [("X3", at(10)), ("AG", at(500))]


def test_other_missions_and_other_events_say_nothing() -> None:
    foreign = geofence(True, 0, 5, mission="missions/OTHER")
    lapsed = event_pb2.Event(id="x", type="haulmesh.tender.v1.lapsed")
    lapsed.tender_lapsed.SetInParent()
    cancelled = changed(mission_pb2.Mission.STATE_CANCELLED)
    assert feed(start(), [foreign, lapsed, cancelled, geofence(True, 7, 5)])[0] == []
    with pytest.raises(StatusError, match="aware"):
        milestones(start(), foreign, ALL, datetime(2026, 3, 16))


@pytest.mark.parametrize("options", [dict(events=frozenset({"ZZ"})), dict(events="X3"), dict(position_minutes=0),
                                     dict(eta_threshold_minutes=True), dict(position="dms")])
def test_preferences_that_cannot_work_are_refused(options) -> None:
    with pytest.raises(StatusError):
        StatusPreferences(**options)


def test_preferences_take_the_partner_configs_list_and_strings() -> None:
    prefs = StatusPreferences(events=("X3", "AG"), position="citystate")  # type: ignore[arg-type]
    assert prefs.events == frozenset({"X3", "AG"}) and prefs.eta_wanted and not prefs.positions_wanted
    assert prefs.position is PositionFormat.CITYSTATE


def test_a_shipment_starts_from_the_204_and_round_trips_through_plain_values() -> None:
    [reading] = read(sample("204_original.edi"))
    tender = read_load_tender(reading.groups[0].sets[0].transaction)
    assert isinstance(tender, LoadTender)
    plans = stop_plans(tender, ("America/Chicago", "America/Chicago"))
    assert plans == (StopPlan(1, True, "America/Chicago", CityState("Dallas", "TX", "US")),
                     StopPlan(2, False, "America/Chicago", CityState("Houston", "TX", "US")))
    with pytest.raises(StatusError, match="zones"):
        stop_plans(tender, ("America/Chicago",))
    odd = dataclasses.replace(tender, stops=tuple(
        dataclasses.replace(stop, place=dataclasses.replace(stop.place, state="Texas")) for stop in tender.stops))
    assert [p.place for p in stop_plans(odd, ("America/Chicago", "America/Chicago"))] == [None, None]
    with pytest.raises(StatusError, match="zone"):
        start_milestones(MISSION, "S", (plans[0], StopPlan(2, False, "Nowhere/Town")))
    with pytest.raises(StatusError, match="mission"):
        start_milestones("01J9", "S", plans)
    _, state = feed(start(), [geofence(True, 0, 5), geofence(False, 0, 20), frame(1, 30), eta(1, 300, 30),
                              exception("exc-1", 1, 40)], now=at(31))
    assert MilestoneState.from_dict(state.to_dict()) == state
    assert equipment_for("AU-TRK-1001-EXTRA-LONG", "HMSH").number == "1EXTRALONG"


# --- any order of a trip's events, with replays --------------------------------------------------------------------


def _trip() -> list:
    """A truthful three-stop trip: every kind of event, at its device time."""
    stops = 3
    return [
        changed(mission_pb2.Mission.STATE_PRE_TRIP, arrived=0, stops=stops),
        geofence(True, 0, 2), geofence(False, 0, 30, dwell=28),
        changed(mission_pb2.Mission.STATE_ENROUTE, arrived=0, departed=29, stops=stops),
        *[frame(n, 30 + 7 * n) for n in range(1, 40)],
        eta(2, 400, 40), eta(2, 405, 50), eta(2, 430, 60), eta(1, 120, 45),
        exception("exc-1", mission_pb2.MissionException.KIND_SENSOR_FAULT, 50),
        exception("exc-2", mission_pb2.MissionException.KIND_ROAD_CLOSURE, 90),
        geofence(True, 1, 120), geofence(False, 1, 150, dwell=30),
        geofence(True, 2, 400),
        changed(mission_pb2.Mission.STATE_ARRIVED, arrived=0, departed=29, delivery_entered=400, stops=stops,
                drop=(120, 150)),
        changed(mission_pb2.Mission.STATE_DELIVERED, arrived=0, departed=29, delivery_entered=400, delivered=430,
                stops=stops, drop=(120, 150)),
        geofence(False, 2, 440, dwell=40),
    ]


THREE = (STOPS[0], StopPlan(2, False, "America/Chicago", CityState("Waco", "TX")),
         StopPlan(3, False, "America/Chicago", HOUSTON))
_RANK = {("X3", 1): 0, ("AF", 1): 2, ("X1", 2): 3, ("D1", 2): 4, ("CD", 2): 5, ("X1", 3): 6, ("D1", 3): 7,
         ("CD", 3): 8}


def test_the_trip_in_order_says_every_milestone() -> None:
    said, _ = feed(start(THREE), _trip())
    assert [(s.status, s.stop_sequence) for s in said if s.status not in ("X6", "AG", "SD")] == list(_RANK)
    assert [s.time for s in said if s.status == "X6"] == [at(m) for m in range(37, 303, 35)]  # cadence 30, 7 min
    assert [(s.status, s.stop_sequence, s.time) for s in said if s.status in ("AG", "SD")] == [
        ("AG", 3, at(400)), ("AG", 3, at(430)), ("AG", 2, at(120)), ("SD", None, at(50)), ("SD", None, at(90))]


@settings(max_examples=80, deadline=None)
@given(st.permutations(range(len(_trip()))), st.lists(st.integers(0, len(_trip()) - 1), max_size=20),
       st.sampled_from([10, 30, 60]))
def test_any_order_and_replays_give_each_milestone_at_most_once_in_order(order, replays, cadence) -> None:
    trip = _trip()
    sequence = [trip[i] for i in order]
    for position, index in enumerate(replays):  # duplicates anywhere (at-least-once delivery)
        sequence.insert((position * 7) % (len(sequence) + 1), trip[index])
    prefs = StatusPreferences(events=ALL.events, position_minutes=cadence, eta_threshold_minutes=15)
    state, said = start(THREE), []
    for event in sequence:
        now = event.device_time.ToDatetime(tzinfo=UTC) if isinstance(event, frame_pb2.FramePayload) else END
        out, state = milestones(state, event, prefs, now)
        said += out
        if out:  # the same event again right away says nothing
            assert milestones(state, event, prefs, now)[0] == ()
    stops = [(s.status, s.stop_sequence) for s in said if (s.status, s.stop_sequence) in _RANK]
    assert len(stops) == len(set(stops))
    assert [_RANK[m] for m in stops] == sorted(_RANK[m] for m in stops)
    x6 = [s.time for s in said if s.status == "X6"]
    assert all(b - a >= timedelta(minutes=cadence) for a, b in itertools.pairwise(x6))
    sd = [s.remarks[0] for s in said if s.status == "SD"]
    assert len(sd) == len(set(sd)) <= 2  # each exception once at most (none after the delivery)
    if said:
        written = status_214(shipment_status(state, said, scac="HMSH"), control="0001")
        assert validate(SCHEMA_214, written.segments, Delimiters()) == ()
